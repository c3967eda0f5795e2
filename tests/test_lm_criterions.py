"""The language-model criterions and their pure math against float64 references.

``rdrop_cross_entropy`` (full softmax) and ``rdrop_adaptive_loss`` (adaptive
softmax, KL modes ``full`` and ``head``), on random scores and inside real
fairseq Adaptive Transformers, with padding, words in every tail cluster and
the pad collision (a real word whose in-cluster index equals the pad index).
"""

import copy
import math
from argparse import Namespace

import pytest
import torch
import torch.nn.functional as F

import rdrop_seq  # noqa: F401  (registers criterions and architectures)
from fairseq.criterions.adaptive_loss import AdaptiveLoss
from fairseq.criterions.cross_entropy import CrossEntropyCriterion
from fairseq.data import Dictionary
from fairseq.logging import metrics
from fairseq.models import ARCH_CONFIG_REGISTRY
from fairseq.models.transformer_lm import TransformerLanguageModel, base_lm_architecture
from fairseq.modules.adaptive_softmax import AdaptiveSoftmax
from fairseq.tasks.language_modeling import LanguageModelingConfig, LanguageModelingTask
from rdrop_seq.adaptive_kl import adaptive_head_kl, adaptive_log_probs, cluster_positions
from rdrop_seq.criterions.rdrop_adaptive_loss import RDropAdaptiveLoss
from rdrop_seq.criterions.rdrop_cross_entropy import RDropCrossEntropyCriterion
from rdrop_seq.losses import rdrop_cross_entropy_loss
from tests.conftest import DEVICES
from tests.fairseq_helpers import build_from_dataclass, check_step_against_reference, to_device
from tests.reference import random_batch, reference_rdrop_loss
from tests.reference_lm import (
    random_adaptive_batch,
    reference_adaptive_full,
    reference_adaptive_head,
    reference_full_log_probs,
)

PAD = 1
CUTOFF = [6, 13, 21]  # head: words 0..5 + 2 clusters; tails 6..12 and 13..20


# ---------------------------------------------------------------- pure math


def head_mode_inputs(head, tails, target, passes):
    """What the adaptive softmax scores for the stacked target in ``head`` mode."""
    positions = cluster_positions(target, CUTOFF)
    n = target.numel()
    rows = []
    for i, pos in enumerate(positions):
        if pos is None:
            rows.append(None)
            continue
        stacked = torch.cat([pos + c * n for c in range(passes)])
        rows.append(tails[i][stacked])
    return positions, rows


@pytest.mark.parametrize("passes", [2, 3])
@pytest.mark.parametrize("seed", [0, 1])
def test_head_kl_matches_reference_value_and_gradient(passes, seed):
    head, tails, target = random_adaptive_batch(passes, 14, CUTOFF, PAD, seed=seed)
    positions, tail_rows = head_mode_inputs(head, tails, target, passes)
    assert all(p is not None for p in positions), "every tail cluster must be hit"

    ours_head = head.float().requires_grad_()
    ours_tails = [r.float().requires_grad_() for r in tail_rows]
    kl = adaptive_head_kl(
        F.log_softmax(ours_head, -1),
        [F.log_softmax(r, -1) for r in ours_tails],
        positions,
        passes,
        mask=target.ne(PAD),
    )
    ref_head = head.clone().requires_grad_()
    ref_tails = [r.clone().requires_grad_() for r in tail_rows]
    _, _, ref_kl = reference_adaptive_head(ref_head, ref_tails, target, CUTOFF, 1.0, passes, PAD)
    assert kl.dtype == torch.float32 and kl > 0
    torch.testing.assert_close(kl.double(), ref_kl, rtol=1e-5, atol=1e-6)
    kl.backward()
    ref_kl.backward()
    torch.testing.assert_close(ours_head.grad.double(), ref_head.grad, rtol=1e-4, atol=1e-6)
    for ours, ref in zip(ours_tails, ref_tails):
        torch.testing.assert_close(ours.grad.double(), ref.grad, rtol=1e-4, atol=1e-6)
    # pad positions get no gradient in any copy
    pad_rows = target.eq(PAD).repeat(passes)
    assert ours_head.grad[pad_rows].abs().max() == 0


def test_head_kl_counts_the_word_that_collides_with_the_pad_index():
    passes = 2
    head, tails, target = random_adaptive_batch(passes, 12, CUTOFF, PAD, seed=3)
    positions, tail_rows = head_mode_inputs(head, tails, target, passes)
    per_position = adaptive_head_kl(
        F.log_softmax(head, -1),
        [F.log_softmax(r, -1) for r in tail_rows],
        positions,
        passes,
        mask=target.ne(PAD),
        reduce=False,
    )
    head_only = adaptive_head_kl(
        F.log_softmax(head, -1), [None, None], [None, None], passes,
        mask=target.ne(PAD), reduce=False,
    )
    for i in range(len(CUTOFF) - 1):
        (t,) = target.eq(CUTOFF[i] + PAD).nonzero(as_tuple=True)[0][:1].tolist()
        assert t in positions[i].tolist()
        # the collided word's tail KL is counted, on top of its head KL
        assert per_position[t] > head_only[t] + 1e-6
    assert (per_position[target.eq(PAD)] == 0).all()
    assert per_position.dtype == torch.float64  # float64 in, float64 out


@pytest.mark.parametrize("passes", [2, 3])
def test_full_mode_matches_reference_value_and_gradient(passes):
    alpha = 1.5
    head, tails, target = random_adaptive_batch(passes, 9, CUTOFF, PAD, seed=4)
    ours_in = [head.float().requires_grad_()] + [t.float().requires_grad_() for t in tails]
    lprobs = adaptive_log_probs(ours_in[0], ours_in[1:], CUTOFF)
    ours = rdrop_cross_entropy_loss(lprobs, target, alpha, passes, ignore_index=PAD)
    ref_in = [head.clone().requires_grad_()] + [t.clone().requires_grad_() for t in tails]
    ref_loss, ref_nll, ref_kl = reference_adaptive_full(
        ref_in[0], ref_in[1:], target, CUTOFF, alpha, passes, PAD
    )
    torch.testing.assert_close(ours.loss.double(), ref_loss, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ours.nll_loss.double(), ref_nll, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ours.kl.double(), ref_kl, rtol=1e-5, atol=1e-6)
    ours.loss.backward()
    ref_loss.backward()
    for a, b in zip(ours_in, ref_in):
        torch.testing.assert_close(a.grad.double(), b.grad, rtol=1e-4, atol=1e-6)


def test_full_log_probs_equal_reference_and_fairseqs_get_log_prob():
    head, tails, _ = random_adaptive_batch(1, 7, CUTOFF, PAD, seed=5)
    ours = adaptive_log_probs(head, tails, CUTOFF)
    torch.testing.assert_close(ours, reference_full_log_probs(head, tails, CUTOFF))
    assert torch.allclose(ours.exp().sum(-1), torch.ones(7, dtype=torch.float64))

    torch.manual_seed(0)
    asm = AdaptiveSoftmax(CUTOFF[-1], 16, CUTOFF[:-1], dropout=0.0, factor=2).eval()
    x = torch.randn(2, 5, 16)
    flat = x.view(-1, 16)
    with torch.no_grad():
        ours = adaptive_log_probs(asm.head(flat), [t(flat) for t in asm.tail], asm.cutoff)
        stock = asm.get_log_prob(x, None).view(-1, CUTOFF[-1])
    torch.testing.assert_close(ours, stock, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("passes", [2, 3])
def test_cross_entropy_loss_matches_reference_and_is_fairseqs_at_alpha_zero(passes):
    logits, target = random_batch(passes, n=13, vocab=11, pad=PAD, seed=passes)
    ours_in = logits.float().requires_grad_()
    ours = rdrop_cross_entropy_loss(F.log_softmax(ours_in, -1), target, 2.0, passes, PAD)
    ref_in = logits.clone().requires_grad_()
    ref_loss, ref_nll, ref_kl = reference_rdrop_loss(ref_in, target, 0.0, 2.0, passes, PAD)
    torch.testing.assert_close(ours.loss.double(), ref_loss, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ours.nll_loss.double(), ref_nll, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ours.kl.double(), ref_kl, rtol=1e-5, atol=1e-6)
    ours.loss.backward()
    ref_loss.backward()
    torch.testing.assert_close(ours_in.grad.double(), ref_in.grad, rtol=1e-4, atol=1e-6)

    lp = F.log_softmax(logits.float(), -1)
    zero = rdrop_cross_entropy_loss(lp, target, 0.0, passes, PAD)
    stock = F.nll_loss(lp, target.repeat(passes), ignore_index=PAD, reduction="sum")
    assert torch.equal(zero.loss, stock) and zero.kl == 0


def test_shape_errors_are_clear():
    head, tails, target = random_adaptive_batch(2, 8, CUTOFF, PAD, seed=6)
    with pytest.raises(ValueError, match="head has"):
        adaptive_log_probs(head[:, :-1], tails, CUTOFF)
    with pytest.raises(ValueError, match="tail 1"):
        adaptive_log_probs(head, [tails[0], tails[1][:, :-1]], CUTOFF)
    positions, rows = head_mode_inputs(head, tails, target, 2)
    with pytest.raises(ValueError, match="tail 0"):
        adaptive_head_kl(F.log_softmax(head, -1), [rows[0][:-1], rows[1]], positions, 2)
    with pytest.raises(ValueError, match="passes"):
        rdrop_cross_entropy_loss(F.log_softmax(head, -1), target, 1.0, 3, PAD)


# ------------------------------------------------------ inside fairseq models

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


def doubled(sample, passes=2):
    out = copy.deepcopy(sample)
    for k, v in out["net_input"].items():
        out["net_input"][k] = v.repeat(passes, *([1] * (v.dim() - 1)))
    out["target"] = sample["target"].repeat(passes, 1)
    out["ntokens"] = sample["ntokens"] * passes
    out["nsentences"] = sample["nsentences"] * passes
    return out


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


def grads(model):
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


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


@pytest.fixture()
def lm():
    task = lm_task()
    return task, lm_model(task)


@pytest.mark.parametrize("no_fused", [True, False])
@pytest.mark.parametrize("mode", ["full", "head"])
def test_adaptive_alpha_zero_equals_stock_adaptive_loss_on_the_doubled_batch(lm, mode, no_fused):
    """Bitwise with --rdrop-no-fused; the fused loss to float rounding."""
    task, model = lm
    sample = random_lm_batch(seed=1, collide=False)
    model.train()
    torch.manual_seed(7)
    loss, size, log = adaptive_criterion(task, mode, rdrop_alpha=0.0, rdrop_no_fused=no_fused)(model, sample)
    loss.backward()
    ours = grads(model)
    model.zero_grad()
    torch.manual_seed(7)
    s_loss, s_size, s_log = AdaptiveLoss(task, False)(model, doubled(sample))
    s_loss.backward()
    same = torch.equal if no_fused else (lambda a, b: torch.allclose(a, b, rtol=1e-5, atol=1e-6))
    assert same(loss, s_loss.view(())), (loss, s_loss)
    assert same(log["nll_loss"], s_log["loss"].view(()))
    assert size == sample["target"].ne(PAD).sum() and s_size == 2 * size
    assert log["copies_ntokens"] == s_log["ntokens"]
    stock = grads(model)
    assert ours.keys() == stock.keys()
    for name, g in stock.items():
        assert same(ours[name], g), name


def test_stock_adaptive_loss_drops_the_word_colliding_with_pad_and_we_do_not(lm):
    task, model = lm
    sample = random_lm_batch(seed=2, collide=True)
    model.eval()  # deterministic, single pass: the scores both criterions see
    asm = model.decoder.adaptive_softmax
    with torch.no_grad():
        cap = Capture(asm)
        loss, _, log = adaptive_criterion(task, "head")(model, sample)
        cap.remove()
        s_loss, _, _ = AdaptiveLoss(task, False)(model, sample)
        target = sample["target"].view(-1)
        _, ref_nll, _ = reference_adaptive_head(
            cap.head[0].double(), [t[0].double() for t in cap.tails], target, asm.cutoff, 0.0, 1, PAD
        )
        # what fairseq-eval-lm scores: the model's full-vocabulary log-probabilities
        lprobs = model.get_normalized_probs(model(**sample["net_input"]), log_probs=True)
        eval_nll = -lprobs.view(-1, lprobs.size(-1)).gather(1, target[:, None])[target.ne(PAD)].sum()
    torch.testing.assert_close(loss.double(), ref_nll, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(loss, eval_nll, rtol=1e-5, atol=1e-5)
    assert s_loss.item() < loss.item() - 1e-3  # stock ignored the collided tail terms


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("mode", ["full", "head"])
@pytest.mark.parametrize(
    "passes, divergence", [(2, "sym-kl"), (3, "sym-kl"), (2, "js"), (3, "js"), (2, "kl-detached")]
)
def test_adaptive_loss_and_gradients_match_reference_inside_the_model(lm, mode, passes, divergence, device):
    task, model = lm
    model, sample = to_device(model, random_lm_batch(seed=3, collide=True), device)
    model.train()
    asm = model.decoder.adaptive_softmax
    alpha = 2.0
    # the reference needs the scores the softmax computes for the whole batch, which the fused
    # loss never forms (it is checked against this path below)
    crit = adaptive_criterion(
        task, mode, rdrop_alpha=alpha, rdrop_passes=passes, rdrop_divergence=divergence,
        rdrop_no_fused=divergence == "sym-kl",
    )
    cap = Capture(asm)
    torch.manual_seed(3)
    loss, size, log = crit(model, sample)
    cap.remove()
    loss.backward()
    assert len(cap.head) == 1 and all(len(t) == 1 for t in cap.tails)
    scores = [cap.head[0]] + [t[0] for t in cap.tails]
    target = sample["target"].view(-1).cpu()  # the reference runs on the CPU
    n = target.numel()
    if mode == "full":
        assert all(s.size(0) == passes * n for s in scores)
        reference = reference_adaptive_full
    else:
        for i, pos in enumerate(cluster_positions(target, asm.cutoff)):
            assert scores[i + 1].size(0) == passes * pos.numel()
        reference = reference_adaptive_head
    leaves = [s.detach().cpu().double().requires_grad_() for s in scores]
    ref_loss, ref_nll, ref_kl = reference(
        leaves[0], leaves[1:], target, asm.cutoff, alpha, passes, PAD, divergence
    )
    ref_loss.backward()
    torch.testing.assert_close(loss.cpu().double(), ref_loss, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(log["nll_loss"].cpu().double(), ref_nll, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(log["rdrop_kl"].cpu().double(), ref_kl.detach(), rtol=1e-4, atol=1e-5)
    assert ref_kl > 0
    for s, leaf in zip(scores, leaves):
        torch.testing.assert_close(s.grad.cpu().double(), leaf.grad, rtol=1e-4, atol=1e-6)
    assert size == sample["target"].ne(PAD).sum()
    assert log["copies_ntokens"] == passes * size


@pytest.mark.parametrize("mode, passes, chunk_size, tied", [
    ("full", 2, 0, True), ("full", 3, 5, True), ("full", 2, 1, False),
    ("head", 2, 0, True), ("head", 3, 3, True), ("head", 2, 0, False)])
def test_fused_adaptive_loss_equals_the_unfused_inside_a_training_step(mode, passes, chunk_size, tied):
    """Loss, NLL, KL and every parameter's gradient; tied adaptive input and output (fairseq's
    TiedHeadModule) or not (a plain projection), chunks that split the clusters' positions
    unevenly.  The full mode draws the tails' dropout masks chunk by chunk, so this compares it
    without the adaptive softmax's dropout."""
    task = lm_task()
    overrides = {"adaptive_softmax_dropout": 0.0} if mode == "full" else {}
    if not tied:
        overrides.update(tie_adaptive_weights=False, tie_adaptive_proj=False)
    model = lm_model(task, **overrides)
    head = model.decoder.adaptive_softmax.head
    assert type(head).__name__ == ("TiedHeadModule" if tied else "Linear")
    model.train()
    sample = random_lm_batch(seed=5, collide=True)
    results = []
    for no_fused in (True, False):
        crit = adaptive_criterion(task, mode, rdrop_alpha=1.5, rdrop_passes=passes,
                                  rdrop_no_fused=no_fused, rdrop_chunk_size=0 if no_fused else chunk_size)
        model.zero_grad()
        torch.manual_seed(9)
        loss, _, log = crit(model, sample)
        loss.backward()
        results.append((loss.detach(), log, grads(model)))
    (loss_u, log_u, grads_u), (loss_f, log_f, grads_f) = results
    torch.testing.assert_close(loss_f, loss_u, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(log_f["nll_loss"], log_u["nll_loss"], rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(log_f["rdrop_kl"], log_u["rdrop_kl"], rtol=1e-5, atol=1e-5)
    assert log_u["rdrop_kl"] > 0
    assert grads_f.keys() == grads_u.keys()
    for name, g in grads_u.items():
        torch.testing.assert_close(grads_f[name], g, rtol=1e-4, atol=2e-5, msg=name)


@pytest.mark.parametrize("mode", ["full", "head"])
def test_adaptive_validation_is_the_stock_single_pass(lm, mode):
    task, model = lm
    sample = random_lm_batch(seed=4, collide=False)
    model.eval()
    with torch.no_grad():
        loss, size, log = adaptive_criterion(task, mode)(model, sample)
        s_loss, s_size, s_log = AdaptiveLoss(task, False)(model, sample)
    assert torch.equal(loss, s_loss.view(())) and size == s_size
    assert "rdrop_kl" not in log
    with metrics.aggregate(new_root=True) as ours:
        RDropAdaptiveLoss.reduce_metrics([log])
    with metrics.aggregate(new_root=True) as stock:
        AdaptiveLoss.reduce_metrics([s_log])
    for key in ("loss", "ppl"):
        assert ours.get_smoothed_value(key) == stock.get_smoothed_value(key), key


def test_logged_nll_is_per_token_over_copies_and_kl_separate(lm):
    task, model = lm
    model.train()
    crit = adaptive_criterion(task, "head")
    sample = random_lm_batch(seed=5, collide=True)
    _, _, log = crit(model, sample)
    with metrics.aggregate(new_root=True) as agg:
        crit.reduce_metrics([log])
    tokens = 2 * sample["target"].ne(PAD).sum().item()
    assert agg.get_smoothed_value("nll_loss") == pytest.approx(
        log["nll_loss"].item() / tokens / math.log(2), abs=1e-3
    )
    assert agg.get_smoothed_value("rdrop_kl") == pytest.approx(
        log["rdrop_kl"].item() / (tokens / 2) / math.log(2), abs=1e-4
    )
    expected_loss = (log["nll_loss"] + log["rdrop_kl"]).item() / tokens / math.log(2)
    assert agg.get_smoothed_value("loss") == pytest.approx(expected_loss, abs=1e-3)


def test_every_k_steps_fall_back_to_the_stock_single_pass(lm):
    task, model = lm
    model.train()
    crit = adaptive_criterion(task, "full", rdrop_every=2)
    sample = random_lm_batch(seed=6, collide=False)
    crit.set_num_updates(1)
    torch.manual_seed(1)
    loss, _, log = crit(model, sample)
    torch.manual_seed(1)
    s_loss, _, _ = AdaptiveLoss(task, False)(model, sample)
    assert torch.equal(loss, s_loss.view(())) and "rdrop_kl" not in log


def test_ddp_backend_that_needs_legacy_ddp_is_refused_before_training():
    from fairseq import options
    from fairseq.dataclass.utils import convert_namespace_to_omegaconf

    task = lm_task()

    def criterion_cfg(*extra):
        parser = options.get_training_parser()
        args = options.parse_args_and_arch(parser, [
            "unused-data", "--task", "language_modeling", "--arch",
            "rdrop_transformer_lm_adaptive_small", "--criterion", "rdrop_adaptive_loss",
            *extra,
        ])
        return convert_namespace_to_omegaconf(args).criterion

    default = criterion_cfg()
    assert default.ddp_backend == "pytorch_ddp"  # fairseq's default
    with pytest.raises(ValueError, match="--ddp-backend legacy_ddp"):
        RDropAdaptiveLoss.build_criterion(default, task)
    with pytest.raises(ValueError, match="--ddp-backend legacy_ddp"):
        RDropAdaptiveLoss.build_criterion(criterion_cfg("--ddp-backend", "c10d"), task)
    crit = RDropAdaptiveLoss.build_criterion(criterion_cfg("--ddp-backend", "legacy_ddp"), task)
    assert crit.schedule.alpha == 1.0 and crit.kl_mode == "head"  # the LM defaults
    crit = RDropAdaptiveLoss.build_criterion(
        criterion_cfg("--ddp-backend", "legacy_ddp", "--rdrop-adaptive-kl", "full",
                      "--rdrop-alpha", "0.5", "--rdrop-passes", "3"), task
    )
    assert crit.kl_mode == "full" and crit.schedule.alpha == 0.5 and crit.schedule.passes == 3
    with pytest.raises(ValueError, match="rdrop-adaptive-kl"):
        adaptive_criterion(task, "tail")


def test_full_softmax_model_is_refused_by_the_adaptive_criterion():
    task = lm_task()
    model = lm_model(task, arch="transformer_lm")
    with pytest.raises(ValueError, match="rdrop_cross_entropy"):
        adaptive_criterion(task)(model, random_lm_batch(seed=1, collide=False))


# ----------------------------------------------------- rdrop_cross_entropy


@pytest.fixture()
def full_lm():
    task = lm_task()
    return task, lm_model(task, arch="transformer_lm", share_decoder_input_output_embed=True)


def test_cross_entropy_alpha_zero_unfused_is_bitwise_stock_on_the_doubled_batch(full_lm):
    task, model = full_lm
    sample = random_lm_batch(seed=1, collide=True)
    model.train()
    torch.manual_seed(7)
    loss, size, log = ce_criterion(task, rdrop_alpha=0.0, rdrop_no_fused=True)(model, sample)
    loss.backward()
    ours = grads(model)
    model.zero_grad()
    torch.manual_seed(7)
    s_loss, s_size, _ = CrossEntropyCriterion(task, False)(model, doubled(sample))
    s_loss.backward()
    assert torch.equal(loss, s_loss) and size == sample["ntokens"] and s_size == 2 * size
    for name, g in grads(model).items():
        assert torch.equal(ours[name], g), name


def test_cross_entropy_alpha_zero_fused_equals_stock_on_the_doubled_batch(full_lm):
    task, model = full_lm
    sample = random_lm_batch(seed=1, collide=True)
    model.train()
    torch.manual_seed(7)
    loss, size, log = ce_criterion(task, rdrop_alpha=0.0)(model, sample)
    loss.backward()
    ours = grads(model)
    model.zero_grad()
    torch.manual_seed(7)
    s_loss, s_size, _ = CrossEntropyCriterion(task, False)(model, doubled(sample))
    s_loss.backward()
    torch.testing.assert_close(loss, s_loss, rtol=1e-6, atol=1e-4)
    assert size == sample["ntokens"] and s_size == 2 * size
    for name, g in grads(model).items():
        torch.testing.assert_close(ours[name], g, rtol=1e-4, atol=1e-6, msg=name)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("no_fused", [False, True])
@pytest.mark.parametrize("passes", [2, 3])
def test_cross_entropy_loss_and_gradients_match_reference_inside_the_model(
    full_lm, passes, no_fused, device
):
    task, model = full_lm
    model, sample = to_device(model, random_lm_batch(seed=2, collide=True), device)
    model.train()
    crit = ce_criterion(task, rdrop_alpha=1.0, rdrop_passes=passes, rdrop_no_fused=no_fused)
    check_step_against_reference(model, crit, sample, 0.0, 1.0, passes, PAD, no_fused)


def test_cross_entropy_validation_is_the_stock_single_pass(full_lm):
    task, model = full_lm
    sample = random_lm_batch(seed=4, collide=True)
    model.eval()
    with torch.no_grad():
        loss, size, log = ce_criterion(task)(model, sample)
        s_loss, s_size, s_log = CrossEntropyCriterion(task, False)(model, sample)
    assert torch.equal(loss, s_loss) and size == s_size and "rdrop_kl" not in log
    with metrics.aggregate(new_root=True) as ours:
        RDropCrossEntropyCriterion.reduce_metrics([log])
    with metrics.aggregate(new_root=True) as stock:
        CrossEntropyCriterion.reduce_metrics([s_log])
    for key in ("loss", "ppl"):
        assert ours.get_smoothed_value(key) == stock.get_smoothed_value(key), key


def test_lm_criterions_default_to_the_papers_lm_alpha():
    from rdrop_seq.criterions.config import RDropConfig
    from rdrop_seq.criterions.rdrop_adaptive_loss import RDropAdaptiveLossConfig
    from rdrop_seq.criterions.rdrop_cross_entropy import RDropCrossEntropyConfig

    assert RDropCrossEntropyConfig.__dataclass_fields__["rdrop_alpha"].default == 1.0
    assert RDropAdaptiveLossConfig.__dataclass_fields__["rdrop_alpha"].default == 1.0
    assert RDropConfig.__dataclass_fields__["rdrop_alpha"].default == 5.0  # translation


# ------------------------------------------------------------------- bf16


@pytest.mark.parametrize("kind", ["ce", "full", "head"])
def test_bfloat16_model_gives_finite_loss_close_to_float32(kind):
    task = lm_task()
    if kind == "ce":
        model = lm_model(task, arch="transformer_lm", share_decoder_input_output_embed=True)
        crit = ce_criterion(task)
    else:
        model = lm_model(task)
        crit = adaptive_criterion(task, kind)
    sample = random_lm_batch(seed=8, collide=True)
    model.train()
    torch.manual_seed(11)
    loss32, _, log32 = crit(model, sample)
    model16 = copy.deepcopy(model).bfloat16()
    torch.manual_seed(11)
    loss16, _, log16 = crit(model16, sample)
    loss16.backward()
    assert loss16.dtype == torch.float32 and torch.isfinite(loss16)
    assert log16["rdrop_kl"].dtype == torch.float32 and torch.isfinite(log16["rdrop_kl"])
    torch.testing.assert_close(loss16, loss32.detach(), rtol=5e-2, atol=1.0)
    for name, p in model16.named_parameters():
        if p.grad is not None:
            assert torch.isfinite(p.grad.float()).all(), name


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


@pytest.mark.parametrize("arch", sorted(OTHER_LMS))
def test_cross_entropy_matches_reference_inside_recurrent_and_convolutional_lms(arch):
    task = lm_task()
    model = other_lm(task, arch, **OTHER_LMS[arch])
    model.train()
    crit = ce_criterion(task, rdrop_alpha=1.0, rdrop_passes=2)
    check_step_against_reference(model, crit, random_lm_batch(seed=2, collide=False), 0.0, 1.0, 2, PAD, True)


@pytest.mark.parametrize("arch", sorted(OTHER_LMS))
def test_adaptive_loss_says_why_an_lstm_or_fconv_lm_has_no_adaptive_softmax(arch):
    # these models build their adaptive softmax only for --criterion adaptive_loss
    task = lm_task()
    model = other_lm(task, arch, adaptive_softmax_cutoff=",".join(map(str, CUTOFF[:-1])), **OTHER_LMS[arch])
    assert model.decoder.adaptive_softmax is None
    with pytest.raises(ValueError, match="builds its adaptive softmax only when --criterion is adaptive_loss"):
        adaptive_criterion(task, "head")(model, random_lm_batch(seed=2, collide=False))


@pytest.mark.parametrize("mode", ["full", "head"])
def test_adaptive_loss_under_cpu_autocast_is_float32_and_close_to_float32(mode):
    """CPU autocast to bfloat16 stands in for CUDA --amp: the head, tails and their projections run
    in bfloat16 inside the fused loss, its log-softmaxes, KL and sums in float32.  (Without
    fairseq's adaptive input, which fails under CPU autocast whatever the criterion: it writes its
    bands' half-precision outputs into a float32 tensor.)"""
    task = lm_task()
    model = lm_model(task, adaptive_input=False, tie_adaptive_weights=False, tie_adaptive_proj=False)
    model.train()
    sample = random_lm_batch(seed=10, collide=True)
    crit = adaptive_criterion(task, mode)
    torch.manual_seed(12)
    loss32, _, _ = crit(model, sample)
    torch.manual_seed(12)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss, _, log = crit(model, sample)
    loss.backward()
    assert loss.dtype == log["rdrop_kl"].dtype == torch.float32 and torch.isfinite(loss)
    torch.testing.assert_close(loss, loss32.detach(), rtol=5e-2, atol=1.0)
    for name, p in model.named_parameters():
        if p.grad is not None:
            assert torch.isfinite(p.grad).all(), name
