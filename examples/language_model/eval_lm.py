"""The language-model demo's test set scored: a run's best checkpoint evaluated with
``fairseq-eval-lm`` (perplexity with a context window, and every test token's log-probability
for the paired bootstrap), a resumable stage per run and seed, keyed on the checkpoint.
"""

import math
import os
import re

from examples.common.base import USER_DIR, DemoError, device_flags, display, run_tool, say
from examples.common.stages import dir_stage, fairseq_command, read_json, sha256_file, stage_key

# one line of fairseq's eval_lm logger ("%(asctime)s | %(levelname)s | %(name)s | %(message)s")
# fairseq's own format where it sets up logging, Python's default ("INFO:fairseq_cli.eval_lm:...")
# where logging was configured before (as when fairseq-eval-lm runs with --user-dir)
_EVAL_LM_LINE = re.compile(r"(?:\|\s*fairseq_cli\.eval_lm\s*\|\s|^[A-Z]+:fairseq_cli\.eval_lm:)(.*)$")
# a --output-word-probs message: "<sample id> <word> [<log-prob>]\t<word> [<log-prob>]..."
_WORD_PROBS_MESSAGE = re.compile(r"(\d+) (.* \[[^\[\]]*\])")
_WORD_PROB = re.compile(r"(.*) \[([^\[\]]*)\]")


def evaluate(save_dir, data_bin, tokens, max_tokens, seed, threads, label, test_tokens):
    """Test perplexity of the best checkpoint in ``save_dir`` with ``fairseq-eval-lm`` (blocks of
    ``tokens``, ``max_tokens`` a batch; ``label``: "rdrop seed 1"), and every test token's
    log-probability (``--output-word-probs``, kept in ``test/eval-lm.txt``).

    ``test_tokens``: the test set's words plus one end of sentence per line, all
    of which must be scored.
    """
    ckpt = os.path.join(save_dir, "checkpoint_best.pt")
    context = tokens // 2
    key = stage_key(ckpt=sha256_file(ckpt), tokens=tokens, context=context, word_probs=True)
    cmd = fairseq_command("eval-lm") + [
        data_bin, "--path", ckpt, "--gen-subset", "test", "--tokens-per-sample", str(tokens),
        "--context-window", str(context), "--max-tokens", str(max_tokens), "--num-workers", "0",
        # fairseq 0.12 drops the last batch when its size is no multiple of this (default 8)
        "--required-batch-size-multiple", "1", "--output-word-probs",
        "--user-dir", USER_DIR, "--seed", str(seed),
    ]  # fmt: skip
    cmd += device_flags()

    def build(tmp):
        output = run_tool(cmd, threads, f"fairseq-eval-lm ({label})")
        m = re.search(r"Loss \(base 2\): ([\d.]+), Perplexity: ([\d.]+)", output)
        if not m:
            raise DemoError(f"fairseq-eval-lm ({label}) printed no perplexity:\n{output[-3000:]}")
        scored = re.search(r"Evaluated ([\d,]+) tokens", output)
        if not scored or int(scored.group(1).replace(",", "")) != test_tokens:
            raise DemoError(f"fairseq-eval-lm ({label}) scored {scored and scored.group(1)} tokens of the "
                            f"test set's {test_tokens}:\n{output[-3000:]}")
        with open(os.path.join(tmp, "eval-lm.txt"), "w", encoding="utf-8") as f:
            f.write(output)
        return {"test_loss": float(m.group(1)), "test_ppl": float(m.group(2)),
                "context_window": context, "tokens_per_sample": tokens, "command": display(cmd)}

    out_dir = os.path.join(save_dir, "test")
    dir_stage(f"eval-lm {label}", out_dir, key, build, f"context window {context} on the test set", log=say)
    return dict(read_json(os.path.join(out_dir, ".stage.json")), output=os.path.join(out_dir, "eval-lm.txt"))


def read_word_logprobs(text):
    """The per-token log-probabilities in ``fairseq-eval-lm --output-word-probs`` output, in the
    order printed (fairseq's batches': compare only runs of the same data and batching).

    fairseq 0.12 logs one line per sample: ``... | fairseq_cli.eval_lm | <sample id> <word> [<lp>]\\t...``.
    The values are natural logs (the model's ``log_softmax``; only the summary "Loss (base 2)" is
    base 2), one per target token with ``</s>``; with ``--post-process`` a word's ``@@`` pieces are
    summed into one value, as fairseq's perplexity counts them.  Tokens of infinite log-prob, which
    fairseq drops from its totals and word list, cannot be recognised here.  Raises ``ValueError``
    for text without word probabilities or with a malformed or non-finite value.
    """
    logprobs = []
    for lineno, line in enumerate(text.splitlines(), 1):
        logged = _EVAL_LM_LINE.search(line)
        message = _WORD_PROBS_MESSAGE.fullmatch(logged.group(1).rstrip()) if logged else None
        if not message:
            continue
        for field in message.group(2).split("\t"):
            m = _WORD_PROB.fullmatch(field)
            try:
                value = float(m.group(2)) if m else math.nan
            except ValueError:
                value = math.nan
            if not math.isfinite(value):
                raise ValueError(f"line {lineno}: no finite log-probability in word entry {field!r}")
            logprobs.append(value)
    if not logprobs:
        raise ValueError(
            "no word probabilities found: expected lines of 'fairseq-eval-lm --output-word-probs' "
            "('... | fairseq_cli.eval_lm | <sample id> <word> [<log-prob>]\\t...')")
    return logprobs
