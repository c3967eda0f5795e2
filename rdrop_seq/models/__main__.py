"""``python -m rdrop_seq.models --param-counts``: parameter counts of the architectures.

Each architecture is built with its default settings and a dictionary of the
size it is meant for (WikiText-103's 267,744 entries, Penn Treebank's 10,008,
as ``fairseq-preprocess`` makes them); ``--vocab ARCH=SIZE`` changes one.
Tied weights are counted once.
"""

import argparse
import sys
from argparse import Namespace
from types import SimpleNamespace

VOCAB_SIZES = {
    "rdrop_transformer_lm_wiki103": 267744,
    "rdrop_transformer_lm_adaptive_small": 10008,
}


def build(arch: str, vocab_size: int, **overrides):
    """A ``transformer_lm`` with ``arch``'s defaults over a ``vocab_size`` dictionary."""
    import torch
    from fairseq.data import Dictionary
    from fairseq.models import ARCH_CONFIG_REGISTRY
    from fairseq.models.transformer_lm import TransformerLanguageModel

    import rdrop_seq  # noqa: F401  (registers the architectures)

    d = Dictionary()
    for i in range(vocab_size - d.nspecial):
        d.add_symbol(str(i))
    d.finalize(padding_factor=1)
    assert len(d) == vocab_size, (len(d), vocab_size)
    args = Namespace(arch=arch, tokens_per_sample=512, max_target_positions=None, **overrides)
    ARCH_CONFIG_REGISTRY[arch](args)
    task = SimpleNamespace(source_dictionary=d, target_dictionary=d)
    torch.manual_seed(0)
    return TransformerLanguageModel.build_model(args, task), args


def count(model):
    """(total, embedding-and-softmax, transformer layers): unique parameters."""
    seen, total, embed = set(), 0, 0
    for name, p in model.named_parameters():
        if id(p) in seen:
            continue
        seen.add(id(p))
        total += p.numel()
        if "embed_tokens" in name or "adaptive_softmax" in name:
            embed += p.numel()
    return total, embed, total - embed


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m rdrop_seq.models", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--param-counts", action="store_true",
                        help="print each architecture's parameter count")
    parser.add_argument("--vocab", action="append", default=[], metavar="ARCH=SIZE",
                        help="dictionary size to build ARCH with")
    args = parser.parse_args(argv)
    if not args.param_counts:
        parser.print_help()
        return 0
    sizes = dict(VOCAB_SIZES)
    for item in args.vocab:
        arch, _, size = item.partition("=")
        if arch not in sizes or not size.isdigit():
            parser.error(f"--vocab {item}: expected ARCH=SIZE with ARCH one of {', '.join(sizes)}")
        sizes[arch] = int(size)
    print(f"{'architecture':38s} {'vocab':>8s} {'params':>13s} {'embed+softmax':>14s} "
          f"{'layers':>12s}  shape")
    for arch, vocab in sizes.items():
        model, a = build(arch, vocab)
        total, embed, body = count(model)
        shape = (f"{a.decoder_layers}x{a.decoder_embed_dim}d ffn {a.decoder_ffn_embed_dim} "
                 f"cutoff {a.adaptive_softmax_cutoff}")
        print(f"{arch:38s} {vocab:8,d} {total:13,d} {embed:14,d} {body:12,d}  {shape}")
        del model
    return 0


if __name__ == "__main__":
    sys.exit(main())
