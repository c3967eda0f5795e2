"""``rdrop_adaptive_loss`` inside real fairseq Adaptive Transformers.

Against the stock ``adaptive_loss`` where it drops the pad-colliding word (on
the doubled batch and in validation: ``test_criterion_families.py``), against
float64 references (KL modes ``full`` and ``head``, every divergence), fused
against unfused, with padding, words in every tail cluster and the pad
collision (a real word whose in-cluster index equals the pad index).
"""

import copy
import math

import pytest
import torch

from fairseq.criterions.adaptive_loss import AdaptiveLoss
from fairseq.logging import metrics
from fairseq.modules.quant_noise import quant_noise
from rdrop_seq.adaptive_kl import cluster_positions
from rdrop_seq.criterions.output_layer import fusable_head_weights, fusable_tail_weight
from rdrop_seq.criterions.rdrop_adaptive_loss import RDropAdaptiveLoss
from tests.conftest import DEVICES
from tests.fairseq_helpers import grads, to_device
from tests.lm_helpers import (
    CUTOFF, OTHER_LMS, PAD, Capture, adaptive_criterion, lm_model, lm_task, other_lm, random_lm_batch,
)
from tests.reference_lm import reference_adaptive_full, reference_adaptive_head


@pytest.fixture()
def lm():
    task = lm_task()
    return task, lm_model(task)


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


@pytest.mark.parametrize("mode, passes, chunk_size, weights", [
    ("full", 2, 0, "tied"), ("full", 3, 5, "tied"), ("full", 2, 1, "untied"),
    ("head", 2, 0, "tied"), ("head", 3, 3, "tied"), ("head", 2, 0, "untied"),
    ("head", 2, 3, "quant-noise")])
def test_fused_adaptive_loss_equals_the_unfused_inside_a_training_step(mode, passes, chunk_size, weights):
    """Loss, NLL, KL and every parameter's gradient; tied adaptive input and output (fairseq's
    TiedHeadModule and TiedLinear tails) or not (plain projections: the head's and the tails'
    fused with the loss), or with quantisation noise (untied; it changes the weights inside the
    modules, so the loss takes their scores), chunks that split the clusters' positions
    unevenly.  The full mode draws the tails' dropout masks chunk by chunk, so this compares it
    without the adaptive softmax's dropout."""
    task = lm_task()
    overrides = {"adaptive_softmax_dropout": 0.0} if mode == "full" else {}
    if weights != "tied":
        overrides.update(tie_adaptive_weights=False, tie_adaptive_proj=False)
    model = lm_model(task, **overrides)
    asm = model.decoder.adaptive_softmax
    if weights == "quant-noise":  # what AdaptiveSoftmax(..., q_noise=0.5, qn_block_size=4) builds
        asm.q_noise = 0.5
        for module in [asm.head] + [layer for tail in asm.tail for layer in (tail[0], tail[2])]:
            quant_noise(module, 0.5, 4)
    assert type(asm.head).__name__ == ("TiedHeadModule" if weights == "tied" else "Linear")
    assert (fusable_head_weights(asm) is None) == (weights == "quant-noise")
    assert all((fusable_tail_weight(asm, tail) is None) == (weights == "quant-noise") for tail in asm.tail)
    model.train()
    sample = random_lm_batch(seed=5, collide=True)
    results = []
    for no_fused in (True, False):
        crit = adaptive_criterion(task, mode, rdrop_alpha=1.5, rdrop_passes=passes,
                                  rdrop_no_fused=no_fused, rdrop_chunk_size=0 if no_fused else chunk_size)
        run = copy.deepcopy(model)  # fairseq's quantisation noise overwrites the weights it noises
        torch.manual_seed(9)
        loss, _, log = crit(run, sample)
        loss.backward()
        results.append((loss.detach(), log, grads(run)))
    (loss_u, log_u, grads_u), (loss_f, log_f, grads_f) = results
    torch.testing.assert_close(loss_f, loss_u, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(log_f["nll_loss"], log_u["nll_loss"], rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(log_f["rdrop_kl"], log_u["rdrop_kl"], rtol=1e-5, atol=1e-5)
    assert log_u["rdrop_kl"] > 0
    assert grads_f.keys() == grads_u.keys()
    for name, g in grads_u.items():
        torch.testing.assert_close(grads_f[name], g, rtol=1e-4, atol=2e-5, msg=name)


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


def test_fused_tied_head_leaves_no_parameter_gradient_holding_the_whole_head_gradient():
    """A gradient that is a slice of the concatenated head weight's would keep all of it alive
    between steps (at WikiText-103's size the [20002, 1024] bf16 head gradient, 39 MiB, until the
    gradients are zeroed).
    (Attention's packed q/k/v biases get such slices from fairseq itself, in the stock loss too.)"""
    task = lm_task()
    model = lm_model(task)
    assert type(model.decoder.adaptive_softmax.head).__name__ == "TiedHeadModule"
    model.train()
    crit = adaptive_criterion(task, "head", rdrop_alpha=1.0)
    loss, _, _ = crit(model, random_lm_batch(seed=3, collide=False))
    loss.backward()
    asm = model.decoder.adaptive_softmax
    for name, p in asm.named_parameters():
        if p.grad is not None:
            assert p.grad.untyped_storage().nbytes() == p.grad.numel() * p.grad.element_size(), name
