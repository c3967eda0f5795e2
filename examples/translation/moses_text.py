#!/usr/bin/env python3
"""Moses text processing in Python (sacremoses), as fairseq's WMT scripts run the Perl tools.

``tokenize --normalize``  the training-data pipeline of fairseq's WMT14 scripts::

      normalize-punctuation.perl -l L | remove-non-printing-char.perl | tokenizer.perl -a -l L

``tokenize``              the test-data one: ``tokenizer.perl -a -l L`` only
                          (fairseq does not normalise the test sets)
``detokenize``            ``detokenizer.perl -l L`` (for detokenised BLEU)

``-a`` is the aggressive hyphen split (``well-known`` -> ``well @-@ known``),
which is why WMT En-De BLEU is reported with compound splitting.  The
punctuation normaliser runs with sacremoses' ``perl_parity`` (the Perl
script's mapping of ``’`` to ``"`` included), the non-printing-character
removal replaces every Unicode ``\\p{C}`` character by a space, as the Perl
script does, and the tokenizer escapes XML special characters (``&amp;``,
``&#124;``, ...) like ``tokenizer.perl`` by default.  One output line per
input line, always.  ``--workers N`` tokenises in N processes, order kept.

Usage::

    python moses_text.py tokenize --lang en --normalize --workers 8 a.en b.en.gz > train.tok.en
    python moses_text.py detokenize --lang de < hyp.tok.de > hyp.de
"""

import argparse
import gzip
import io
import itertools
import multiprocessing
import sys
from typing import Iterable, Iterator, List, Sequence

_pipeline = None  # per worker process


class MosesPipeline:
    """One line in, one tokenised line out (see the module docstring)."""

    def __init__(self, lang: str, normalize: bool):
        try:
            import regex
            from sacremoses import MosesPunctNormalizer, MosesTokenizer
        except ImportError as err:
            raise SystemExit(
                f"the WMT14 recipe needs sacremoses ({err}): pip install 'sacremoses>=0.2.0' "
                "(or pip install -e '.[recipes]')"
            ) from err
        self.normalizer = MosesPunctNormalizer(lang=lang, perl_parity=True) if normalize else None
        self.non_printing = regex.compile(r"\p{C}")
        self.tokenizer = MosesTokenizer(lang=lang)

    def __call__(self, line: str) -> str:
        if self.normalizer is not None:
            line = self.normalizer.normalize(line)
            line = self.non_printing.sub(" ", line)
        return self.tokenizer.tokenize(line, aggressive_dash_splits=True, return_str=True, escape=True)


def detokenizer(lang: str):
    from sacremoses import MosesDetokenizer

    detok = MosesDetokenizer(lang=lang)
    return lambda line: detok.detokenize(line.split(), return_str=True, unescape=True)


def _init_worker(lang: str, normalize: bool) -> None:
    global _pipeline
    _pipeline = MosesPipeline(lang, normalize)


def _work(batch: List[str]) -> List[str]:
    return [_pipeline(line) for line in batch]


def _batches(lines: Iterable[str], size: int) -> Iterator[List[str]]:
    it = iter(lines)
    while True:
        batch = list(itertools.islice(it, size))
        if not batch:
            return
        yield batch


def tokenize_lines(lines: Iterable[str], lang: str, normalize: bool, workers: int = 1,
                   batch_size: int = 2000) -> Iterator[str]:
    """Tokenise ``lines`` (without their newlines), in order."""
    if workers <= 1:
        pipeline = MosesPipeline(lang, normalize)
        for line in lines:
            yield pipeline(line)
        return
    with multiprocessing.Pool(workers, initializer=_init_worker, initargs=(lang, normalize)) as pool:
        for batch in pool.imap(_work, _batches(lines, batch_size)):
            yield from batch


def read_lines(paths: Sequence[str]) -> Iterator[str]:
    """The lines of each file in turn (``.gz`` read as gzip; none: stdin), without newlines.

    Lines end at ``\\n`` only, as for the Perl tools, and are decoded as UTF-8
    with undecodable bytes replaced.
    """
    if not paths:
        stream = io.TextIOWrapper(sys.stdin.buffer, encoding="utf-8", errors="replace", newline="\n")
        yield from (line.rstrip("\n") for line in stream)
        return
    for path in paths:
        opener = gzip.open if path.endswith(".gz") else open
        with opener(path, "rt", encoding="utf-8", errors="replace", newline="\n") as f:
            yield from (line.rstrip("\n") for line in f)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    tok = sub.add_parser("tokenize", help="Moses tokenisation with aggressive hyphen splitting")
    tok.add_argument("--lang", required=True)
    tok.add_argument("--normalize", action="store_true",
                     help="punctuation normalisation and non-printing-character removal first (training data)")
    tok.add_argument("--workers", type=int, default=1)
    tok.add_argument("inputs", nargs="*", help="files (.gz allowed); none: stdin")
    detok = sub.add_parser("detokenize", help="Moses detokenisation")
    detok.add_argument("--lang", required=True)
    detok.add_argument("inputs", nargs="*")
    args = parser.parse_args(argv)

    lines = read_lines(args.inputs)
    if args.command == "tokenize":
        out = tokenize_lines(lines, args.lang, args.normalize, args.workers)
    else:
        out = map(detokenizer(args.lang), lines)
    stdout = sys.stdout.buffer
    for line in out:
        stdout.write((line.replace("\n", " ") + "\n").encode("utf-8"))
    stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
