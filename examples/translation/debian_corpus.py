#!/usr/bin/env python3
"""German-English segment pairs from Debian's package-description translations.

Debian publishes the descriptions of its packages in apt index files, one per
language: ``Translation-en`` (the originals) and ``Translation-de`` (German
translations made by the Debian Description Translation Project).  Both are
deb822 files with one stanza per package::

    Package: apt
    Description-md5: 9fb97a88cb7383934ef963352b53b4a7
    Description-de: Paketverwaltung für die Befehlszeile
     Dieses Paket enthält Befehlszeilenwerkzeuge, die ...
     .
     Das sind:
      * apt-get für den Abruf von Paketen ...

``Description-md5`` is the md5 of the English description, so it joins the two
files.  This module turns the joined descriptions into aligned segment pairs:

1. The first line (the synopsis) is one pair.
2. The long description is split into paragraphs (lines holding only ``.``);
   only when both sides have the same number of paragraphs are they paired,
   paragraph by paragraph (otherwise only the synopsis is used).
3. A paragraph is split into units: the text before the first list item and
   each list item (a line starting with ``*``, ``-``, ``+``, ``•`` or ``o``
   followed by a space).  When both sides have the same number of units, the
   units are paired, otherwise the whole paragraph is one pair.
4. A unit is split into sentences with a small deterministic splitter
   (:func:`split_sentences`).  When both sides have the same number of
   sentences, the sentences are paired, otherwise the whole unit is one pair.

Cleaning (:func:`clean_pairs`): HTML entities are unescaped, text is NFC
normalised and whitespace is collapsed; pairs with an empty side, identical
sides, a side longer than ``MAX_WORDS`` (100) whitespace-separated words or a
character-length ratio above ``MAX_RATIO`` (3) are dropped, and exact duplicate
pairs are kept once.

Split (:func:`split_corpus`): valid and test pairs are drawn, with a fixed
seed, from the pairs whose German side and whose English side each occur in
no other pair.  So no valid or test segment (either side) occurs in train, and
valid and test share none either.  Everything else is train (shuffled with the
same seed, so a prefix of train is a fair sample of it).

The aligner (steps 1-4) is :mod:`examples.translation.debian_align`; the TSV files, the
snapshot and its provenance are :mod:`examples.translation.debian_snapshot`.

Run as a module to rebuild the corpus from apt (``build --from-apt``) or from
two given index files; the result is compared with the snapshot shipped in
``data/``, and ``--update-snapshot`` rewrites that snapshot and its provenance.
Each stage writes its output atomically and is skipped when its output is
already there for the same inputs.

Only the standard library is needed (plus the ``lz4`` command for lz4
compressed index files, as apt may store them).
"""

# A little over 300 lines because the docstring above states the corpus's rules; the files and the
# command line are debian_snapshot.py's and examples.common.corpus_snapshot's, the alignment debian_align.py's.

import html
import os
import random
import sys
import unicodedata

from examples.common import debian_apt
from examples.common.debian_apt import (
    DEFAULT_COMPONENT, DEFAULT_MIRROR, DEFAULT_SUITE, CorpusError, description_md5, iter_stanzas,
)
from examples.common.corpus_snapshot import corpus_main
from examples.common.stages import atomic_write, file_stage_done, mark_file_stage, read_json, sha256_file, stage_key
from examples.translation.debian_align import align_description
from examples.translation.debian_snapshot import (
    # compare_with_snapshot, export_plain, load_snapshot, read_tsv and update_snapshot: the command line's
    SNAPSHOT, SPLITS, compare_with_snapshot, corpus_digest, export_plain, load_snapshot, read_tsv, say,  # noqa: F401
    splits_to_rows, update_snapshot, write_tsv,  # noqa: F401
)

HERE = os.path.dirname(os.path.abspath(__file__))

DEFAULT_WORK_DIR = os.path.join(HERE, "work", "corpus")

MAX_WORDS = 100
MAX_RATIO = 3.0
SEED = 1
N_VALID = 2000
N_TEST = 2000


# ---------------------------------------------------------------------------
# reading apt index files


def parse_index(path, lang):
    """Parse a ``Translation-<lang>`` file into ``{md5: (synopsis, long_lines)}``.

    ``long_lines`` are the continuation lines with their first space removed
    (so a paragraph separator is ``"."``).  The first stanza of a
    ``Description-md5`` wins (several packages may share one description).
    Raises :class:`CorpusError` naming the file for empty or malformed input.
    """
    field = f"Description-{lang}"
    entries = {}
    for lineno, stanza in iter_stanzas(path, what="apt Translation"):
        if field not in stanza:
            other = [k for k in stanza if k.startswith("Description-") and k not in (field, "Description-md5")]
            if other:
                raise CorpusError(
                    f"{path}: stanza ending at line {lineno} has {other[0]} but no {field} "
                    f"(is this really the '{lang}' index?)"
                )
            raise CorpusError(f"{path}: stanza ending at line {lineno} has no {field} field")
        md5 = description_md5(stanza, path, lineno)
        lines = stanza[field]
        entries.setdefault(md5, (lines[0].strip(), lines[1:]))
    return entries


# ---------------------------------------------------------------------------
# cleaning


def clean_segment(text):
    """Unescape HTML entities, NFC-normalise and collapse whitespace."""
    text = html.unescape(text)
    text = unicodedata.normalize("NFC", text)
    text = "".join(" " if unicodedata.category(c) in ("Cc", "Zs", "Zl", "Zp") else c for c in text)
    return " ".join(text.split())


def pair_problem(de, en, max_words=MAX_WORDS, max_ratio=MAX_RATIO):
    """Why a cleaned pair is dropped (``None`` to keep it)."""
    if not de or not en:
        return "empty"
    if de == en:
        return "identical"
    if len(de.split()) > max_words or len(en.split()) > max_words:
        return "too_long"
    if max(len(de), len(en)) > max_ratio * min(len(de), len(en)):
        return "ratio"
    return None


def clean_pairs(raw_pairs, max_words=MAX_WORDS, max_ratio=MAX_RATIO, stats=None):
    """Clean, filter and de-duplicate pairs (first occurrence kept, order kept)."""
    stats = {} if stats is None else stats
    seen, out = set(), []
    for de, en in raw_pairs:
        de, en = clean_segment(de), clean_segment(en)
        problem = pair_problem(de, en, max_words, max_ratio)
        if problem is None and (de, en) in seen:
            problem = "duplicate"
        if problem:
            stats[f"dropped_{problem}"] = stats.get(f"dropped_{problem}", 0) + 1
            continue
        seen.add((de, en))
        out.append((de, en))
    stats["kept"] = len(out)
    return out


def extract_pairs(de_path, en_path, max_words=MAX_WORDS, max_ratio=MAX_RATIO):
    """Join the two index files and return ``(clean pairs, stats)``."""
    de_entries = parse_index(de_path, "de")
    en_entries = parse_index(en_path, "en")
    common = [md5 for md5 in de_entries if md5 in en_entries]
    if not common:
        raise CorpusError(
            f"{de_path} and {en_path} share no Description-md5: the files are misaligned "
            "(different releases, or not a Translation-de / Translation-en pair)"
        )
    stats = {
        "descriptions_de": len(de_entries),
        "descriptions_en": len(en_entries),
        "descriptions_joined": len(common),
        "paragraph_count_mismatch": 0,
    }
    raw = []
    for md5 in common:
        pairs, mismatch = align_description(de_entries[md5], en_entries[md5])
        stats["paragraph_count_mismatch"] += int(mismatch)
        raw.extend(pairs)
    stats["raw_pairs"] = len(raw)
    return clean_pairs(raw, max_words, max_ratio, stats), stats


# ---------------------------------------------------------------------------
# train / valid / test split


def split_corpus(pairs, n_valid=N_VALID, n_test=N_TEST, seed=SEED):
    """Deterministic split; no valid/test segment (either side) occurs in train.

    Valid and test are drawn from the pairs whose German side and English side
    each occur in no other pair; if there are too few, the sizes shrink (a
    small corpus still gets a split, with about a tenth each at most).
    """
    de_count, en_count = {}, {}
    for de, en in pairs:
        de_count[de] = de_count.get(de, 0) + 1
        en_count[en] = en_count.get(en, 0) + 1
    unique = [i for i, (de, en) in enumerate(pairs) if de_count[de] == 1 and en_count[en] == 1]
    rng = random.Random(seed)
    rng.shuffle(unique)
    cap = max(1, len(pairs) // 10) if len(pairs) >= 10 else 0
    n_test = min(n_test, cap, len(unique) // 2)
    n_valid = min(n_valid, cap, len(unique) - n_test)
    test_idx = unique[:n_test]
    valid_idx = unique[n_test : n_test + n_valid]
    held = set(test_idx) | set(valid_idx)
    train_idx = [i for i in range(len(pairs)) if i not in held]
    rng.shuffle(train_idx)
    return {
        "train": [pairs[i] for i in train_idx],
        "valid": [pairs[i] for i in valid_idx],
        "test": [pairs[i] for i in test_idx],
    }


def check_disjoint(splits):
    """Raise if a valid/test segment occurs in train (or test in valid)."""
    train_de = {de for de, _ in splits["train"]}
    train_en = {en for _, en in splits["train"]}
    for name in ("valid", "test"):
        for de, en in splits[name]:
            if de in train_de or en in train_en:
                raise AssertionError(f"{name} segment occurs in train: {de!r} / {en!r}")
    valid_de = {de for de, _ in splits["valid"]}
    valid_en = {en for _, en in splits["valid"]}
    for de, en in splits["test"]:
        if de in valid_de or en in valid_en:
            raise AssertionError(f"test segment occurs in valid: {de!r} / {en!r}")


# ---------------------------------------------------------------------------
# fetching the index files with apt


def fetch_indexes(apt_dir, mirror=DEFAULT_MIRROR, suite=DEFAULT_SUITE, component=DEFAULT_COMPONENT):
    """``Translation-de`` and ``Translation-en`` fetched with apt into ``apt_dir``: ``(de, en, release)``."""
    paths, release = debian_apt.fetch_indexes(
        apt_dir, ("en", "de"), mirror=mirror, suite=suite, component=component, say=say
    )
    return paths["Translation-de"], paths["Translation-en"], release


# ---------------------------------------------------------------------------
# the build


def build(de_path, en_path, work_dir=DEFAULT_WORK_DIR, max_words=MAX_WORDS, max_ratio=MAX_RATIO, n_valid=N_VALID,
          n_test=N_TEST, seed=SEED):
    """Build the corpus from two index files; returns ``(corpus_tsv, info)``.

    Stages (each atomic, skipped when done for the same inputs):
    ``pairs.tsv`` (joined, aligned, cleaned) and ``debian-de-en.tsv`` (split).
    """
    os.makedirs(work_dir, exist_ok=True)
    for p in (de_path, en_path):
        if not os.path.exists(p):
            raise CorpusError(f"index file not found: {p}")
    hashes = {"Translation-de": sha256_file(de_path), "Translation-en": sha256_file(en_path)}

    pairs_tsv = os.path.join(work_dir, "pairs.tsv")
    key = stage_key(stage="pairs", hashes=hashes, max_words=max_words, max_ratio=max_ratio)
    if file_stage_done(pairs_tsv, key):
        say(f"pairs: done already ({pairs_tsv})")
    else:
        say("pairs: joining, aligning and cleaning the descriptions")
        pairs, stats = extract_pairs(de_path, en_path, max_words, max_ratio)
        with atomic_write(pairs_tsv) as f:
            f.write("de\ten\n")
            for de, en in pairs:
                f.write(f"{de}\t{en}\n")
        mark_file_stage(pairs_tsv, key, stats=stats)
        say(f"pairs: {len(pairs)} pairs from {stats['descriptions_joined']} joined descriptions")
    stats = read_json(pairs_tsv + ".stamp")["stats"]

    corpus_tsv = os.path.join(work_dir, "debian-de-en.tsv")
    key2 = stage_key(stage="split", pairs=key, n_valid=n_valid, n_test=n_test, seed=seed)
    if file_stage_done(corpus_tsv, key2):
        say(f"split: done already ({corpus_tsv})")
    else:
        with open(pairs_tsv, encoding="utf-8") as f:
            next(f)
            pairs = [tuple(line.rstrip("\n").split("\t")) for line in f]
        splits = split_corpus(pairs, n_valid, n_test, seed)
        check_disjoint(splits)
        write_tsv(corpus_tsv, splits_to_rows(splits))
        mark_file_stage(corpus_tsv, key2, counts={s: len(splits[s]) for s in SPLITS}, digest=corpus_digest(splits))
        say("split: " + ", ".join(f"{s} {len(splits[s])}" for s in SPLITS))
    stamp = read_json(corpus_tsv + ".stamp")
    info = {
        "index_sha256": hashes,
        "stats": stats,
        "counts": stamp["counts"],
        "corpus_sha256": stamp["digest"],
        "params": {"max_words": max_words, "max_ratio": max_ratio, "n_valid": n_valid, "n_test": n_test, "seed": seed},
    }
    return corpus_tsv, info


# ---------------------------------------------------------------------------
# command line


def add_options(build_parser, sources):
    """This corpus's own options of ``build``: its two index files and its parameters."""
    sources.add_argument("--de", metavar="FILE", help="a Translation-de index file (use with --en)")
    build_parser.add_argument("--en", metavar="FILE", help="a Translation-en index file (use with --de)")
    build_parser.add_argument("--max-words", type=int, default=MAX_WORDS)
    build_parser.add_argument("--max-ratio", type=float, default=MAX_RATIO)
    build_parser.add_argument("--valid-size", type=int, default=N_VALID)
    build_parser.add_argument("--test-size", type=int, default=N_TEST)
    build_parser.add_argument("--seed", type=int, default=SEED)


def build_from_args(args, parser):
    """``build`` as the command line asks: ``(corpus_tsv, info, release)``."""
    if args.de and not args.en:
        parser.error("--de needs --en")
    release = {}
    if args.from_apt:
        de_path, en_path, release = fetch_indexes(os.path.join(args.work_dir, "apt"), args.mirror, args.suite, args.component)
    else:
        de_path, en_path = args.de, args.en
    corpus_tsv, info = build(
        de_path, en_path, args.work_dir, args.max_words, args.max_ratio, args.valid_size, args.test_size, args.seed
    )
    return corpus_tsv, info, release


def main(argv=None):
    return corpus_main(argv, sys.modules[__name__], "{train,valid,test}.{de,en}")


if __name__ == "__main__":
    sys.exit(main())
