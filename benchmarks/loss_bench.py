"""Loss-level benchmark: the output layer + R-Drop loss, forward and backward.

For ``m = 2`` copies of ``N`` target positions (hidden states ``[2N, H]``, output
projection ``[V, H]``), one step is: logits, loss, ``backward()`` to the hidden
states and the weight.  Entries:

  floor     stock: logits = hidden @ W.T, float32 log_softmax, fairseq's
            label_smoothed_nll_loss on the doubled batch (no KL at all)
  upstream  floor + fairseq's own R-Drop KL (``compute_kl_loss`` of
            label_smoothed_cross_entropy_with_rdrop: kl_div on log-probs and
            probs, each normalised again, as the official implementation does)
  unfused   ours on log-probs: rdrop_seq.losses.rdrop_label_smoothed_loss
  fused     ours from the hidden states: rdrop_seq.fused.fused_linear_rdrop_loss
  chunked   ours from the logits: rdrop_seq.fused.chunked_rdrop_loss

Method (see harness.py): each measurement in its own process, entries A/B
alternating, median over repetitions.  Time: default allocator, median of the
timed steps after warm-up.  Memory (CPU): peak RSS over one step after warm-up
(``/proc/self/clear_refs`` then ``VmHWM``) with ``MALLOC_MMAP_THRESHOLD_=65536``;
reported both as the absolute peak and as the step's own peak (peak minus the
RSS before the step, which holds the interpreter, libraries and inputs), the
ratio being taken on the latter.  On CUDA: ``max_memory_allocated`` minus
``memory_allocated`` before the step.

    python -m benchmarks.loss_bench            # full run, writes results/loss-<device>-<date>.json
    python -m benchmarks.loss_bench --quick    # one repetition, small sizes
"""

import argparse

from benchmarks import harness

ENTRIES = ["floor", "upstream", "unfused", "fused", "chunked"]
PAD = 1


# ---- worker ----------------------------------------------------------------
class _Decoder:
    """The one method of a fairseq model that the upstream KL code calls."""

    @staticmethod
    def get_normalized_probs(net_output, log_probs, sample=None):
        import torch
        import torch.nn.functional as F

        norm = F.log_softmax if log_probs else F.softmax
        return norm(net_output[0], dim=-1, dtype=torch.float32)


def _inputs(spec):
    import torch

    g = torch.Generator().manual_seed(0)
    n, h, v = spec["n"], spec["hidden"], spec["vocab"]
    dtype = getattr(torch, spec["dtype"])
    base = torch.randn(n, h, generator=g)
    # the two dropout copies: close, not equal
    hidden = torch.cat([base, base + 0.3 * torch.randn(n, h, generator=g)]) * 2.0
    weight = torch.randn(v, h, generator=g) / h ** 0.5
    target = torch.randint(PAD + 1, v, (n,), generator=g)
    target[torch.rand(n, generator=g) < spec["pad_fraction"]] = PAD
    device = spec["device"]
    hidden = hidden.to(device=device, dtype=dtype).requires_grad_()
    weight = weight.to(device=device, dtype=dtype).requires_grad_()
    return hidden, weight, target.to(device)


def _step_fn(spec, hidden, weight, target):
    import torch
    import torch.nn.functional as F

    entry, eps, alpha = spec["entry"], spec["epsilon"], spec["alpha"]
    n = target.numel()
    target2 = target.repeat(2)

    if entry in ("floor", "upstream"):
        from fairseq.criterions.label_smoothed_cross_entropy import label_smoothed_nll_loss

        def loss_fn():
            logits = F.linear(hidden, weight)
            lprobs = F.log_softmax(logits, dim=-1, dtype=torch.float32)
            loss, _ = label_smoothed_nll_loss(lprobs, target2, eps, ignore_index=PAD)
            if entry == "upstream":
                from fairseq.criterions.label_smoothed_cross_entropy_with_rdrop import (
                    compute_kl_loss,
                )

                pad_mask = target2[:n].unsqueeze(-1).eq(PAD)
                loss = loss + alpha * compute_kl_loss(_Decoder, (logits,), pad_mask)
            return loss
    elif entry == "unfused":
        from rdrop_seq.losses import rdrop_label_smoothed_loss

        def loss_fn():
            lprobs = F.log_softmax(F.linear(hidden, weight), dim=-1, dtype=torch.float32)
            return rdrop_label_smoothed_loss(lprobs, target, eps, alpha, 2, PAD).loss
    elif entry == "fused":
        from rdrop_seq.fused import fused_linear_rdrop_loss

        def loss_fn():
            return fused_linear_rdrop_loss(
                hidden, weight, target, epsilon=eps, alpha=alpha, passes=2,
                ignore_index=PAD, chunk_size=spec.get("chunk_size")).loss
    elif entry == "chunked":
        from rdrop_seq.fused import chunked_rdrop_loss

        def loss_fn():
            return chunked_rdrop_loss(
                F.linear(hidden, weight), target, epsilon=eps, alpha=alpha, passes=2,
                ignore_index=PAD, chunk_size=spec.get("chunk_size")).loss
    else:
        raise ValueError(entry)

    def step():
        hidden.grad = None
        weight.grad = None
        loss_fn().backward()

    return step


def run_entry(spec):
    import torch

    torch.set_num_threads(spec["threads"])
    device = spec["device"]
    hidden, weight, target = _inputs(spec)
    step = _step_fn(spec, hidden, weight, target)
    return harness.measure_step(step, device, spec["mode"], spec["warmup"], spec["steps"])


# ---- driver ----------------------------------------------------------------
LOSS_RATIOS = {"time_ratio": "seconds", "step_mem_ratio": "step_bytes",
               "peak_mem_ratio": "peak_bytes"}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=2048, help="target positions per copy")
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--vocabs", type=int, nargs="+", default=[8000, 32000])
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--epsilon", type=float, default=0.1)
    parser.add_argument("--alpha", type=float, default=5.0)
    parser.add_argument("--pad-fraction", type=float, default=0.0)
    parser.add_argument("--entries", nargs="+", default=ENTRIES, choices=ENTRIES)
    parser.add_argument("--chunk-size", type=int, default=None)
    harness.add_timing_arguments(parser, warmup=1,
                                 quick_help="1 repetition, 1 timed step, N=512, V in {8000}")
    args = parser.parse_args()
    if harness.apply_quick(args):
        args.n, args.vocabs = 512, [8000]
    entries = ["floor"] + [e for e in args.entries if e != "floor"]

    all_results, rows = {}, []
    for vocab in args.vocabs:
        print(f"V={vocab}: N=2 x {args.n}, H={args.hidden}, {args.dtype}, "
              f"eps={args.epsilon}, alpha={args.alpha}", flush=True)
        config = dict(n=args.n, hidden=args.hidden, vocab=vocab, dtype=args.dtype,
                      epsilon=args.epsilon, alpha=args.alpha, pad_fraction=args.pad_fraction,
                      chunk_size=args.chunk_size, threads=args.threads,
                      warmup=args.warmup, steps=args.steps)
        res = harness.add_ratios(
            harness.measure_entries("benchmarks.loss_bench", config, entries, args.reps,
                                    args.device),
            ratios=LOSS_RATIOS)
        for entry, r in res.items():
            rows.append([f"{args.n}x2", vocab, entry, f"{r['seconds']:.3f}",
                         f"{r['time_ratio']:.2f}x", f"{r['step_bytes'] / 2**20:.0f}",
                         f"{r['step_mem_ratio']:.2f}x", f"{r['peak_bytes'] / 2**20:.0f}",
                         f"{r['peak_mem_ratio']:.2f}x"])
        all_results[str(vocab)] = dict(config, entries=res)
    table = harness.markdown_table(
        rows, ["N", "V", "entry", "fwd+bwd s", "time vs floor", "step MiB",
               "step mem vs floor", "peak RSS MiB", "peak vs floor"])
    print(table)
    stem = harness.write_results(
        "loss" + (f"-{args.label}" if args.label else ""), args.device,
        dict(configs=all_results, reps=args.reps, steps=args.steps, threads=args.threads,
             entries=entries), table)
    harness.report_written(stem)


if __name__ == "__main__":
    harness.driver_or_worker(main, run_entry)
