#!/usr/bin/env python3
"""Segments of a WMT ``.sgm`` test file, extracted the two standard ways.

``fairseq``   what fairseq's ``prepare-wmt14en2{de,fr}.sh`` feeds the tokenizer::

                  grep '<seg id' FILE | sed -e 's/<seg id="[0-9]*">\\s*//g' \\
                      | sed -e 's/\\s*<\\/seg>\\s*//g' | sed -e "s/\\’/\\'/g"

``sacrebleu`` the reference text of ``sacrebleu -t wmt14/full`` (sacrebleu's
              reader of WMT's pre-2021 "fake SGML": lines starting with
              ``<seg ``, the text between the tags, outer spaces stripped and
              inner runs of spaces collapsed), used for detokenised BLEU.

Usage: ``python sgm.py {fairseq,sacrebleu} FILE.sgm > FILE.txt``
"""

import argparse
import re
import sys
from typing import List

_SEG_OPEN = re.compile(r'<seg id="[0-9]*">\s*')
_SEG_CLOSE = re.compile(r"\s*</seg>\s*")
_SACREBLEU_SEG = re.compile(r"<seg.*?>(.*)</seg>.*?")


def _lines(path: str) -> List[str]:
    with open(path, encoding="utf-8", newline="\n") as f:
        return f.read().split("\n")


def fairseq_segments(path: str) -> List[str]:
    out = []
    for line in _lines(path):
        if "<seg id" in line:
            line = _SEG_CLOSE.sub("", _SEG_OPEN.sub("", line))
            out.append(line.replace("\u2019", "'"))
    return out


def sacrebleu_segments(path: str) -> List[str]:
    out = []
    for line in _lines(path):
        if line.startswith("<seg "):
            out.append(re.sub(r"\s+", " ", _SACREBLEU_SEG.sub(r"\1", line).strip()))
    return out


STYLES = {"fairseq": fairseq_segments, "sacrebleu": sacrebleu_segments}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("style", choices=sorted(STYLES))
    parser.add_argument("sgm")
    args = parser.parse_args(argv)
    segments = STYLES[args.style](args.sgm)
    if not segments:
        print(f"error: no <seg> lines in {args.sgm}", file=sys.stderr)
        return 2
    sys.stdout.buffer.write("".join(s + "\n" for s in segments).encode("utf-8"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
