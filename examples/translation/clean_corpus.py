#!/usr/bin/env python3
"""Moses' ``clean-corpus-n.perl`` in Python: drop sentence pairs by length and length ratio.

    python clean_corpus.py --ratio 1.5 CORPUS L1 L2 OUT MIN MAX

reads ``CORPUS.L1`` / ``CORPUS.L2`` and writes the kept pairs to ``OUT.L1`` /
``OUT.L2``, as the Perl script does (fairseq's WMT14 scripts run it on the
BPE-encoded train and valid sets with ``-ratio 1.5`` and lengths 1-250): in
each line ``|`` is deleted, whitespace runs become one space and the ends are
trimmed; a pair is dropped when either side is empty, has fewer than MIN or
more than MAX tokens, or one side is more than RATIO times longer than the
other.  Lines are written as cleaned.
"""

import argparse
import itertools
import re
import sys
from typing import Iterable, Iterator, Optional, Tuple

_SPACES = re.compile(r"\s+")


def clean_line(line: str) -> str:
    return _SPACES.sub(" ", line.replace("|", "")).strip(" ")


def keep(a: str, b: str, min_len: int, max_len: int, ratio: Optional[float]) -> bool:
    if not a or not b:
        return False
    n, m = len(a.split(" ")), len(b.split(" "))
    if n > max_len or m > max_len or n < min_len or m < min_len:
        return False
    if ratio and (n / m > ratio or m / n > ratio):
        return False
    return True


def clean_pairs(pairs: Iterable[Tuple[str, str]], min_len: int, max_len: int,
                ratio: Optional[float]) -> Iterator[Tuple[str, str]]:
    for a, b in pairs:
        a, b = clean_line(a.rstrip("\n")), clean_line(b.rstrip("\n"))
        if keep(a, b, min_len, max_len, ratio):
            yield a, b


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ratio", type=float, default=None)
    parser.add_argument("corpus")
    parser.add_argument("l1")
    parser.add_argument("l2")
    parser.add_argument("out")
    parser.add_argument("min", type=int)
    parser.add_argument("max", type=int)
    args = parser.parse_args(argv)
    opts = dict(encoding="utf-8", newline="\n")
    src, tgt = f"{args.corpus}.{args.l1}", f"{args.corpus}.{args.l2}"
    kept = total = 0
    with open(src, **opts) as fa, open(tgt, **opts) as fb, \
            open(f"{args.out}.{args.l1}", "w", **opts) as oa, open(f"{args.out}.{args.l2}", "w", **opts) as ob:

        def pairs():
            nonlocal total
            for a, b in itertools.zip_longest(fa, fb):
                if a is None or b is None:
                    longer, shorter = (tgt, src) if a is None else (src, tgt)
                    raise SystemExit(f"error: {longer} has more lines than {shorter} ({total})")
                total += 1
                yield a, b

        for a, b in clean_pairs(pairs(), args.min, args.max, args.ratio):
            oa.write(a + "\n")
            ob.write(b + "\n")
            kept += 1
    print(f"clean_corpus: {args.corpus}: kept {kept} of {total} pairs", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
