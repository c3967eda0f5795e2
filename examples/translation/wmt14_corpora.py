#!/usr/bin/env python3
"""Where the WMT14 raw corpora are, pair by pair, as fairseq's preparation scripts use them.

The layout is that of the WMT tarballs extracted into one directory (``RAW``),
exactly as fairseq's ``prepare-wmt14en2de.sh --icml17`` and
``prepare-wmt14en2fr.sh`` leave them in ``orig/``::

    RAW/training/europarl-v7.de-en.{de,en}          training-parallel-europarl-v7.tgz
    RAW/commoncrawl.de-en.{de,en}                   training-parallel-commoncrawl.tgz
    RAW/training/news-commentary-v9.de-en.{de,en}   training-parallel-nc-v9.tgz
    RAW/training/europarl-v7.fr-en.{fr,en}          training-parallel-europarl-v7.tgz
    RAW/commoncrawl.fr-en.{fr,en}                   training-parallel-commoncrawl.tgz
    RAW/un/undoc.2000.fr-en.{fr,en}                 training-parallel-un.tgz
    RAW/training/news-commentary-v9.fr-en.{fr,en}   training-parallel-nc-v9.tgz
    RAW/giga-fren.release2.fixed.{fr,en}[.gz]       training-giga-fren.tar
    RAW/dev/newstest2013.{en,de,fr}                 dev.tgz (only with VALID=newstest2013)
    RAW/test-full/newstest2014-deen-src.en.sgm      test-full.tgz
    RAW/test-full/newstest2014-deen-ref.de.sgm
    RAW/test-full/newstest2014-fren-src.en.sgm
    RAW/test-full/newstest2014-fren-ref.fr.sgm

A training file may also be gzipped (``NAME.gz``), as giga-fren comes.
``python wmt14_corpora.py shell --pair en-de --raw RAW`` prints the file
paths as bash assignments for ``prepare-wmt14.sh``, or fails naming every
missing file and the tarball it comes from; ``urls`` prints what
``download-wmt14.sh`` fetches.
"""

import argparse
import os
import shlex
import sys
from dataclasses import dataclass
from typing import Dict, List, Tuple


class CorpusError(Exception):
    """Missing raw files or a bad setting; the message names them."""


# tarball -> URL (those of fairseq's prepare-wmt14en2de.sh --icml17 / prepare-wmt14en2fr.sh)
TARBALLS = {
    "training-parallel-europarl-v7.tgz": "http://statmt.org/wmt13/training-parallel-europarl-v7.tgz",
    "training-parallel-commoncrawl.tgz": "http://statmt.org/wmt13/training-parallel-commoncrawl.tgz",
    "training-parallel-nc-v9.tgz": "http://statmt.org/wmt14/training-parallel-nc-v9.tgz",
    "training-parallel-un.tgz": "http://statmt.org/wmt13/training-parallel-un.tgz",
    "training-giga-fren.tar": "http://statmt.org/wmt10/training-giga-fren.tar",
    "dev.tgz": "http://statmt.org/wmt14/dev.tgz",
    "test-full.tgz": "http://statmt.org/wmt14/test-full.tgz",
}


@dataclass(frozen=True)
class Pair:
    src: str
    tgt: str
    train: Tuple[Tuple[str, str], ...]  # (file prefix, tarball), in fairseq's order
    test: str  # test-full/newstest2014-XXYY prefix
    valid_every: int  # fairseq: every N-th training line is held out as valid
    bpe_tokens: int
    dev: str = "dev/newstest2013"

    @property
    def test_src(self) -> str:
        return f"{self.test}-src.{self.src}.sgm"

    @property
    def test_ref(self) -> str:
        return f"{self.test}-ref.{self.tgt}.sgm"


PAIRS: Dict[str, Pair] = {
    "en-de": Pair(
        src="en", tgt="de",
        train=(
            ("training/europarl-v7.de-en", "training-parallel-europarl-v7.tgz"),
            ("commoncrawl.de-en", "training-parallel-commoncrawl.tgz"),
            ("training/news-commentary-v9.de-en", "training-parallel-nc-v9.tgz"),
        ),
        test="test-full/newstest2014-deen",
        valid_every=100,
        bpe_tokens=32000,  # joint BPE of the scaling-NMT En-De setup
    ),
    "en-fr": Pair(
        src="en", tgt="fr",
        train=(
            ("training/europarl-v7.fr-en", "training-parallel-europarl-v7.tgz"),
            ("commoncrawl.fr-en", "training-parallel-commoncrawl.tgz"),
            ("un/undoc.2000.fr-en", "training-parallel-un.tgz"),
            ("training/news-commentary-v9.fr-en", "training-parallel-nc-v9.tgz"),
            ("giga-fren.release2.fixed", "training-giga-fren.tar"),
        ),
        test="test-full/newstest2014-fren",
        valid_every=1333,
        bpe_tokens=40000,
    ),
}
VALID_CHOICES = ("split", "newstest2013")


def get_pair(name: str) -> Pair:
    try:
        return PAIRS[name]
    except KeyError:
        raise CorpusError(f"unknown pair {name!r}: choose one of {', '.join(PAIRS)}") from None


def find(raw: str, rel: str, gz_ok: bool) -> str:
    """``RAW/rel`` (or ``RAW/rel.gz`` where allowed) if it exists, else ''."""
    path = os.path.join(raw, rel)
    if os.path.isfile(path):
        return path
    if gz_ok and os.path.isfile(path + ".gz"):
        return path + ".gz"
    return ""


def locate(raw: str, pair_name: str, valid: str = "split") -> Dict[str, object]:
    """Every raw file the pair needs: ``{"train_src": [...], "train_tgt": [...],
    "test_src": path, "test_ref": path, "dev_src"/"dev_tgt": path or ''}``.

    Raises :class:`CorpusError` naming every missing file and its tarball.
    """
    pair = get_pair(pair_name)
    if valid not in VALID_CHOICES:
        raise CorpusError(f"VALID={valid!r}: choose one of {', '.join(VALID_CHOICES)}")
    if not os.path.isdir(raw):
        raise CorpusError(f"raw data directory not found: {raw}")
    missing: List[str] = []
    found: Dict[str, object] = {"train_src": [], "train_tgt": []}

    def need(rel, tarball, gz_ok=False):
        path = find(raw, rel, gz_ok)
        if not path:
            missing.append(f"{os.path.join(raw, rel)} (from {tarball})")
        return path

    for prefix, tarball in pair.train:
        for side, lang in (("train_src", pair.src), ("train_tgt", pair.tgt)):
            found[side].append(need(f"{prefix}.{lang}", tarball, gz_ok=True))
    found["test_src"] = need(pair.test_src, "test-full.tgz")
    found["test_ref"] = need(pair.test_ref, "test-full.tgz")
    found["dev_src"] = found["dev_tgt"] = ""
    if valid == "newstest2013":
        found["dev_src"] = need(f"{pair.dev}.{pair.src}", "dev.tgz")
        found["dev_tgt"] = need(f"{pair.dev}.{pair.tgt}", "dev.tgz")
    if missing:
        raise CorpusError(
            f"missing raw file{'s' if len(missing) > 1 else ''} for WMT14 {pair_name}:\n  "
            + "\n  ".join(missing)
            + "\nextract the WMT tarballs into the raw directory (download-wmt14.sh does it)"
        )
    return found


def shell_assignments(raw: str, pair_name: str, valid: str = "split") -> str:
    """bash assignments of the pair's settings and raw files (for ``eval``)."""
    pair = get_pair(pair_name)
    files = locate(raw, pair_name, valid)
    q = shlex.quote
    lines = [
        f"SRC={q(pair.src)}",
        f"TGT={q(pair.tgt)}",
        f"PAIR_VALID_EVERY={pair.valid_every}",
        f"PAIR_BPE_TOKENS={pair.bpe_tokens}",
        "TRAIN_SRC_FILES=(" + " ".join(q(p) for p in files["train_src"]) + ")",
        "TRAIN_TGT_FILES=(" + " ".join(q(p) for p in files["train_tgt"]) + ")",
        f"TEST_SRC_SGM={q(files['test_src'])}",
        f"TEST_REF_SGM={q(files['test_ref'])}",
        f"DEV_SRC={q(files['dev_src'])}",
        f"DEV_TGT={q(files['dev_tgt'])}",
    ]
    return "\n".join(lines) + "\n"


def tarballs(pair_name: str, valid: str = "split") -> List[str]:
    pair = get_pair(pair_name)
    names = [t for _, t in pair.train] + ["test-full.tgz"]
    if valid == "newstest2013":
        names.append("dev.tgz")
    return list(dict.fromkeys(names))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sh = sub.add_parser("shell", help="print bash assignments of the raw files (or fail naming the missing ones)")
    sh.add_argument("--pair", required=True, choices=sorted(PAIRS))
    sh.add_argument("--raw", required=True)
    sh.add_argument("--valid", default="split", choices=VALID_CHOICES)
    urls = sub.add_parser("urls", help="print 'TARBALL URL' for each tarball the pair needs")
    urls.add_argument("--pair", required=True, choices=sorted(PAIRS))
    urls.add_argument("--valid", default="split", choices=VALID_CHOICES)
    args = parser.parse_args(argv)
    try:
        if args.command == "shell":
            sys.stdout.write(shell_assignments(args.raw, args.pair, args.valid))
        else:
            for name in tarballs(args.pair, args.valid):
                print(name, TARBALLS[name])
    except CorpusError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
