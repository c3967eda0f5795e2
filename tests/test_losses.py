"""The pure loss math against float64 references written from the definitions."""

import pytest
import torch
import torch.nn.functional as F

from rdrop_seq.divergences import pair_divergence
from rdrop_seq.losses import label_smoothed_nll_loss, rdrop_cross_entropy_loss, rdrop_label_smoothed_loss
from tests.reference import random_batch, reference_rdrop_loss

PAD = 1


@pytest.mark.parametrize("passes", [2, 3])
@pytest.mark.parametrize("epsilon", [0.0, 0.1])
@pytest.mark.parametrize("alpha", [0.0, 5.0])
@pytest.mark.parametrize("seed", [0, 1])
def test_value_and_gradient_match_float64_reference(passes, epsilon, alpha, seed):
    logits, target = random_batch(passes, n=13, vocab=11, pad=PAD, seed=seed)
    ours_in = logits.clone().float().requires_grad_()
    ref_in = logits.clone().requires_grad_()

    ours = rdrop_label_smoothed_loss(
        F.log_softmax(ours_in, -1), target, epsilon, alpha, passes, ignore_index=PAD
    )
    ref_loss, ref_nll, ref_kl = reference_rdrop_loss(ref_in, target, epsilon, alpha, passes, PAD)

    torch.testing.assert_close(ours.loss.double(), ref_loss, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ours.nll_loss.double(), ref_nll, rtol=1e-5, atol=1e-5)
    if alpha > 0:
        _, _, kl_ref = reference_rdrop_loss(logits, target, epsilon, 1.0, passes, PAD)
        torch.testing.assert_close(ours.kl.double(), kl_ref, rtol=1e-5, atol=1e-6)
        assert ours.kl > 0

    ours.loss.backward()
    ref_loss.backward()
    torch.testing.assert_close(ours_in.grad.double(), ref_in.grad, rtol=1e-4, atol=1e-6)
    # pad positions get no gradient in any copy
    pad_rows = target.eq(PAD).repeat(passes)
    assert pad_rows.any()
    assert ours_in.grad[pad_rows].abs().max() == 0


def test_float64_inputs_are_exact():
    logits, target = random_batch(3, n=9, vocab=7, pad=PAD, seed=5)
    x = logits.clone().requires_grad_()
    ours = rdrop_label_smoothed_loss(F.log_softmax(x, -1), target, 0.1, 2.0, 3, ignore_index=PAD)
    assert ours.loss.dtype == torch.float64
    y = logits.clone().requires_grad_()
    ref, _, _ = reference_rdrop_loss(y, target, 0.1, 2.0, 3, PAD)
    torch.testing.assert_close(ours.loss, ref, rtol=1e-12, atol=1e-12)
    ours.loss.backward()
    ref.backward()
    torch.testing.assert_close(x.grad, y.grad, rtol=1e-10, atol=1e-12)


def test_two_copies_is_the_papers_symmetric_kl():
    logits, target = random_batch(2, n=10, vocab=9, pad=PAD, seed=2)
    lp = F.log_softmax(logits, -1)
    p1, p2 = lp.chunk(2)
    keep = target.ne(PAD)
    kl12 = F.kl_div(p2, p1, log_target=True, reduction="none").sum(-1)  # KL(P1||P2)
    kl21 = F.kl_div(p1, p2, log_target=True, reduction="none").sum(-1)  # KL(P2||P1)
    expected = (0.5 * (kl12 + kl21))[keep].sum()
    torch.testing.assert_close(pair_divergence(lp, 2, keep), expected)


def test_label_smoothing_is_bitwise_fairseqs():
    from fairseq.criterions.label_smoothed_cross_entropy import (
        label_smoothed_nll_loss as fairseq_ls,
    )

    logits, target = random_batch(1, n=31, vocab=17, pad=PAD, seed=3)
    lp = F.log_softmax(logits.float(), -1)
    ours = label_smoothed_nll_loss(lp, target, 0.1, ignore_index=PAD)
    stock = fairseq_ls(lp.clone(), target, 0.1, ignore_index=PAD)
    assert torch.equal(ours[0], stock[0]) and torch.equal(ours[1], stock[1])


def test_identical_copies_have_zero_kl():
    logits, target = random_batch(1, n=8, vocab=6, pad=PAD, seed=4)
    lp = F.log_softmax(logits.repeat(3, 1), -1)
    assert pair_divergence(lp, 3, target.ne(PAD)).abs() < 1e-12


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision_inputs_give_finite_float32_kl_close_to_float32(dtype):
    logits, target = random_batch(2, n=64, vocab=50, pad=PAD, seed=6)
    low = logits.to(dtype).requires_grad_()
    full = low.detach().float().requires_grad_()
    out_low = rdrop_label_smoothed_loss(
        F.log_softmax(low, -1), target, 0.1, 5.0, 2, ignore_index=PAD
    )
    out_full = rdrop_label_smoothed_loss(
        F.log_softmax(full, -1), target, 0.1, 5.0, 2, ignore_index=PAD
    )
    assert out_low.kl.dtype == torch.float32
    assert out_low.loss.dtype == torch.float32
    assert torch.isfinite(out_low.loss)
    torch.testing.assert_close(out_low.loss, out_full.loss, rtol=2e-2, atol=1e-1)
    out_low.loss.backward()
    out_full.loss.backward()
    assert torch.isfinite(low.grad.float()).all()
    torch.testing.assert_close(low.grad.float(), full.grad, rtol=5e-2, atol=2e-2)


def test_shape_errors_are_clear():
    logits, target = random_batch(2, n=5, vocab=6, pad=PAD)
    with pytest.raises(ValueError, match="passes"):
        rdrop_label_smoothed_loss(F.log_softmax(logits, -1), target, 0.1, 1.0, 3, PAD)
    with pytest.raises(ValueError, match="at least 2"):
        pair_divergence(logits, 1)


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
