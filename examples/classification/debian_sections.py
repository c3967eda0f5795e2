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

import hashlib
import html
import os
import sys
import unicodedata
from collections import Counter

from examples.classification.sections_snapshot import (
    # the snapshot's functions also serve the command line (corpus_main) and this corpus's callers
    PROVENANCE, SNAPSHOT, compare_with_snapshot, export_plain, load_snapshot, read_tsv, update_snapshot,  # noqa: F401
    write_tsv,
)
from examples.common import debian_apt
from examples.common.corpus_snapshot import SPLITS, corpus_digest, corpus_main, say
from examples.common.debian_apt import DEFAULT_ARCHITECTURE, CorpusError, description_md5, iter_stanzas
from examples.common.stages import file_stage_done, mark_file_stage, read_json, sha256_file, show_path, stage_key

HERE = os.path.dirname(os.path.abspath(__file__))

DEFAULT_WORK_DIR = os.path.join(HERE, "work", "corpus")

MAX_WORDS = 64
MIN_COUNT = 300
TEST_PER_MILLE = 100
VALID_PER_MILLE = 100


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


# ---------------------------------------------------------------------------
# command line


def add_options(build_parser, sources):
    """This corpus's own options of ``build``: its two index files and its parameters."""
    sources.add_argument("--packages", metavar="FILE", help="a Packages index file (use with --translation)")
    build_parser.add_argument("--translation", metavar="FILE", help="a Translation-en index file (use with --packages)")
    build_parser.add_argument("--architecture", default=DEFAULT_ARCHITECTURE)
    build_parser.add_argument("--max-words", type=int, default=MAX_WORDS)
    build_parser.add_argument("--min-count", type=int, default=MIN_COUNT, help="examples a section needs to be kept")


def build_from_args(args, parser):
    """``build`` as the command line asks: ``(corpus_tsv, info, release)``."""
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
    return corpus_tsv, info, release


def main(argv=None):
    return corpus_main(argv, sys.modules[__name__], "{train,valid,test}.{input0,label}")


if __name__ == "__main__":
    sys.exit(main())
