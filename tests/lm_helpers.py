"""Tiny real fairseq language models, batches and criterions for the LM criterion tests.

An Adaptive Transformer whose dictionary has exactly ``CUTOFF[-1]`` entries, so
that the adaptive softmax has a head and two tail clusters; batches with
padding, words of every cluster and, where asked, the pad collision (a real
word whose in-cluster index equals the pad index); fairseq's recurrent and
convolutional LMs; the two LM criterions built from their dataclasses.
"""

from argparse import Namespace

import torch
from fairseq.data import Dictionary
from fairseq.models import ARCH_CONFIG_REGISTRY
from fairseq.models.transformer_lm import TransformerLanguageModel, base_lm_architecture
from fairseq.tasks.language_modeling import LanguageModelingConfig, LanguageModelingTask

import rdrop_seq  # noqa: F401  (registers criterions and architectures)
from rdrop_seq.criterions.rdrop_adaptive_loss import RDropAdaptiveLoss
from rdrop_seq.criterions.rdrop_cross_entropy import RDropCrossEntropyCriterion
from tests.fairseq_helpers import build_from_dataclass

PAD = 1
CUTOFF = [6, 13, 21]  # head: words 0..5 + 2 clusters; tails 6..12 and 13..20

WORDS = CUTOFF[-1] - 4  # a dictionary of exactly CUTOFF[-1] entries (4 specials)


def lm_task():
    d = Dictionary()
    for i in range(WORDS):
        d.add_symbol(f"w{i}")
    d.finalize(padding_factor=1)
    assert len(d) == CUTOFF[-1] and d.pad() == PAD
    return LanguageModelingTask(LanguageModelingConfig(), d)


def lm_model(task, arch="rdrop_transformer_lm_adaptive_small", seed=0, **overrides):
    args = Namespace(
        arch=arch, decoder_layers=1, decoder_embed_dim=16, decoder_ffn_embed_dim=32,
        decoder_attention_heads=2, tokens_per_sample=32, max_target_positions=None,
        dropout=0.3, attention_dropout=0.1, activation_dropout=0.1,
    )
    if arch != "transformer_lm":
        args.adaptive_input_cutoff = args.adaptive_softmax_cutoff = ",".join(
            map(str, CUTOFF[:-1])
        )
        args.adaptive_input_factor = args.adaptive_softmax_factor = 2
    for k, v in overrides.items():
        setattr(args, k, v)
    if arch == "transformer_lm":
        base_lm_architecture(args)  # the plain (full-softmax) Transformer LM
    else:
        ARCH_CONFIG_REGISTRY[arch](args)
    torch.manual_seed(seed)
    return TransformerLanguageModel.build_model(args, task)


def lm_batch(words, lengths):
    """A collated language-modelling sample: right-padded, target = next word."""
    b, t = len(lengths), max(lengths)
    src = torch.full((b, t), PAD, dtype=torch.long)
    tgt = torch.full((b, t), PAD, dtype=torch.long)
    it = iter(words)
    for row, n in enumerate(lengths):
        seq = torch.tensor([next(it) for _ in range(n + 1)])
        src[row, :n] = seq[:-1]
        tgt[row, :n] = seq[1:]
    return {
        "id": torch.arange(b),
        "nsentences": b,
        "ntokens": int(sum(lengths)),
        "net_input": {"src_tokens": src, "src_lengths": torch.tensor(lengths)},
        "target": tgt,
    }


def random_lm_batch(seed, collide):
    g = torch.Generator().manual_seed(seed)
    lengths = [9, 6, 8, 4]
    words = torch.randint(4, CUTOFF[-1], (sum(lengths) + len(lengths),), generator=g).tolist()
    collided = {c + PAD for c in CUTOFF[:-1]}
    words = [w + 1 if w in collided else w for w in words]  # none by chance
    # words of every cluster at target positions (index 1 is a target of row 0)
    words[1:4] = [4, CUTOFF[0] + 3, CUTOFF[1] + 3]
    if collide:
        words[4:6] = sorted(collided)
    sample = lm_batch(words, lengths)
    assert sample["target"].eq(PAD).any()
    hits = set(sample["target"].view(-1).tolist())
    assert collided <= hits if collide else not (collided & hits)
    return sample


def adaptive_criterion(task, mode="full", **kw):
    args = dict(sentence_avg=False, rdrop_adaptive_kl=mode, rdrop_alpha=1.0, rdrop_passes=2)
    args.update(kw)
    crit = build_from_dataclass(RDropAdaptiveLoss, task, **args)
    crit.set_num_updates(0)
    return crit


def ce_criterion(task, **kw):
    crit = build_from_dataclass(RDropCrossEntropyCriterion, task, sentence_avg=False, **kw)
    crit.set_num_updates(0)
    return crit


class Capture:
    """Scores an adaptive softmax computes during one forward (grads retained)."""

    def __init__(self, asm):
        self.head, self.tails = [], [[] for _ in asm.tail]
        self.handles = [asm.head.register_forward_hook(self._keep(self.head))]
        for i, tail in enumerate(asm.tail):
            self.handles.append(tail.register_forward_hook(self._keep(self.tails[i])))

    @staticmethod
    def _keep(store):
        def hook(_module, _inp, out):
            if out.requires_grad:
                out.retain_grad()
            store.append(out)
        return hook

    def remove(self):
        for h in self.handles:
            h.remove()


def other_lm(task, arch, **overrides):
    """fairseq's recurrent and convolutional LMs (no transformer decoder: the logits path)."""
    from fairseq.models import ARCH_MODEL_REGISTRY

    args = Namespace(arch=arch, decoder_embed_dim=16, decoder_out_embed_dim=16, decoder_hidden_size=16,
                     dropout=0.3, tokens_per_sample=32, max_target_positions=None,
                     criterion="rdrop_adaptive_loss", **overrides)
    ARCH_CONFIG_REGISTRY[arch](args)
    torch.manual_seed(0)
    return ARCH_MODEL_REGISTRY[arch].build_model(args, task)


OTHER_LMS = {"lstm_lm": {}, "fconv_lm": {"decoder_layers": "[(16, 3)] * 2"}}
