"""The Debian section-classification corpus: builder on small hand-made apt indexes, and the shipped snapshot."""

import json
import os

import pytest

from examples.classification import debian_sections as ds
from tests.example_helpers import APT_FIXTURES

PACKAGES = os.path.join(APT_FIXTURES, "Packages")
TRANSLATION = os.path.join(APT_FIXTURES, "Translation-en")


@pytest.fixture(scope="module")
def joined():
    stats = {}
    examples = ds.join_examples(ds.parse_packages(PACKAGES), ds.parse_descriptions(TRANSLATION), stats=stats)
    return examples, stats


def by_package(examples):
    return {package: (label, text) for label, package, text in examples}


def test_sections_lose_their_archive_area_prefix():
    packages = ds.parse_packages(PACKAGES)
    labels = {label for sections in packages.values() for label in sections}
    assert "text" in labels and "contrib/text" not in labels
    assert ds.section_label("non-free/games") == "games" and ds.section_label("net") == "net"


def test_a_description_shared_by_packages_of_two_sections_is_dropped_as_ambiguous(joined):
    examples, stats = joined
    assert "edgeplot" not in by_package(examples) and "edgeplot-science" not in by_package(examples)
    assert stats["ambiguous_section"] == 1


def test_packages_sharing_one_description_make_one_example_named_after_the_first(joined):
    examples, _ = joined
    found = by_package(examples)
    assert "ibex-doc" in found and "ibex-doc-html" not in found
    assert found["ibex-doc"][0] == "doc"


def test_descriptions_missing_from_the_translation_index_are_counted_not_invented(joined):
    examples, stats = joined
    assert stats["no_description"] == 1 and "orphan-tool" not in by_package(examples)
    # every package of the fixture with one section and a description is an example
    assert len(examples) == 30


def test_text_is_synopsis_and_long_description_without_paragraph_marks(joined):
    examples, _ = joined
    label, text = by_package(examples)["cloudsync"]
    assert label == "net"
    assert text.startswith("synchronise local folders with cloud storage CloudSync keeps")
    assert " . " not in text and "* WebDAV servers" in text
    assert ds.clean_text("a &amp; b", ["one two", ".", "three"], max_words=4) == "a & b one"


def test_identical_texts_are_one_example_and_dropped_when_their_labels_disagree():
    packages = {"1" * 32: {"net": ["b"]}, "2" * 32: {"net": ["a"]}, "3" * 32: {"web": ["c"]},
                "4" * 32: {"games": ["d"]}}
    descriptions = {"1" * 32: ("same text", []), "2" * 32: ("same  text", []), "3" * 32: ("other", ["text"]),
                    "4" * 32: ("other text", [])}
    stats = {}
    examples = ds.join_examples(packages, descriptions, stats=stats)
    assert examples == [("net", "a", "same text")]
    assert stats["duplicate_texts"] == 1 and stats["conflicting_duplicate_texts"] == 1


def test_small_sections_are_dropped_and_the_mapping_records_every_section(joined):
    examples, _ = joined
    mapping = ds.label_mapping(examples, min_count=3)
    assert mapping["utils"] == {"count": 7, "kept": True}
    assert mapping["games"] == {"count": 1, "kept": False}
    splits = ds.split_examples(examples, mapping)
    kept = {label for s in ds.SPLITS for label, _, _ in splits[s]}
    assert kept == {label for label, m in mapping.items() if m["kept"]}
    assert sum(len(splits[s]) for s in ds.SPLITS) == sum(m["count"] for m in mapping.values() if m["kept"])


def test_the_split_depends_on_the_text_alone_and_has_the_stated_proportions():
    texts = [f"description number {i}" for i in range(20000)]
    assignment = [ds.split_of(t) for t in texts]
    assert assignment == [ds.split_of(t) for t in reversed(texts)][::-1]
    share = {s: assignment.count(s) / len(texts) for s in ds.SPLITS}
    assert share["test"] == pytest.approx(0.1, abs=0.01) and share["valid"] == pytest.approx(0.1, abs=0.01)


def test_check_disjoint_catches_a_text_in_two_splits():
    splits = {"train": [("net", "a", "x")], "valid": [], "test": [("web", "b", "x")]}
    with pytest.raises(AssertionError, match="both train and test"):
        ds.check_disjoint(splits)


def test_build_writes_a_corpus_skips_it_when_done_and_compares_with_a_snapshot(tmp_path, capsys):
    work = str(tmp_path / "work")
    corpus, info = ds.build(PACKAGES, TRANSLATION, work, min_count=2)
    splits = ds.read_tsv(corpus)
    assert sum(len(v) for v in splits.values()) == sum(
        m["count"] for m in info["mapping"].values() if m["kept"]
    )
    assert set(info["index_sha256"]) == {"Packages", "Translation-en"}
    ds.build(PACKAGES, TRANSLATION, work, min_count=2)
    assert "done already" in capsys.readouterr().out

    snapshot = str(tmp_path / "snap.tsv.xz")
    assert not ds.compare_with_snapshot(corpus, snapshot)
    ds.update_snapshot(corpus, info, {"codename": "bookworm"}, snapshot, str(tmp_path / "PROVENANCE.json"))
    assert ds.compare_with_snapshot(corpus, snapshot)
    prov = json.loads((tmp_path / "PROVENANCE.json").read_text())
    assert prov["snapshot_sha256"] == ds.sha256_file(snapshot)
    assert prov["label_counts"] == info["label_counts"] and prov["mapping"] == info["mapping"]
    assert ds.read_tsv(snapshot) == splits

    other, _ = ds.build(PACKAGES, TRANSLATION, str(tmp_path / "other"), min_count=1)
    capsys.readouterr()
    assert not ds.compare_with_snapshot(other, snapshot)
    out = capsys.readouterr().out
    assert "DIFFERS" in out and "sections only in rebuilt" in out


def test_malformed_indexes_are_refused_naming_the_file(tmp_path):
    no_md5 = tmp_path / "Packages"
    no_md5.write_text("Package: x\nSection: net\n\n")
    with pytest.raises(ds.CorpusError, match=r"Packages: stanza ending at line 3 has no Description-md5"):
        ds.parse_packages(str(no_md5))
    with pytest.raises(ds.CorpusError, match="no stanza has a Section field.*really a Packages index"):
        ds.parse_packages(TRANSLATION)
    no_name = tmp_path / "Packages2"
    no_name.write_text("Section: net\nDescription-md5: " + "a" * 32 + "\n")
    with pytest.raises(ds.CorpusError, match="has no Package field"):
        ds.parse_packages(str(no_name))
    with pytest.raises(ds.CorpusError, match="no Description-en field"):
        ds.parse_descriptions(PACKAGES)
    empty = tmp_path / "empty"
    empty.write_text("\n\n")
    with pytest.raises(ds.CorpusError, match="holds no stanzas"):
        ds.parse_packages(str(empty))


def test_command_line_builds_exports_and_reports_bad_input_without_a_traceback(tmp_path, capsys):
    snapshot = str(tmp_path / "data" / "snap.tsv.xz")
    argv = ["build", "--packages", PACKAGES, "--translation", TRANSLATION, "--work-dir", str(tmp_path / "w"),
            "--snapshot", snapshot, "--update-snapshot", "--min-count", "2", "--export", str(tmp_path / "text")]
    assert ds.main(argv) == 0
    assert os.path.exists(snapshot) and os.path.exists(tmp_path / "data" / "PROVENANCE.json")
    inputs = (tmp_path / "text" / "train.input0").read_text().splitlines()
    labels = (tmp_path / "text" / "train.label").read_text().splitlines()
    assert len(inputs) == len(labels) > 0
    assert ds.main(["build", "--packages", str(tmp_path / "missing"), "--translation", TRANSLATION,
                    "--work-dir", str(tmp_path / "w2"), "--snapshot", snapshot]) == 2
    assert "error: index file not found" in capsys.readouterr().err


def test_shipped_snapshot_matches_its_provenance():
    prov = json.loads(open(ds.PROVENANCE, encoding="utf-8").read())
    assert prov["snapshot_sha256"] == ds.sha256_file(ds.SNAPSHOT)
    splits = ds.load_snapshot()
    assert ds.corpus_digest(splits) == prov["corpus_sha256"]
    assert ds.label_counts(splits) == prov["label_counts"]
    ds.check_disjoint(splits)
    kept = {label for label, m in prov["mapping"].items() if m["kept"]}
    assert {label for s in ds.SPLITS for label, _, _ in splits[s]} == kept
    assert all(m["count"] >= prov["params"]["min_count"] for m in prov["mapping"].values() if m["kept"])
    assert all(len(text.split()) <= prov["params"]["max_words"] for s in ds.SPLITS for _, _, text in splits[s])
    assert all(ds.split_of(text) == s for s in ds.SPLITS for _, _, text in splits[s][:500])
