"""Train-step benchmark: a real fairseq step with R-Drop vs the floor.

The floor is the stock criterion on the *same doubled batch* (R-Drop has to run
the model on twice the tokens; whatever a R-Drop criterion costs on top of that
is overhead).  Entries:

  floor     stock label_smoothed_cross_entropy (cross_entropy for LMs, adaptive_loss
            for adaptive-softmax LMs) on [x; x]
  rdrop     ours, default settings (fused output layer where the model allows; for
            an adaptive softmax the head KL)
  unfused   ours with --rdrop-no-fused (log-probabilities, then the loss)
  upstream  fairseq's label_smoothed_cross_entropy_with_rdrop (translation only)
  full      adaptive softmax: ours with --rdrop-adaptive-kl full (fused)
  full-unfused  the same with --rdrop-no-fused

The adaptive-softmax configurations draw their words from a Zipf distribution
(frequency proportional to 1 / rank, ranks = word ids), as real text does: the
head holds most targets and the tail clusters the rarer words.

A step is: forward, loss, backward, Adam update.  Method: see harness.py.

    python -m benchmarks.train_step_bench            # full run, writes results/
    python -m benchmarks.train_step_bench --quick    # one repetition, smaller set
"""

import argparse

from benchmarks import harness

CONFIGS = {
    "iwslt-8k": dict(kind="translation", arch="transformer_iwslt_de_en", vocab=8000),
    "iwslt-32k": dict(kind="translation", arch="transformer_iwslt_de_en", vocab=32000),
    "lm-32k": dict(kind="lm", arch="transformer_lm", vocab=32000,
                   overrides=dict(decoder_layers=6, decoder_embed_dim=512,
                                  decoder_ffn_embed_dim=2048, decoder_attention_heads=8)),
    # the LM demo's model on PTB (10k words, the architecture's cutoffs 2000,6000)
    "adaptive-ptb": dict(kind="adaptive", arch="rdrop_transformer_lm_adaptive_small", vocab=10004,
                         overrides=dict(decoder_layers=2, decoder_embed_dim=128, decoder_ffn_embed_dim=512,
                                        decoder_attention_heads=4)),
    # the same at a 30k vocabulary, cutoffs at 20 % and 60 % (as the LM demo scales them)
    "adaptive-30k": dict(kind="adaptive", arch="rdrop_transformer_lm_adaptive_small", vocab=30000,
                         cutoff="6000,18000",
                         overrides=dict(decoder_layers=2, decoder_embed_dim=128, decoder_ffn_embed_dim=512,
                                        decoder_attention_heads=4)),
    # the WikiText-103 Adaptive recipe's model (267,744 words, cutoffs 20000,60000) in bf16; a
    # smaller batch than the others (a CPU step takes long enough as it is); no full-unfused
    # entry ([2 x 512, 267,744] float32 log-probabilities and their gradients)
    "adaptive-wiki103": dict(kind="adaptive", arch="rdrop_transformer_lm_wiki103", vocab=267744,
                             dtype="bf16", tokens_per_copy=512,
                             entries=["floor", "rdrop", "unfused", "full"]),
}
ENTRIES = {"translation": ["floor", "rdrop", "unfused", "upstream"],
           "lm": ["floor", "rdrop", "unfused"],
           "adaptive": ["floor", "rdrop", "unfused", "full", "full-unfused"]}
TOKENS_PER_COPY = 2048
SEQ_LEN = 32


# ---- worker ----------------------------------------------------------------
def _dictionary(vocab):
    from fairseq.data import Dictionary

    d = Dictionary()
    for i in range(vocab - d.nspecial):
        d.add_symbol(f"w{i}")
    d.finalize(padding_factor=1)
    return d


def _translation_setup(cfg, batch_size, dropout):
    import argparse as ap

    import torch
    from fairseq.models import ARCH_CONFIG_REGISTRY
    from fairseq.models.transformer import TransformerModel
    from fairseq.tasks.translation import TranslationConfig, TranslationTask

    d = _dictionary(cfg["vocab"])
    task = TranslationTask(TranslationConfig(), d, d)
    args = ap.Namespace(share_all_embeddings=True, dropout=dropout,
                        max_source_positions=1024, max_target_positions=1024)
    ARCH_CONFIG_REGISTRY[cfg["arch"]](args)
    model = TransformerModel.build_model(args, task)
    g = torch.Generator().manual_seed(0)
    tokens = lambda: torch.randint(d.nspecial, len(d), (batch_size, SEQ_LEN), generator=g)  # noqa: E731
    target = tokens()
    prev = torch.cat([torch.full((batch_size, 1), d.eos()), target[:, :-1]], 1)
    sample = {
        "net_input": {"src_tokens": tokens(),
                      "src_lengths": torch.full((batch_size,), SEQ_LEN),
                      "prev_output_tokens": prev},
        "target": target, "ntokens": target.numel(), "nsentences": batch_size,
    }
    return task, model, sample


def _lm_setup(cfg, batch_size, dropout):
    import argparse as ap

    import torch
    import rdrop_seq  # noqa: F401  (registers the rdrop_transformer_lm_* architectures)
    from fairseq.models import ARCH_CONFIG_REGISTRY
    from fairseq.models.transformer_lm import TransformerLanguageModel, base_lm_architecture
    from fairseq.tasks.language_modeling import LanguageModelingConfig, LanguageModelingTask

    d = _dictionary(cfg["vocab"])
    task = LanguageModelingTask(LanguageModelingConfig(), d, d)
    args = ap.Namespace(dropout=dropout, tokens_per_sample=1024, max_target_positions=1024,
                        **cfg.get("overrides", {}))
    if "cutoff" in cfg:
        args.adaptive_input_cutoff = args.adaptive_softmax_cutoff = cfg["cutoff"]
    # the model's own name registers no defaults-filling function: use fairseq's base
    (base_lm_architecture if cfg["arch"] == "transformer_lm" else ARCH_CONFIG_REGISTRY[cfg["arch"]])(args)
    model = TransformerLanguageModel.build_model(args, task)
    g = torch.Generator().manual_seed(0)
    if cfg["kind"] == "adaptive":  # Zipf: word id w (rank w - nspecial + 1) with weight 1 / rank
        weights = 1.0 / torch.arange(1, len(d) - d.nspecial + 1, dtype=torch.float64)
        draws = torch.multinomial(weights, batch_size * (SEQ_LEN + 1), replacement=True, generator=g)
        seq = (draws + d.nspecial).view(batch_size, SEQ_LEN + 1)
    else:
        seq = torch.randint(d.nspecial, len(d), (batch_size, SEQ_LEN + 1), generator=g)
    sample = {
        "net_input": {"src_tokens": seq[:, :-1], "src_lengths": torch.full((batch_size,), SEQ_LEN)},
        "target": seq[:, 1:].contiguous(), "ntokens": batch_size * SEQ_LEN, "nsentences": batch_size,
    }
    return task, model, sample


def _criterion(kind, entry, task):
    import rdrop_seq  # noqa: F401
    from fairseq.criterions import CRITERION_REGISTRY

    if kind == "translation":
        if entry == "floor":
            return CRITERION_REGISTRY["label_smoothed_cross_entropy"](task, False, 0.1)
        if entry == "upstream":
            return CRITERION_REGISTRY["label_smoothed_cross_entropy_with_rdrop"](
                task, False, 0.1, rdrop_alpha=5.0)
        name, kw = "rdrop_label_smoothed_cross_entropy", dict(label_smoothing=0.1, rdrop_alpha=5.0)
    elif kind == "adaptive":
        if entry == "floor":
            return CRITERION_REGISTRY["adaptive_loss"](task, False)
        name = "rdrop_adaptive_loss"
        kw = dict(rdrop_alpha=1.0, rdrop_adaptive_kl="full" if entry.startswith("full") else "head")
        entry = "unfused" if entry.endswith("unfused") else "rdrop"
    else:
        if entry == "floor":
            return CRITERION_REGISTRY["cross_entropy"](task, False)
        name, kw = "rdrop_cross_entropy", dict(rdrop_alpha=1.0)
    if name not in CRITERION_REGISTRY:
        raise SystemExit(f"criterion {name} is not available")
    cls = CRITERION_REGISTRY[name]
    import inspect

    params = inspect.signature(cls.__init__).parameters
    # criterions that take their dataclass as ``cfg`` read their flags from it
    config_cls = getattr(cls, "__dataclass") if "cfg" in params else None
    flags = config_cls.__dataclass_fields__ if config_cls is not None else params
    if "rdrop_no_fused" in flags:
        kw["rdrop_no_fused"] = entry == "unfused"
    elif entry == "unfused":
        raise SystemExit("this version has no --rdrop-no-fused")
    if config_cls is not None:
        crit = cls(config_cls(sentence_avg=False, **kw), task)
    else:
        crit = cls(task, sentence_avg=False, **kw)
    crit.set_num_updates(0)
    return crit


def run_entry(spec):
    import torch

    torch.set_num_threads(spec["threads"])
    torch.manual_seed(0)
    cfg = CONFIGS[spec["config"]]
    entry = spec["entry"]
    batch = tokens_per_copy(cfg) // SEQ_LEN
    setup = _translation_setup if cfg["kind"] == "translation" else _lm_setup
    # the floor sees the doubled batch; R-Drop entries duplicate it themselves
    task, model, sample = setup(cfg, 2 * batch if entry == "floor" else batch, spec["dropout"])
    device = spec["device"]
    model.to(device).train()
    if cfg.get("dtype") == "bf16":
        model.bfloat16()
    sample = {k: ({kk: vv.to(device) for kk, vv in v.items()} if isinstance(v, dict)
                  else v.to(device) if torch.is_tensor(v) else v) for k, v in sample.items()}
    crit = _criterion(cfg["kind"], entry, task).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)

    def step():
        opt.zero_grad(set_to_none=True)
        # upstream's criterion rewrites sample["net_input"] in place: give it a fresh dict
        s = dict(sample, net_input=dict(sample["net_input"]))
        loss, _, _ = crit(model, s)
        loss.backward()
        opt.step()

    result = harness.measure_step(step, device, spec["mode"], spec["warmup"], spec["steps"])
    result["target_tokens"] = 2 * tokens_per_copy(cfg)
    return result


def tokens_per_copy(cfg):
    return cfg.get("tokens_per_copy", TOKENS_PER_COPY)


# ---- driver ----------------------------------------------------------------
def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    harness.add_timing_arguments(parser, warmup=2, quick_help="1 repetition, 1 timed step")
    parser.add_argument("--dropout", type=float, default=0.3)
    parser.add_argument("--entries", nargs="+", default=None,
                        help="only these entries of each configuration (the floor is always run)")
    args = parser.parse_args()
    harness.apply_quick(args)

    all_results, rows = {}, []
    for name in args.configs:
        cfg = CONFIGS[name]
        entries = cfg.get("entries", ENTRIES[cfg["kind"]])
        if args.entries:
            entries = ["floor"] + [e for e in entries if e in args.entries and e != "floor"]
        print(f"{name}: {cfg['arch']}, V={cfg['vocab']}, 2 x {tokens_per_copy(cfg)} target tokens"
              + (f", {cfg['dtype']}" if "dtype" in cfg else ""), flush=True)
        spec = dict(config=name, threads=args.threads, dropout=args.dropout,
                    warmup=args.warmup, steps=args.steps)
        res = harness.add_ratios(harness.measure_entries(
            "benchmarks.train_step_bench", spec, entries, args.reps, args.device))
        for entry, r in res.items():
            r["tokens_per_second"] = round(2 * tokens_per_copy(cfg) / r["seconds"], 1)
            rows.append([name, entry, f"{r['seconds']:.3f}", f"{r['step_time_ratio']:.2f}x",
                         f"{r['peak_bytes'] / 2**20:.0f}", f"{r['step_mem_ratio']:.2f}x",
                         f"{r['tokens_per_second']:.0f}"])
        all_results[name] = dict(cfg, tokens_per_copy=tokens_per_copy(cfg), entries=res)
        # written after every configuration, so a later failure loses nothing
        table = harness.markdown_table(
            rows, ["config", "entry", "step s", "time vs floor", "peak MiB", "mem vs floor",
                   "tokens/s"])
        stem = harness.write_results(
            "train-step" + (f"-{args.label}" if args.label else ""), args.device,
            dict(configs=all_results, reps=args.reps, steps=args.steps, threads=args.threads,
                 dropout=args.dropout), table)
    print(table)
    harness.report_written(stem)


if __name__ == "__main__":
    harness.driver_or_worker(main, run_entry)
