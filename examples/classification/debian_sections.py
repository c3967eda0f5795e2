#!/usr/bin/env python3
"""Debian package descriptions labelled with their archive section: a real, offline
text-classification corpus.

Two apt index files make it:

* ``Packages`` (one stanza per binary package) gives each package's ``Section``
  (``net``, ``python``, ``games``, ...; ``contrib/net`` outside main) and the
  ``Description-md5`` of its English description;
* ``Translation-en`` gives the description itself (synopsis and long text) for
  each ``Description-md5``.

Joined on ``Description-md5``, each distinct description is one example whose
label is the section of the packages that carry it:

1. The label is the section without its archive-area prefix (``contrib/net`` ->
   ``net``).  A description that packages of different sections share is
   ambiguous and dropped.
2. The text is the synopsis followed by the long description, paragraph
   separators removed, HTML entities unescaped, NFC-normalised, whitespace
   collapsed, and cut after ``MAX_WORDS`` (64) words.
3. Identical texts are one example (kept once; dropped altogether if their
   labels differ), so no description can straddle train and test.
4. Sections with fewer than ``MIN_COUNT`` (300) examples are dropped; the
   mapping (every section, its count, kept or dropped) is recorded.
5. The split is decided by the text alone: the first 8 bytes of its sha256 as
   a number, modulo 1000, below 100 -> test, below 200 -> valid, else train.
   A description keeps its split when the archive changes around it.

The shipped snapshot (``data/debian-sections.tsv.xz``, with
``data/PROVENANCE.json``: release, index sha256s, label counts, mapping) is
what the demo reads; ``build --from-apt`` rebuilds it from the archive with
``apt-get update`` into a private directory (nothing of the system's apt state
is touched) and reports how the rebuild differs from the snapshot;
``--update-snapshot`` replaces it.
"""

import argparse
import hashlib
import html
import json
import lzma
import os
import sys
import unicodedata
from collections import Counter

from examples.common import debian_apt
from examples.common.debian_apt import (
    DEFAULT_ARCHITECTURE, DEFAULT_COMPONENT, DEFAULT_MIRROR, DEFAULT_SUITE, CorpusError, description_md5,
    iter_stanzas, now_utc,
)
from examples.common.stages import (
    atomic_write, file_stage_done, mark_file_stage, read_json, sha256_file, show_path, stage_key, write_json,
)

HERE = os.path.dirname(os.path.abspath(__file__))

DATA_DIR = os.path.join(HERE, "data")
SNAPSHOT = os.path.join(DATA_DIR, "debian-sections.tsv.xz")
PROVENANCE = os.path.join(DATA_DIR, "PROVENANCE.json")
DEFAULT_WORK_DIR = os.path.join(HERE, "work", "corpus")

MAX_WORDS = 64
MIN_COUNT = 300
TEST_PER_MILLE = 100
VALID_PER_MILLE = 100
SPLITS = ("train", "valid", "test")
COLUMNS = ("split", "label", "package", "text")


def say(msg):
    print(f"[corpus] {msg}", flush=True)


# ---------------------------------------------------------------------------
# reading the index files


def section_label(section):
    """The section without its archive-area prefix: ``contrib/net`` -> ``net``."""
    return section.strip().rsplit("/", 1)[-1]


def parse_packages(path):
    """``{Description-md5: {section: [package, ...]}}`` from a ``Packages`` index."""
    out = {}
    for lineno, stanza in iter_stanzas(path, what="apt Packages"):
        if "Package" not in stanza:
            raise CorpusError(f"{path}: stanza ending at line {lineno} has no Package field")
        if "Section" not in stanza:
            continue  # a package without a section has no label
        md5 = description_md5(stanza, path, lineno)
        package = stanza["Package"][0].strip()
        out.setdefault(md5, {}).setdefault(section_label(stanza["Section"][0]), []).append(package)
    if not out:
        raise CorpusError(f"{path}: no stanza has a Section field (is this really a Packages index?)")
    return out


def parse_descriptions(path):
    """``{Description-md5: (synopsis, long lines)}`` from a ``Translation-en`` index."""
    out = {}
    for lineno, stanza in iter_stanzas(path, what="apt Translation"):
        if "Description-en" not in stanza:
            raise CorpusError(
                f"{path}: stanza ending at line {lineno} has no Description-en field "
                "(is this really the English Translation index?)"
            )
        md5 = description_md5(stanza, path, lineno)
        lines = stanza["Description-en"]
        out.setdefault(md5, (lines[0].strip(), lines[1:]))
    return out


def clean_text(synopsis, long_lines, max_words=MAX_WORDS):
    """Synopsis + long description as one line: entities unescaped, NFC, at most ``max_words`` words."""
    body = " ".join(line for line in long_lines if line.strip() != ".")
    text = unicodedata.normalize("NFC", html.unescape(f"{synopsis} {body}"))
    text = "".join(" " if unicodedata.category(c) in ("Cc", "Zs", "Zl", "Zp") else c for c in text)
    return " ".join(text.split()[:max_words])


# ---------------------------------------------------------------------------
# examples, labels, split


def join_examples(packages, descriptions, max_words=MAX_WORDS, stats=None):
    """``[(label, package, text)]``, one per distinct text with one unambiguous section."""
    stats = {} if stats is None else stats
    by_text = {}
    for md5, sections in packages.items():
        if md5 not in descriptions:
            stats["no_description"] = stats.get("no_description", 0) + 1
            continue
        if len(sections) > 1:
            stats["ambiguous_section"] = stats.get("ambiguous_section", 0) + 1
            continue
        (label, names), = sections.items()
        text = clean_text(*descriptions[md5], max_words=max_words)
        if not text:
            stats["empty"] = stats.get("empty", 0) + 1
            continue
        by_text.setdefault(text, []).append((label, min(names)))
    examples = []
    for text, found in by_text.items():
        labels = {label for label, _ in found}
        if len(labels) > 1:
            stats["conflicting_duplicate_texts"] = stats.get("conflicting_duplicate_texts", 0) + 1
            continue
        if len(found) > 1:
            stats["duplicate_texts"] = stats.get("duplicate_texts", 0) + 1
        examples.append((found[0][0], min(name for _, name in found), text))
    examples.sort(key=lambda e: (e[1], e[2]))
    stats["descriptions_joined"] = len(examples)
    return examples


def label_mapping(examples, min_count=MIN_COUNT):
    """Every section with its count and whether it is kept (>= ``min_count`` examples)."""
    counts = Counter(label for label, _, _ in examples)
    return {
        label: {"count": n, "kept": n >= min_count}
        for label, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
    }


def split_of(text, test_per_mille=TEST_PER_MILLE, valid_per_mille=VALID_PER_MILLE):
    """``train``, ``valid`` or ``test``, decided by the text's sha256 alone."""
    bucket = int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest()[:8], "big") % 1000
    if bucket < test_per_mille:
        return "test"
    if bucket < test_per_mille + valid_per_mille:
        return "valid"
    return "train"


def split_examples(examples, mapping):
    """``{split: [(label, package, text)]}`` of the examples whose section is kept."""
    splits = {s: [] for s in SPLITS}
    for label, package, text in examples:
        if mapping[label]["kept"]:
            splits[split_of(text)].append((label, package, text))
    return splits


def check_disjoint(splits):
    """Raise if a text occurs in two splits."""
    seen = {}
    for name in SPLITS:
        for _, _, text in splits[name]:
            if seen.setdefault(text, name) != name:
                raise AssertionError(f"text in both {seen[text]} and {name}: {text[:80]!r}")


def label_counts(splits):
    return {s: dict(sorted(Counter(label for label, _, _ in splits[s]).items())) for s in SPLITS}


# ---------------------------------------------------------------------------
# TSV files: split <TAB> label <TAB> package <TAB> text


def write_tsv(path, splits):
    """Write the splits atomically (xz-compressed if ``*.xz``)."""
    with atomic_write(path, "wb") as raw:
        stream = lzma.open(raw, "w", preset=9 | lzma.PRESET_EXTREME) if path.endswith(".xz") else raw
        try:
            stream.write(("\t".join(COLUMNS) + "\n").encode("utf-8"))
            for name in SPLITS:
                for row in splits[name]:
                    stream.write(("\t".join((name,) + tuple(row)) + "\n").encode("utf-8"))
        finally:
            if stream is not raw:
                stream.close()


def read_tsv(path):
    """``{split: [(label, package, text)]}`` from a file written by :func:`write_tsv`."""
    opener = lzma.open if path.endswith(".xz") else open
    splits = {s: [] for s in SPLITS}
    with opener(path, "rt", encoding="utf-8", newline="\n") as f:
        header = f.readline().rstrip("\n")
        if header != "\t".join(COLUMNS):
            raise CorpusError(f"{path}: header {header!r}, expected {chr(9).join(COLUMNS)!r}")
        for lineno, line in enumerate(f, 2):
            fields = line.rstrip("\n").split("\t")
            if len(fields) != len(COLUMNS) or fields[0] not in splits:
                raise CorpusError(f"{path}:{lineno}: not a 'split<TAB>label<TAB>package<TAB>text' row")
            splits[fields[0]].append(tuple(fields[1:]))
    return splits


def corpus_digest(splits):
    h = hashlib.sha256()
    for name in SPLITS:
        for row in splits[name]:
            h.update(("\t".join((name,) + tuple(row)) + "\n").encode("utf-8"))
    return h.hexdigest()


# ---------------------------------------------------------------------------
# the build


def build(packages_path, translation_path, work_dir=DEFAULT_WORK_DIR, max_words=MAX_WORDS, min_count=MIN_COUNT):
    """Build the corpus from the two index files; returns ``(corpus_tsv, info)``.

    One stage, written atomically and skipped when done for the same inputs.
    """
    for p in (packages_path, translation_path):
        if not os.path.exists(p):
            raise CorpusError(f"index file not found: {p}")
    hashes = {"Packages": sha256_file(packages_path), "Translation-en": sha256_file(translation_path)}
    corpus_tsv = os.path.join(work_dir, "debian-sections.tsv")
    key = stage_key(stage="sections", hashes=hashes, max_words=max_words, min_count=min_count,
                    split=[TEST_PER_MILLE, VALID_PER_MILLE])
    if file_stage_done(corpus_tsv, key):
        say(f"corpus: done already ({show_path(corpus_tsv)})")
    else:
        say("corpus: joining sections and descriptions")
        stats = {}
        packages = parse_packages(packages_path)
        descriptions = parse_descriptions(translation_path)
        stats.update(packages_descriptions=len(packages), translation_descriptions=len(descriptions))
        examples = join_examples(packages, descriptions, max_words, stats)
        if not examples:
            raise CorpusError(
                f"{packages_path} and {translation_path} share no Description-md5: the files are "
                "misaligned (different releases or components?)"
            )
        mapping = label_mapping(examples, min_count)
        splits = split_examples(examples, mapping)
        check_disjoint(splits)
        write_tsv(corpus_tsv, splits)
        mark_file_stage(corpus_tsv, key, stats=stats, mapping=mapping, counts=label_counts(splits),
                        digest=corpus_digest(splits))
        say("corpus: " + ", ".join(f"{s} {len(splits[s])}" for s in SPLITS) + f" examples, "
            f"{sum(m['kept'] for m in mapping.values())} of {len(mapping)} sections kept")
    stamp = read_json(corpus_tsv + ".stamp")
    info = {
        "index_sha256": hashes,
        "stats": stamp["stats"],
        "mapping": stamp["mapping"],
        "label_counts": stamp["counts"],
        "corpus_sha256": stamp["digest"],
        "params": {"max_words": max_words, "min_count": min_count,
                   "test_per_mille": TEST_PER_MILLE, "valid_per_mille": VALID_PER_MILLE},
    }
    return corpus_tsv, info


def compare_with_snapshot(corpus_tsv, snapshot=SNAPSHOT):
    """Print whether the built corpus equals the snapshot, and how it differs; True if equal."""
    if not os.path.exists(snapshot):
        say(f"no snapshot at {snapshot} to compare with")
        return False
    built, snap = read_tsv(corpus_tsv), read_tsv(snapshot)
    if corpus_digest(built) == corpus_digest(snap):
        say("the rebuilt corpus is identical to the shipped snapshot")
        return True
    say("the rebuilt corpus DIFFERS from the shipped snapshot:")
    for s in SPLITS:
        a, b = set(built[s]), set(snap[s])
        say(f"  {s}: rebuilt {len(built[s])}, snapshot {len(snap[s])}, "
            f"only in rebuilt {len(a - b)}, only in snapshot {len(b - a)}")
    labels_a = {label for s in SPLITS for label, _, _ in built[s]}
    labels_b = {label for s in SPLITS for label, _, _ in snap[s]}
    if labels_a != labels_b:
        say(f"  sections only in rebuilt: {sorted(labels_a - labels_b)}, only in snapshot: {sorted(labels_b - labels_a)}")
    say("  (use --update-snapshot to replace the snapshot)")
    return False


def update_snapshot(corpus_tsv, info, release, snapshot=SNAPSHOT, provenance=PROVENANCE):
    """Write the xz snapshot and its provenance (atomically)."""
    write_tsv(snapshot, read_tsv(corpus_tsv))
    prov = {
        "description": "Debian package descriptions (English) labelled with their archive section, "
        "built by examples/classification/debian_sections.py",
        "source": {
            "archive": release.get("origin", "Debian"),
            "mirror": release.get("mirror"),
            "suite": release.get("suite"),
            "codename": release.get("codename"),
            "version": release.get("version"),
            "component": release.get("component"),
            "architecture": release.get("architecture"),
            "release_date": release.get("date"),
            "fetched": release.get("fetched"),
            "index_files": ["binary-<architecture>/Packages", "i18n/Translation-en"],
            "index_sha256": info["index_sha256"],
            "index_sha256_note": "sha256 of the uncompressed index files as read; checked against the "
            "SHA256 list of the suite's signed InRelease file when fetched with apt",
        },
        "rebuild": "python -m examples.classification.debian_sections build --from-apt --suite "
        f"{release.get('codename') or DEFAULT_SUITE}",
        "built": now_utc(),
        "terms": "Debian package descriptions (from the packages' maintainers) and sections, as published "
        "in the Debian archive's index files; see the Debian archive for their terms",
        "params": info["params"],
        "stats": info["stats"],
        "mapping": info["mapping"],
        "label_counts": info["label_counts"],
        "corpus_sha256": info["corpus_sha256"],
        "snapshot_sha256": sha256_file(snapshot),
        "format": "xz-compressed TSV with header 'split<TAB>label<TAB>package<TAB>text'; split is train, "
        "valid or test; package is the first (by name) of the packages carrying the description",
    }
    write_json(provenance, prov)
    say(f"snapshot written: {show_path(snapshot)} ({os.path.getsize(snapshot) / 1e6:.2f} MB)")


def load_snapshot(snapshot=SNAPSHOT):
    """The shipped corpus as ``{split: [(label, package, text), ...]}``."""
    return read_tsv(snapshot)


def export_plain(splits, out_dir):
    """Write ``{split}.input0`` (texts) and ``{split}.label`` (sections), line-aligned, atomically."""
    os.makedirs(out_dir, exist_ok=True)
    for s in SPLITS:
        with atomic_write(os.path.join(out_dir, f"{s}.input0")) as f:
            f.writelines(text + "\n" for _, _, text in splits[s])
        with atomic_write(os.path.join(out_dir, f"{s}.label")) as f:
            f.writelines(label + "\n" for label, _, _ in splits[s])


# ---------------------------------------------------------------------------
# command line


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    b = sub.add_parser("build", help="build the corpus (from apt or from two index files)")
    src = b.add_mutually_exclusive_group(required=True)
    src.add_argument("--from-apt", action="store_true", help="fetch the index files with apt-get update (private dir)")
    src.add_argument("--packages", metavar="FILE", help="a Packages index file (use with --translation)")
    b.add_argument("--translation", metavar="FILE", help="a Translation-en index file (use with --packages)")
    b.add_argument("--work-dir", default=DEFAULT_WORK_DIR, help="where the build writes (default: %(default)s)")
    b.add_argument("--mirror", default=DEFAULT_MIRROR)
    b.add_argument("--suite", default=DEFAULT_SUITE)
    b.add_argument("--component", default=DEFAULT_COMPONENT)
    b.add_argument("--architecture", default=DEFAULT_ARCHITECTURE)
    b.add_argument("--max-words", type=int, default=MAX_WORDS)
    b.add_argument("--min-count", type=int, default=MIN_COUNT, help="examples a section needs to be kept")
    b.add_argument("--snapshot", default=SNAPSHOT, help="snapshot to compare with / update")
    b.add_argument("--update-snapshot", action="store_true", help="replace the snapshot and PROVENANCE.json")
    b.add_argument("--export", metavar="DIR", help="also write {train,valid,test}.{input0,label} into DIR")
    e = sub.add_parser("export", help="write the snapshot as {train,valid,test}.{input0,label} text files")
    e.add_argument("out_dir")
    e.add_argument("--snapshot", default=SNAPSHOT)
    args = parser.parse_args(argv)

    try:
        if args.command == "export":
            splits = load_snapshot(args.snapshot)
            export_plain(splits, args.out_dir)
            say("exported " + ", ".join(f"{s} {len(splits[s])}" for s in SPLITS) + f" to {args.out_dir}")
            return 0
        if args.packages and not args.translation:
            parser.error("--packages needs --translation")
        if args.max_words < 1 or args.min_count < 1:
            parser.error("--max-words and --min-count must be >= 1")
        release = {}
        if args.from_apt:
            paths, release = debian_apt.fetch_indexes(
                os.path.join(args.work_dir, "apt"), ("en",), packages=True, mirror=args.mirror,
                suite=args.suite, component=args.component, architecture=args.architecture, say=say,
            )
            packages_path, translation_path = paths["Packages"], paths["Translation-en"]
        else:
            packages_path, translation_path = args.packages, args.translation
        corpus_tsv, info = build(packages_path, translation_path, args.work_dir, args.max_words, args.min_count)
        say(f"stats: {json.dumps(info['stats'])}")
        same = compare_with_snapshot(corpus_tsv, args.snapshot)
        if args.update_snapshot and not same:
            update_snapshot(corpus_tsv, info, release, args.snapshot,
                            os.path.join(os.path.dirname(args.snapshot), "PROVENANCE.json"))
        if args.export:
            export_plain(read_tsv(corpus_tsv), args.export)
            say(f"exported to {args.export}")
    except CorpusError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
