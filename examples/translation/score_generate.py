#!/usr/bin/env python3
"""Score a ``fairseq-generate`` output the two ways WMT14 results are reported.

tokenised BLEU with compound splitting (what papers on WMT14 En-De report)
    exactly fairseq's ``scripts/compound_split_bleu.sh``: the hypotheses (last
    field of the ``H-`` lines) and references (``T-`` lines), both Moses-
    tokenised, have every hyphen between two non-spaces split off as
    ``##AT##-##AT##`` (``perl -ple 's{(\\S)-(\\S)}{$1 ##AT##-##AT## $2}g'``), and
    BLEU is computed on the whitespace tokens like ``multi-bleu.perl`` /
    ``fairseq-score``: corpus-level, case-sensitive, no smoothing (sacrebleu
    with ``tokenize='none'``, ``smooth_method='none'``).
detokenised sacreBLEU
    the hypotheses Moses-detokenised and scored with sacreBLEU's defaults
    (13a tokenisation, exp smoothing) against the raw reference text of
    ``sacrebleu -t wmt14/full`` (``sgm.py sacrebleu``), with sacreBLEU's
    signature.

Hypotheses are ordered by sentence id; every test sentence must be there.

    python score_generate.py --generate generate-test.txt --lang de \\
        --detok-ref test.ref.detok.de --json scores.json
"""

import argparse
import json
import re
import sys
from typing import Dict, List, Optional, Sequence, Tuple


_COMPOUND = re.compile(r"(\S)-(\S)")


class ScoreError(Exception):
    """The generate output does not match the references; the message says how."""


def compound_split(line: str) -> str:
    """``s{(\\S)-(\\S)}{$1 ##AT##-##AT## $2}g``, with Perl's left-to-right, non-overlapping matches."""
    return _COMPOUND.sub(r"\1 ##AT##-##AT## \2", line)


def read_generate_output(path: str) -> Tuple[List[str], List[str]]:
    """(hypotheses, references) of a fairseq-generate output, ordered by sentence id.

    Hypothesis: the last tab-separated field of the first ``H-id`` line of each
    id (the best of ``--nbest``); reference: everything after the first tab of
    the ``T-id`` line.
    """
    hyps: Dict[int, str] = {}
    refs: Dict[int, str] = {}
    with open(path, encoding="utf-8", newline="\n") as f:
        for line in f:
            line = line.rstrip("\n")
            m = re.match(r"([HT])-(\d+)\t", line)
            if not m:
                continue
            kind, sid = m.group(1), int(m.group(2))
            if kind == "H":
                hyps.setdefault(sid, line.split("\t")[-1])
            else:
                refs[sid] = line.split("\t", 1)[1]
    if not hyps:
        raise ScoreError(f"no hypotheses (H- lines) in {path}: did fairseq-generate finish?")
    if set(hyps) != set(refs):
        raise ScoreError(
            f"{path}: {len(hyps)} hypotheses but {len(refs)} references "
            f"(ids without a reference: {sorted(set(hyps) - set(refs))[:5]}, "
            f"without a hypothesis: {sorted(set(refs) - set(hyps))[:5]})"
        )
    ids = sorted(hyps)
    if ids != list(range(len(ids))):
        missing = sorted(set(range(ids[-1] + 1)) - set(ids))
        raise ScoreError(f"{path}: sentence ids {missing[:5]} were not translated")
    return [hyps[i] for i in ids], [refs[i] for i in ids]


def tokenized_bleu(hyps: Sequence[str], refs: Sequence[str]):
    """multi-bleu.perl / fairseq-score BLEU on whitespace tokens (a sacrebleu BLEUScore)."""
    import sacrebleu

    return sacrebleu.corpus_bleu(list(hyps), [list(refs)], tokenize="none",
                                 smooth_method="none", force=True)


def compound_split_bleu(hyps: Sequence[str], refs: Sequence[str]):
    return tokenized_bleu([compound_split(h) for h in hyps], [compound_split(r) for r in refs])


def detok_sacrebleu(hyps_detok: Sequence[str], refs_raw: Sequence[str]):
    """(score, signature) of sacreBLEU's defaults."""
    from sacrebleu.metrics import BLEU

    if len(hyps_detok) != len(refs_raw):
        raise ScoreError(
            f"{len(hyps_detok)} hypotheses but {len(refs_raw)} lines in the detokenised reference"
        )
    metric = BLEU()
    score = metric.corpus_score(list(hyps_detok), [list(refs_raw)])
    return score, str(metric.get_signature())


def bleu_dict(score) -> dict:
    return {
        "bleu": round(score.score, 2),
        "precisions": [round(p, 1) for p in score.precisions],
        "bp": round(score.bp, 3),
        "sys_len": score.sys_len,
        "ref_len": score.ref_len,
        "text": str(score),
    }


def score(generate: str, lang: str, detok_ref: Optional[str]) -> dict:
    hyps, refs = read_generate_output(generate)
    result = {"sentences": len(hyps), "tokenized_compound_split": bleu_dict(compound_split_bleu(hyps, refs)),
              "tokenized": bleu_dict(tokenized_bleu(hyps, refs))}
    if detok_ref:
        from examples.translation.moses_text import detokenizer

        detok = detokenizer(lang)
        with open(detok_ref, encoding="utf-8", newline="\n") as f:
            refs_raw = f.read().split("\n")
        if refs_raw and refs_raw[-1] == "":
            refs_raw.pop()
        sb, signature = detok_sacrebleu([detok(h) for h in hyps], refs_raw)
        result["detokenized_sacrebleu"] = dict(bleu_dict(sb), signature=signature)
    return result


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--generate", required=True, help="fairseq-generate output (generate-test.txt)")
    parser.add_argument("--lang", required=True, help="target language (for detokenisation)")
    parser.add_argument("--detok-ref", help="raw reference text, one segment a line (sgm.py sacrebleu)")
    parser.add_argument("--json", help="also write the scores here")
    args = parser.parse_args(argv)
    try:
        result = score(args.generate, args.lang, args.detok_ref)
    except (ScoreError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    cs = result["tokenized_compound_split"]
    print(f"tokenised BLEU, compound split ({result['sentences']} sentences): {cs['text']}")
    if "detokenized_sacrebleu" in result:
        sb = result["detokenized_sacrebleu"]
        print(f"detokenised sacreBLEU: {sb['bleu']:.2f}  {sb['signature']}")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(result, f, indent=2, ensure_ascii=False)
            f.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
