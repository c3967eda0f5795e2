"""The Debian German-English corpus builder, on a small hand-made apt index pair."""

import bz2
import gzip
import io
import json
import lzma
import os
import shutil
import subprocess
import sys

import pytest

from examples.common import stages
from examples.translation import debian_align, debian_snapshot
from examples.translation import debian_corpus as dc
from tests.example_helpers import APT_FIXTURES, REPO

DE = os.path.join(APT_FIXTURES, "Translation-de")
EN = os.path.join(APT_FIXTURES, "Translation-en")


@pytest.fixture(scope="module")
def extracted():
    return dc.extract_pairs(DE, EN)


# --- parsing and joining ----------------------------------------------------


def test_parse_index_fields_and_md5_dedup():
    de = dc.parse_index(DE, "de")
    en = dc.parse_index(EN, "en")
    # ibex-doc and ibex-doc-html share one description: one entry per md5
    assert len(de) == 30 and len(en) == 31
    synopses = [v[0] for v in de.values()]
    assert synopses.count("Dokumentation für die Ibex-Bibliothek") == 1
    md5 = next(k for k, v in en.items() if v[0] == "synchronise local folders with cloud storage")
    synopsis, lines = en[md5]
    assert lines[0] == "CloudSync keeps a local folder and a remote folder in step."
    assert lines.count(".") == 2  # two paragraph separators
    assert " * WebDAV servers" in lines  # list items keep their indentation


def test_join_skips_entries_missing_on_one_side(extracted):
    pairs, stats = extracted
    assert stats["descriptions_joined"] == 29  # fooview has no English entry
    assert not any("Foo-Dateien" in de for de, _ in pairs)
    assert not any("translated this description" in en for _, en in pairs)


def test_synopsis_paragraphs_and_sentences(extracted):
    pairs, _ = extracted
    assert ("Dokumentation für die Paketverwaltung aptitude", "documentation for the aptitude package manager") in pairs
    # one paragraph with two sentences on each side -> two sentence pairs
    assert ("Das Handbuch ist in HTML verfasst.", "The manual is written in HTML.") in pairs
    # second paragraph of a multi-paragraph description, sentence split
    assert ("Viele Optionen erlauben es Ihnen, die Ausgabe anzupassen.", "Many options let you adapt the output.") in pairs
    # list items are units of their own
    assert ("S3-kompatible Objektspeicher", "S3-compatible object stores") in pairs
    assert ("Unterstützte Dienste:", "Supported services:") in pairs


def test_paragraph_count_mismatch_keeps_only_the_synopsis(extracted):
    pairs, stats = extracted
    assert stats["paragraph_count_mismatch"] == 1
    assert ("Werkzeuge für das Wörterbuchserver-Protokoll", "tools for the dictionary server protocol") in pairs
    assert not any("DICT" in de for de, _ in pairs)


def test_sentence_count_mismatch_pairs_the_whole_paragraph(extracted):
    pairs, _ = extracted
    assert (
        "EdgePlot zeichnet gerichtete und ungerichtete Graphen. Es ist schnell. "
        "Außerdem kann es SVG- und PNG-Dateien exportieren.",
        "EdgePlot draws directed and undirected graphs. It is fast, and it can export SVG and PNG files.",
    ) in pairs


def test_abbreviations_do_not_split(extracted):
    pairs, _ = extracted
    assert (
        "pdfmerge fügt mehrere PDF-Dateien, z. B. eingescannte Seiten, zu einer zusammen.",
        "pdfmerge joins several PDF files, e.g. scanned pages, into one.",
    ) in pairs
    assert ("Version 3.1 hat Verschlüsselung hinzugefügt.", "Version 3.1 added encryption.") in pairs


def test_split_sentences_rules():
    s = debian_align.split_sentences
    assert s("Eins ist gut. Zwei ist besser! Drei? Vier.") == ["Eins ist gut.", "Zwei ist besser!", "Drei?", "Vier."]
    assert s("Siehe z. B. Kapitel 3. Dort steht es.") == ["Siehe z. B. Kapitel 3. Dort steht es."]
    assert s("Tools, e.g. Foo, and more, i.e. Bar. Next one.") == ["Tools, e.g. Foo, and more, i.e. Bar.", "Next one."]
    assert s("Dr. Who is here. It was the 3. Version.") == ["Dr. Who is here.", "It was the 3. Version."]
    assert s('He said "Stop." Then he left.') == ['He said "Stop."', "Then he left."]
    assert s("version 2.0 is out. 3.0 follows.") == ["version 2.0 is out.", "3.0 follows."]
    assert s("") == []


def test_paragraph_and_unit_helpers():
    paras = debian_align.split_paragraphs(["a b", "c", ".", "d", ".", ".", "e"])
    assert paras == [["a b", "c"], ["d"], ["e"]]
    assert debian_align.split_units(["Features:", " * one", "   more", " - two", "o three"]) == [
        "Features:", "one more", "two", "three",
    ]  # fmt: skip


# --- cleaning ---------------------------------------------------------------


def test_html_entities_are_unescaped(extracted):
    pairs, _ = extracted
    assert ("Konvertierer zwischen <tt>-Tags & reinem Text", "converter between <tt> tags & plain text") in pairs
    assert ('Es verwandelt "zitierten" Text in HTML.', 'It turns "quoted" text into HTML.') in pairs
    assert not any("&amp;" in de or "&quot;" in en for de, en in pairs)


def test_cleaning_filters(extracted):
    pairs, stats = extracted
    assert stats["dropped_identical"] == 2  # untranslated synopsis and a code line
    assert ("nginx -t", "nginx -t") not in pairs
    assert stats["dropped_too_long"] == 1
    assert all(len(de.split()) <= dc.MAX_WORDS and len(en.split()) <= dc.MAX_WORDS for de, en in pairs)
    assert stats["dropped_ratio"] == 2
    assert all(max(len(de), len(en)) <= 3 * min(len(de), len(en)) for de, en in pairs)
    assert stats["dropped_duplicate"] == 1
    assert len(pairs) == len(set(pairs)) == stats["kept"] == 62
    for de, en in pairs:
        assert de == " ".join(de.split()) and en == " ".join(en.split())
        assert "\t" not in de + en


def test_clean_segment_and_pair_problem():
    assert dc.clean_segment("  a&nbsp;b\t c &lt;d&gt;\u2028e ") == "a b c <d> e"
    assert dc.clean_segment("Mu\u0308ller") == "Müller"  # NFC
    assert dc.pair_problem("", "x") == "empty"
    assert dc.pair_problem("Same", "Same") == "identical"
    assert dc.pair_problem("a " * 101, "b") == "too_long"
    assert dc.pair_problem("abcd", "abcdefghijklm") == "ratio"
    assert dc.pair_problem("abcd", "abcdefghijkl") is None  # exactly 3x is kept


# --- split ------------------------------------------------------------------


def test_split_is_deterministic_and_disjoint(extracted):
    pairs, _ = extracted
    a = dc.split_corpus(pairs, n_valid=5, n_test=5, seed=1)
    b = dc.split_corpus(list(pairs), n_valid=5, n_test=5, seed=1)
    assert a == b
    assert {k: len(v) for k, v in a.items()} == {"train": 52, "valid": 5, "test": 5}
    assert sorted(a["train"] + a["valid"] + a["test"]) == sorted(pairs)
    dc.check_disjoint(a)
    held = {de for de, _ in a["valid"] + a["test"]} | {en for _, en in a["valid"] + a["test"]}
    # a German segment with two English translations never leaves train
    assert "Dieses Paket enthält die Dokumentation." not in held
    c = dc.split_corpus(pairs, n_valid=5, n_test=5, seed=2)
    assert c["test"] != a["test"]


def test_split_never_puts_shared_segments_in_test():
    pairs = [(f"de {i}", f"en {i}") for i in range(200)]
    pairs += [("de 0", "en other"), ("de other", "en 1")]  # de 0 / en 1 occur twice
    splits = dc.split_corpus(pairs, n_valid=40, n_test=40, seed=3)
    dc.check_disjoint(splits)
    held = splits["valid"] + splits["test"]
    assert ("de 0", "en 0") not in held and ("de 1", "en 1") not in held
    assert len(splits["test"]) == 20 and len(splits["valid"]) == 20  # capped at a tenth


def test_check_disjoint_detects_leaks():
    with pytest.raises(AssertionError, match="test segment occurs in train"):
        dc.check_disjoint({"train": [("a", "b")], "valid": [], "test": [("a", "c")]})


# --- bad input --------------------------------------------------------------


def test_missing_index_file_names_it(tmp_path):
    missing = str(tmp_path / "Translation-de")
    with pytest.raises(dc.CorpusError, match="index file not found: .*Translation-de"):
        dc.extract_pairs(missing, EN)
    with pytest.raises(dc.CorpusError, match="Translation-de"):
        dc.build(missing, EN, str(tmp_path / "work"))


def test_empty_index_file_names_it(tmp_path):
    empty = tmp_path / "Translation-en"
    empty.write_text("\n\n")
    with pytest.raises(dc.CorpusError, match=r"Translation-en holds no stanzas"):
        dc.extract_pairs(DE, str(empty))


def test_misaligned_files_name_them(tmp_path):
    other = tmp_path / "Translation-en"
    other.write_text("Package: zzz\nDescription-md5: ffffffffffffffffffffffffffffffff\nDescription-en: other\n")
    with pytest.raises(dc.CorpusError, match=r"Translation-de and .*Translation-en share no Description-md5"):
        dc.extract_pairs(DE, str(other))


def test_swapped_files_name_them():
    with pytest.raises(dc.CorpusError, match=r"Translation-en: .*Description-en but no Description-de"):
        dc.extract_pairs(EN, DE)


def test_malformed_index_names_file_and_line(tmp_path):
    bad = tmp_path / "Translation-de"
    bad.write_text(" continuation first\n")
    with pytest.raises(dc.CorpusError, match=r"Translation-de:1: continuation line outside a field"):
        dc.parse_index(str(bad), "de")
    bad.write_text("Package: x\nDescription-de: y\n")
    with pytest.raises(dc.CorpusError, match=r"Translation-de: .* no Description-md5"):
        dc.parse_index(str(bad), "de")


def test_compressed_index_files(tmp_path):
    raw = open(DE, "rb").read()
    want = dc.parse_index(DE, "de")
    for name, data in (("gz", gzip.compress(raw)), ("xz", lzma.compress(raw)), ("bz2", bz2.compress(raw))):
        p = tmp_path / f"Translation-de.{name}"
        p.write_bytes(data)
        assert dc.parse_index(str(p), "de") == want
    if shutil.which("lz4"):
        p = tmp_path / "Translation-de.lz4"
        subprocess.run(["lz4", "-q", DE, str(p)], check=True)
        assert dc.parse_index(str(p), "de") == want
    p = tmp_path / "broken.xz"
    p.write_bytes(lzma.compress(raw)[:100])
    with pytest.raises(dc.CorpusError, match="cannot decompress index file .*broken.xz"):
        dc.parse_index(str(p), "de")


def test_read_tsv_rejects_bad_rows(tmp_path):
    p = tmp_path / "c.tsv"
    p.write_text("split\tde\ten\ntrain\tnur deutsch\n")
    with pytest.raises(dc.CorpusError, match=r"c.tsv:2: expected"):
        debian_snapshot.read_tsv(str(p))
    with pytest.raises(dc.CorpusError, match="corpus file not found"):
        debian_snapshot.read_tsv(str(tmp_path / "nope.tsv.xz"))


# --- stages: atomic outputs, skipping finished work --------------------------


def test_build_writes_stages_and_skips_them(tmp_path, capsys):
    work = str(tmp_path / "work")
    tsv, info = dc.build(DE, EN, work, n_valid=5, n_test=5)
    assert info["counts"] == {"train": 52, "valid": 5, "test": 5}
    splits = debian_snapshot.read_tsv(tsv)
    dc.check_disjoint(splits)
    assert debian_snapshot.corpus_digest(splits) == info["corpus_sha256"]
    mtimes = {n: os.path.getmtime(os.path.join(work, n)) for n in ("pairs.tsv", "debian-de-en.tsv")}
    capsys.readouterr()
    tsv2, info2 = dc.build(DE, EN, work, n_valid=5, n_test=5)
    out = capsys.readouterr().out
    assert "pairs: done already" in out and "split: done already" in out
    assert info2 == info
    assert {n: os.path.getmtime(os.path.join(work, n)) for n in mtimes} == mtimes
    # a changed parameter re-runs only the stage it affects
    _, info3 = dc.build(DE, EN, work, n_valid=4, n_test=4)
    out = capsys.readouterr().out
    assert "pairs: done already" in out and "split: train" in out
    assert info3["counts"]["valid"] == 4
    assert not [n for n in os.listdir(work) if n.endswith(".tmp")]


def test_interrupted_stage_leaves_finished_ones(tmp_path, monkeypatch, capsys):
    work = str(tmp_path / "work")

    def boom(*a, **k):
        raise RuntimeError("interrupted")

    monkeypatch.setattr(dc, "split_corpus", boom)
    with pytest.raises(RuntimeError):
        dc.build(DE, EN, work, n_valid=5, n_test=5)
    assert os.path.exists(os.path.join(work, "pairs.tsv"))
    assert not os.path.exists(os.path.join(work, "debian-de-en.tsv"))
    monkeypatch.undo()
    capsys.readouterr()
    dc.build(DE, EN, work, n_valid=5, n_test=5)
    assert "pairs: done already" in capsys.readouterr().out


def test_atomic_write_keeps_the_old_file_on_failure(tmp_path):
    p = tmp_path / "out.txt"
    p.write_text("old\n")
    with pytest.raises(ValueError):
        with stages.atomic_write(str(p)) as f:
            f.write("half")
            raise ValueError("boom")
    assert p.read_text() == "old\n"
    assert os.listdir(tmp_path) == ["out.txt"]
    with stages.atomic_write(str(p)) as f:
        f.write("new\n")
    assert p.read_text() == "new\n"


def test_a_report_line_is_one_write_so_job_threads_cannot_split_it(monkeypatch):
    writes = []

    class Recorder(io.StringIO):
        def write(self, text):
            writes.append(text)
            return len(text)

    monkeypatch.setattr(sys, "stdout", Recorder())
    stages.speaker("demo")("rdrop seed 1:", "started", 3)
    assert writes == ["[demo] rdrop seed 1: started 3\n"]


def test_cli_build_compare_and_update_snapshot(tmp_path):
    work, snap = tmp_path / "work", tmp_path / "data" / "snap.tsv.xz"
    cmd = [sys.executable, "-m", "examples.translation.debian_corpus", "build",
           "--de", DE, "--en", EN, "--work-dir", str(work), "--valid-size", "5", "--test-size", "5",
           "--snapshot", str(snap)]  # fmt: skip
    r = subprocess.run(cmd + ["--update-snapshot"], capture_output=True, text=True, cwd=REPO)
    assert r.returncode == 0, r.stderr
    assert "no snapshot" in r.stdout and snap.exists()
    prov = json.loads((tmp_path / "data" / "PROVENANCE.json").read_text())
    assert prov["counts"] == {"train": 52, "valid": 5, "test": 5}
    assert prov["snapshot_sha256"] == stages.sha256_file(str(snap))
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
    assert "identical to the shipped snapshot" in r.stdout
    r = subprocess.run(cmd[:-4] + ["--snapshot", str(snap), "--valid-size", "4"],
                       capture_output=True, text=True, cwd=REPO)
    assert "DIFFERS from the shipped snapshot" in r.stdout
    r = subprocess.run(cmd[:4] + ["--de", str(tmp_path / "nope"), "--en", EN, "--work-dir", str(work)],
                       capture_output=True, text=True, cwd=REPO)  # fmt: skip
    assert r.returncode == 2 and "index file not found" in r.stderr and "nope" in r.stderr


# --- the shipped snapshot ------------------------------------------------------


def test_shipped_snapshot_matches_its_provenance():
    prov = json.load(open(debian_snapshot.PROVENANCE, encoding="utf-8"))
    assert prov["snapshot_sha256"] == stages.sha256_file(debian_snapshot.SNAPSHOT)
    assert os.path.getsize(debian_snapshot.SNAPSHOT) < 5_000_000
    splits = debian_snapshot.load_snapshot()
    assert {s: len(splits[s]) for s in debian_snapshot.SPLITS} == prov["counts"]
    assert debian_snapshot.corpus_digest(splits) == prov["corpus_sha256"]
    assert prov["counts"]["valid"] == prov["counts"]["test"] == 2000
    dc.check_disjoint(splits)
    for s in debian_snapshot.SPLITS:
        assert all(de and en and de != en for de, en in splits[s])
    assert len(prov["source"]["index_sha256"]["Translation-de"]) == 64
