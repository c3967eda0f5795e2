"""The fused and the chunked R-Drop losses against float64 references and the unfused path."""

import json
import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

import rdrop_seq.chunking as chunking
import rdrop_seq.fused.loop as loop_mod
import rdrop_seq.fused.projection as projection
from rdrop_seq.fused import auto_chunk_size, chunked_rdrop_loss, fused_linear_rdrop_loss
from rdrop_seq.fused.precision import FP16_GRAD_SCALE, FP16_MAX, store_scaled
from rdrop_seq.fused.stored_grads import mul_in_float32, scale_stored_grads
from rdrop_seq.losses import rdrop_label_smoothed_loss
from tests.reference import random_batch, reference_rdrop_loss
from tests.rounding import argmax_may_differ, matmul_error, sum_rtol

PAD = 1
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _problem(passes, n=10, hdim=8, vocab=13, seed=0, bias=True, dtype=torch.float64):
    """Hidden states whose logits are peaked at the target often enough to have hits."""
    _, target = random_batch(passes, n, vocab, PAD, seed=seed)
    g = torch.Generator().manual_seed(seed + 100)
    weight = torch.randn(vocab, hdim, generator=g, dtype=torch.float64)
    base = weight[target] * 0.8 + torch.randn(n, hdim, generator=g, dtype=torch.float64)
    hidden = torch.cat([base + 0.5 * torch.randn(n, hdim, generator=g, dtype=torch.float64)
                        for _ in range(passes)])
    b = 0.3 * torch.randn(vocab, generator=g, dtype=torch.float64) if bias else None
    cast = lambda t: None if t is None else t.to(dtype)  # noqa: E731
    return cast(hidden), cast(weight), cast(b), target


def _reference(hidden, weight, bias, target, epsilon, alpha, passes):
    """Float64 reference values and gradients w.r.t. hidden, weight, bias."""
    leaves = [t.detach().double().requires_grad_() for t in (hidden, weight)]
    if bias is not None:
        leaves.append(bias.detach().double().requires_grad_())
    logits = leaves[0] @ leaves[1].T + (leaves[2] if bias is not None else 0.0)
    loss, nll, kl = reference_rdrop_loss(logits, target, epsilon, alpha, passes, PAD)
    grads = torch.autograd.grad(loss, leaves)
    return loss.detach(), nll.detach(), kl.detach(), grads


def _unfused(hidden, weight, bias, target, epsilon, alpha, passes, ignore_index=PAD):
    """The unfused path's logging values: rdrop_label_smoothed_loss and argmax accuracy."""
    with torch.no_grad():
        lprobs = F.log_softmax(F.linear(hidden, weight, bias).float(), -1)
        out = rdrop_label_smoothed_loss(lprobs, target, epsilon, alpha, passes, ignore_index)
        stacked = target.repeat(passes)
        keep = torch.ones_like(stacked, dtype=torch.bool) if ignore_index is None \
            else stacked.ne(ignore_index)
        n_correct = lprobs.argmax(-1).eq(stacked)[keep].sum()
    return out, n_correct


def _path_rtol(positions, vocab, hidden_size):
    """Relative bound on |fused - unfused| of a summed loss in float32 (tests/rounding.py): to
    first order every position's term accumulates the roundings of its logits' dot products
    (hidden + 1 terms) and of its log-softmax and smoothing sums (vocab terms)."""
    return sum_rtol(positions * (hidden_size + 1 + 2 * vocab))


def _argmax_slack(hidden, weight, bias, passes):
    """Positions whose argmax may differ between two float32 computations of the logits."""
    logits = F.linear(hidden.double(), weight.double(), None if bias is None else bias.double())
    return int(argmax_may_differ(logits, matmul_error(hidden, weight, bias)).sum())


def _assert_close(ours, ref, rtol):
    """``ours`` equals ``ref`` to ``rtol``, measured against ``ref``'s largest entry."""
    ours = ours.detach().double()
    scale = max(float(ref.abs().max()), 1e-30)
    torch.testing.assert_close(ours, ref, rtol=rtol, atol=rtol * scale)


# ---- fused: values and gradients ---------------------------------------------
@pytest.mark.parametrize("passes", [1, 2, 3])
@pytest.mark.parametrize("alpha", [0.0, 0.7])
@pytest.mark.parametrize("epsilon", [0.0, 0.1])
@pytest.mark.parametrize("chunk_size", [3, None])
@pytest.mark.parametrize("dtype,rtol", [(torch.float32, 1e-5), (torch.float64, 1e-11)])
def test_fused_matches_float64_reference(passes, alpha, epsilon, chunk_size, dtype, rtol):
    hidden, weight, bias, target = _problem(passes, seed=passes, dtype=dtype)
    leaves = [t.clone().requires_grad_() for t in (hidden, weight, bias)]
    out = fused_linear_rdrop_loss(
        leaves[0], leaves[1], target, bias=leaves[2], epsilon=epsilon, alpha=alpha,
        passes=passes, ignore_index=PAD, chunk_size=chunk_size,
    )
    assert out.loss.dtype == dtype and out.loss.requires_grad
    assert not out.nll_loss.requires_grad and not out.kl.requires_grad
    ref_loss, ref_nll, ref_kl, ref_grads = _reference(
        hidden, weight, bias, target, epsilon, alpha, passes)
    _assert_close(out.loss, ref_loss, rtol)
    _assert_close(out.nll_loss, ref_nll, rtol)
    if passes > 1 and alpha > 0:
        _assert_close(out.kl, ref_kl, rtol)
        assert out.kl > 0
    else:
        assert out.kl == 0
    out.loss.backward()
    for leaf, ref in zip(leaves, ref_grads):
        assert leaf.grad.dtype == dtype
        _assert_close(leaf.grad, ref, 10 * rtol)
    # the rows of pad positions get exactly zero gradient, in every copy
    pad_rows = target.eq(PAD).repeat(passes)
    assert pad_rows.any() and leaves[0].grad[pad_rows].abs().max() == 0


@pytest.mark.parametrize("passes", [2, 3])
@pytest.mark.parametrize("with_bias", [False, True])
@pytest.mark.parametrize("chunk_size", [1, 3, 4, 64])
def test_fused_logging_values_equal_unfused(passes, with_bias, chunk_size):
    hidden, weight, bias, target = _problem(
        passes, n=23, vocab=17, seed=7, bias=with_bias, dtype=torch.float32)
    out = fused_linear_rdrop_loss(
        hidden, weight, target, bias=bias, epsilon=0.1, alpha=5.0, passes=passes,
        ignore_index=PAD, chunk_size=chunk_size,
    )
    ref, n_correct = _unfused(hidden, weight, bias, target, 0.1, 5.0, passes)
    rtol = _path_rtol(passes * 23, 17, hidden.size(-1))  # chunked vs whole matrix products
    torch.testing.assert_close(out.loss, ref.loss, rtol=rtol, atol=0)
    torch.testing.assert_close(out.nll_loss, ref.nll_loss, rtol=rtol, atol=0)
    torch.testing.assert_close(out.kl, ref.kl, rtol=rtol, atol=rtol * float(ref.loss))
    assert out.n_correct.dtype == torch.int64
    assert 0 < int(n_correct) < passes * int(target.ne(PAD).sum())
    assert abs(int(out.n_correct) - int(n_correct)) <= _argmax_slack(hidden, weight, bias, passes)


def test_fused_batch_time_shapes_and_no_padding_index():
    hidden, weight, bias, target = _problem(2, n=12, seed=3, dtype=torch.float32)
    flat = fused_linear_rdrop_loss(hidden, weight, target, bias=bias, epsilon=0.1, alpha=1.0,
                                   passes=2, ignore_index=PAD, chunk_size=5)
    shaped = fused_linear_rdrop_loss(hidden.view(4, 6, -1), weight, target.view(2, 6),
                                     bias=bias, epsilon=0.1, alpha=1.0, passes=2,
                                     ignore_index=PAD, chunk_size=5)
    strided = hidden.view(4, 6, -1).transpose(0, 1).contiguous().transpose(0, 1)
    assert not strided.is_contiguous()
    shaped_strided = fused_linear_rdrop_loss(strided, weight, target.view(2, 6), bias=bias,
                                             epsilon=0.1, alpha=1.0, passes=2,
                                             ignore_index=PAD, chunk_size=5)
    for a, b, c in zip(flat, shaped, shaped_strided):
        torch.testing.assert_close(a, b)
        torch.testing.assert_close(a, c)
    # ignore_index=None: every position counts, pads included
    ref_loss, ref_nll, _, _ = _reference(hidden, weight, bias, target.clone(), 0.1, 1.0, 2)
    everything = fused_linear_rdrop_loss(hidden, weight, target, bias=bias, epsilon=0.1,
                                         alpha=1.0, passes=2, chunk_size=5)
    unmasked, _ = _unfused(hidden, weight, bias, target, 0.1, 1.0, 2, ignore_index=None)
    torch.testing.assert_close(everything.loss, unmasked.loss, rtol=_path_rtol(24, 13, 8), atol=0)
    assert everything.loss > flat.loss
    assert float(ref_loss) == pytest.approx(float(flat.loss), rel=1e-5)
    assert float(ref_nll) == pytest.approx(float(flat.nll_loss), rel=1e-5)


def test_fused_ignore_index_outside_vocabulary():
    hidden, weight, bias, target = _problem(2, n=10, seed=4, dtype=torch.float32)
    t100 = target.masked_fill(target.eq(PAD), -100)
    a = fused_linear_rdrop_loss(hidden, weight, target, bias=bias, epsilon=0.1, alpha=2.0,
                                passes=2, ignore_index=PAD, chunk_size=3)
    b = fused_linear_rdrop_loss(hidden, weight, t100, bias=bias, epsilon=0.1, alpha=2.0,
                                passes=2, ignore_index=-100, chunk_size=3)
    for x, y in zip(a, b):
        torch.testing.assert_close(x, y)


def test_fused_only_padding_gives_zero_loss_and_gradient():
    hidden, weight, bias, target = _problem(2, n=6, seed=5, dtype=torch.float32)
    target = torch.full_like(target, PAD)
    leaves = [t.clone().requires_grad_() for t in (hidden, weight, bias)]
    out = fused_linear_rdrop_loss(leaves[0], leaves[1], target, bias=leaves[2], epsilon=0.1,
                                  alpha=1.0, passes=2, ignore_index=PAD)
    assert out.loss.item() == 0 and out.nll_loss.item() == 0 and int(out.n_correct) == 0
    out.loss.backward()
    for leaf in leaves:
        assert leaf.grad.abs().max() == 0


def test_fused_gradients_only_where_required_and_none_without_grad(monkeypatch):
    hidden, weight, bias, target = _problem(2, n=10, seed=6, dtype=torch.float32)
    kwargs = dict(bias=bias, epsilon=0.1, alpha=1.0, passes=2, ignore_index=PAD, chunk_size=4)
    full = fused_linear_rdrop_loss(hidden, weight, target, **kwargs)

    calls = []
    real = projection._fused_forward
    monkeypatch.setattr(projection, "_fused_forward",
                        lambda *a: calls.append(a[-3:]) or real(*a))
    h = hidden.clone().requires_grad_()
    with torch.no_grad():
        out = fused_linear_rdrop_loss(h, weight, target, **kwargs)
    assert not out.loss.requires_grad and calls[-1] == (False, False, False)
    for a, b in zip(out, full):
        torch.testing.assert_close(a, b)

    # frozen output layer (weight and bias need no gradient): only grad(hidden)
    out = fused_linear_rdrop_loss(h, weight, target, **kwargs)
    assert calls[-1] == (True, False, False)
    out.loss.backward()
    _, _, _, ref_grads = _reference(hidden, weight, bias, target, 0.1, 1.0, 2)
    _assert_close(h.grad, ref_grads[0], 1e-4)


def test_fused_backward_scales_by_grad_output_and_accumulates_with_other_uses():
    hidden, weight, bias, target = _problem(2, n=10, seed=8, dtype=torch.float64)
    w = weight.clone().requires_grad_()
    out = fused_linear_rdrop_loss(hidden, w, target, epsilon=0.1, alpha=1.0, passes=2,
                                  ignore_index=PAD, chunk_size=3)
    (2.5 * out.loss + (w ** 2).sum()).backward()  # tied weight used elsewhere too
    _, _, _, ref_grads = _reference(hidden, weight, None, target, 0.1, 1.0, 2)
    _assert_close(w.grad, 2.5 * ref_grads[1] + 2 * weight, 1e-10)


def test_fused_under_autocast_computes_in_the_autocast_dtype():
    hidden, weight, bias, target = _problem(2, n=20, hdim=16, vocab=30, seed=14,
                                            dtype=torch.float32)
    kwargs = dict(epsilon=0.1, alpha=2.0, passes=2, ignore_index=PAD, chunk_size=6)
    leaves = [t.clone().requires_grad_() for t in (hidden, weight, bias)]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = fused_linear_rdrop_loss(leaves[0], leaves[1], target, bias=leaves[2], **kwargs)
    out.loss.backward()
    low = [t.bfloat16().requires_grad_() for t in (hidden, weight, bias)]
    ref = fused_linear_rdrop_loss(low[0], low[1], target, bias=low[2], **kwargs)
    ref.loss.backward()
    for a, b in zip(out, ref):
        torch.testing.assert_close(a, b)
    for leaf, r in zip(leaves, low):
        assert leaf.grad.dtype == torch.float32
        torch.testing.assert_close(leaf.grad, r.grad.float())


def test_backward_runs_once():
    hidden, weight, bias, target = _problem(2, n=6, seed=9, dtype=torch.float32)
    h = hidden.clone().requires_grad_()
    out = fused_linear_rdrop_loss(h, weight, target, epsilon=0.1, alpha=1.0, passes=2,
                                  ignore_index=PAD)
    out.loss.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="backward called twice"):
        out.loss.backward()
    logits = (hidden @ weight.T).requires_grad_()
    out = chunked_rdrop_loss(logits, target, epsilon=0.1, alpha=1.0, passes=2, ignore_index=PAD)
    out.loss.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="backward called twice"):
        out.loss.backward()


def test_report_accuracy_off_and_bad_shapes():
    hidden, weight, bias, target = _problem(2, n=6, seed=10, dtype=torch.float32)
    out = fused_linear_rdrop_loss(hidden, weight, target, epsilon=0.1, alpha=1.0, passes=2,
                                  ignore_index=PAD, report_accuracy=False)
    assert out.n_correct is None
    with pytest.raises(ValueError, match="passes"):
        fused_linear_rdrop_loss(hidden, weight, target, epsilon=0.1, alpha=1.0, passes=3)
    with pytest.raises(ValueError, match="passes"):
        chunked_rdrop_loss(hidden @ weight.T, target, epsilon=0.1, alpha=1.0, passes=3)


# ---- the logits fallback -----------------------------------------------------
@pytest.mark.parametrize("passes", [1, 2, 3])
@pytest.mark.parametrize("alpha", [0.0, 0.7])
@pytest.mark.parametrize("epsilon", [0.0, 0.1])
@pytest.mark.parametrize("chunk_size", [3, None])
@pytest.mark.parametrize("dtype,rtol", [(torch.float32, 1e-5), (torch.float64, 1e-11)])
def test_chunked_matches_float64_reference(passes, alpha, epsilon, chunk_size, dtype, rtol):
    logits, target = random_batch(passes, n=10, vocab=13, pad=PAD, seed=passes + 20)
    ours_in = logits.to(dtype).requires_grad_()
    ref_in = logits.to(dtype).double().requires_grad_()
    out = chunked_rdrop_loss(ours_in, target, epsilon=epsilon, alpha=alpha, passes=passes,
                             ignore_index=PAD, chunk_size=chunk_size)
    ref_loss, ref_nll, ref_kl = reference_rdrop_loss(ref_in, target, epsilon, alpha, passes, PAD)
    _assert_close(out.loss, ref_loss.detach(), rtol)
    _assert_close(out.nll_loss, ref_nll.detach(), rtol)
    if passes > 1 and alpha > 0:
        _assert_close(out.kl, ref_kl.detach(), rtol)
    else:
        assert out.kl == 0
    out.loss.backward()
    ref_loss.backward()
    assert ours_in.grad.dtype == dtype
    _assert_close(ours_in.grad, ref_in.grad, 10 * rtol)
    pad_rows = target.eq(PAD).repeat(passes)
    assert ours_in.grad[pad_rows].abs().max() == 0


@pytest.mark.parametrize("passes", [2, 3])
@pytest.mark.parametrize("chunk_size", [1, 4, 64])
def test_chunked_logging_values_equal_unfused(passes, chunk_size):
    hidden, weight, bias, target = _problem(passes, n=23, vocab=17, seed=11, dtype=torch.float32)
    logits = F.linear(hidden, weight, bias)
    out = chunked_rdrop_loss(logits, target, epsilon=0.1, alpha=5.0, passes=passes,
                             ignore_index=PAD, chunk_size=chunk_size)
    ref, n_correct = _unfused(hidden, weight, bias, target, 0.1, 5.0, passes)
    # the same logits on both sides: only the sums' order differs (chunks vs the whole)
    rtol = sum_rtol(passes * 23 * 2 * 17)
    torch.testing.assert_close(out.loss, ref.loss, rtol=rtol, atol=0)
    torch.testing.assert_close(out.nll_loss, ref.nll_loss, rtol=rtol, atol=0)
    torch.testing.assert_close(out.kl, ref.kl, rtol=rtol, atol=rtol * float(ref.loss))
    assert 0 < int(n_correct) and int(out.n_correct) == int(n_correct)  # argmax of the same logits


def test_chunked_ignore_index_outside_vocabulary_and_no_grad():
    logits, target = random_batch(2, n=10, vocab=13, pad=PAD, seed=30)
    logits = logits.float()
    t100 = target.masked_fill(target.eq(PAD), -100)
    a = chunked_rdrop_loss(logits, target, epsilon=0.1, alpha=2.0, passes=2, ignore_index=PAD,
                           chunk_size=3)
    b = chunked_rdrop_loss(logits, t100, epsilon=0.1, alpha=2.0, passes=2, ignore_index=-100,
                           chunk_size=3)
    with torch.no_grad():
        c = chunked_rdrop_loss(logits.requires_grad_(), target, epsilon=0.1, alpha=2.0,
                               passes=2, ignore_index=PAD, chunk_size=3)
    assert not c.loss.requires_grad
    for x, y, z in zip(a, b, c):
        torch.testing.assert_close(x, y)
        torch.testing.assert_close(x, z)


# ---- bf16 / fp16 inputs ------------------------------------------------------
@pytest.mark.parametrize("dtype,tol", [(torch.bfloat16, 5e-2), (torch.float16, 1e-2)])
@pytest.mark.parametrize("device_gemm", [False, True])
def test_fused_low_precision_close_to_float32(dtype, tol, device_gemm, monkeypatch):
    # device_gemm: the accelerator strategy (gradient products in the input dtype, fp16
    # gradients scaled), exercised here on the CPU
    monkeypatch.setattr(projection, "use_low_precision_gemm", lambda device, dtype: device_gemm)
    hidden, weight, bias, target = _problem(2, n=40, hdim=16, vocab=50, seed=12,
                                            dtype=torch.float32)
    results = {}
    for dt in (torch.float32, dtype):
        leaves = [t.detach().to(dt).clone().requires_grad_() for t in (hidden, weight, bias)]
        out = fused_linear_rdrop_loss(leaves[0], leaves[1], target, bias=leaves[2],
                                      epsilon=0.1, alpha=5.0, passes=2, ignore_index=PAD,
                                      chunk_size=7)
        (1024.0 * out.loss).backward()  # a loss scale, as in mixed-precision training
        results[dt] = out, [leaf.grad for leaf in leaves]
    (ref, ref_grads), (low, low_grads) = results[torch.float32], results[dtype]
    assert low.loss.dtype == torch.float32
    torch.testing.assert_close(low.loss, ref.loss, rtol=tol / 5, atol=0)
    torch.testing.assert_close(low.nll_loss, ref.nll_loss, rtol=tol / 5, atol=0)
    torch.testing.assert_close(low.kl, ref.kl, rtol=tol, atol=0)
    for g, r in zip(low_grads, ref_grads):
        assert g.dtype == dtype and torch.isfinite(g).all()
        _assert_close(g.float(), r.double(), tol)


@pytest.mark.parametrize("dtype,tol", [(torch.bfloat16, 5e-2), (torch.float16, 1e-2)])
def test_chunked_low_precision_close_to_float32(dtype, tol):
    hidden, weight, bias, target = _problem(2, n=40, hdim=16, vocab=50, seed=13,
                                            dtype=torch.float32)
    logits = F.linear(hidden, weight, bias)
    results = {}
    for dt in (torch.float32, dtype):
        x = logits.detach().to(dt).clone().requires_grad_()
        out = chunked_rdrop_loss(x, target, epsilon=0.1, alpha=5.0, passes=2, ignore_index=PAD,
                                 chunk_size=7)
        (1024.0 * out.loss).backward()
        results[dt] = out, x.grad
    (ref, ref_grad), (low, low_grad) = results[torch.float32], results[dtype]
    torch.testing.assert_close(low.loss, ref.loss, rtol=tol / 5, atol=0)
    assert low_grad.dtype == dtype and torch.isfinite(low_grad).all()
    _assert_close(low_grad.float(), ref_grad.double(), tol)


def test_fp16_small_gradients_survive_until_the_loss_scale_is_applied():
    # confident predictions: most entries of the logit gradient are far below fp16's
    # smallest normal number (6e-5) before the loss scale multiplies them
    logits, target = random_batch(2, n=16, vocab=64, pad=PAD, seed=40, scale=6.0)
    ref_in = logits.half().float().requires_grad_()
    out = chunked_rdrop_loss(ref_in, target, epsilon=0.0, alpha=0.0, passes=2, ignore_index=PAD)
    (4096.0 * out.loss).backward()
    x = logits.half().requires_grad_()
    out = chunked_rdrop_loss(x, target, epsilon=0.0, alpha=0.0, passes=2, ignore_index=PAD)
    (4096.0 * out.loss).backward()
    ref = ref_in.grad
    # unscaled, these entries would be fp16 subnormals (< 6.1e-5: few significant bits);
    # FP16_GRAD_SCALE lifts them into the normal range
    unscaled = ref.abs() / 4096.0
    tiny = (unscaled < 6.1e-5) & (unscaled >= 6.1e-5 / FP16_GRAD_SCALE)
    assert tiny.sum() > 100
    rel = (x.grad.float()[tiny] - ref[tiny]).abs() / ref[tiny].abs()
    assert rel.max() < 2e-3


def test_a_nan_gradient_stays_nan_when_stored_scaled_in_float16_while_overflow_saturates():
    """Saturating an overflow is a rounding choice; a NaN is a broken step that fairseq's overflow
    check must still see (it skips the step and lowers the loss scale)."""
    grad = torch.tensor([[float("nan"), 1.0, 100.0], [-100.0, 2.0, 3.0]])
    out, clamped = torch.empty(2, 3, dtype=torch.float16), torch.zeros((), dtype=torch.int64)
    store_scaled(grad, out, FP16_GRAD_SCALE, clamped)
    assert out[0, 0].isnan() and out[0, 2] == FP16_MAX and out[1, 0] == -FP16_MAX
    assert torch.equal(out[:, 1], torch.tensor([1024.0, 2048.0], dtype=torch.float16))
    assert int(clamped) == 2


def test_fp16_gradient_entries_saturated_at_the_float16_maximum_are_counted():
    """float16 gradients are stored times FP16_GRAD_SCALE; an entry beyond float16's range then
    is saturated at its maximum, and the losses count such entries (fp16_grad_clamped)."""
    g = torch.Generator().manual_seed(41)
    n, vocab = 32, 64
    # two copies far apart: the KL's gradient, weighted by a large alpha, leaves float16's range
    logits = torch.cat([torch.randn(n, vocab, generator=g), 30 * torch.randn(n, vocab, generator=g)])
    target = torch.randint(2, vocab, (n,), generator=g)
    target[:5] = PAD
    kw = dict(epsilon=0.1, alpha=50.0, passes=2, ignore_index=PAD, chunk_size=8)
    # the same float32 gradient, formed in place: what the float16 path scales and stores
    ref_in = logits.half().float().requires_grad_()
    ref = chunked_rdrop_loss(ref_in, target, **kw)
    ref.loss.backward()
    assert ref.fp16_grad_clamped is None  # no float16: nothing stored scaled, nothing counted
    scaled = ref_in.grad * FP16_GRAD_SCALE
    overflow = scaled.half().isinf()
    x = logits.half().requires_grad_()
    out = chunked_rdrop_loss(x, target, **kw)
    out.loss.backward()
    assert out.fp16_grad_clamped.dtype == torch.int64 and int(out.fp16_grad_clamped) == int(overflow.sum()) > 10
    stored = torch.where(overflow, scaled.sign() * FP16_MAX, scaled).half()
    assert torch.equal(x.grad, (stored.float() / FP16_GRAD_SCALE).half())
    # nothing to saturate: counted as 0 (float16 inputs), without the gradient too
    mild = chunked_rdrop_loss(logits.half().requires_grad_(), target, **dict(kw, alpha=1.0))
    assert int(mild.fp16_grad_clamped) == 0
    with torch.no_grad():
        assert int(chunked_rdrop_loss(logits.half(), target, **kw).fp16_grad_clamped) == 0
    # the fused projection: float16 on a CPU multiplies in float32, nothing stored scaled
    hidden, weight, bias, target = _problem(2, seed=3, dtype=torch.float16)
    out = fused_linear_rdrop_loss(hidden.requires_grad_(), weight, target, bias=bias, epsilon=0.1,
                                  alpha=1.0, passes=2, ignore_index=PAD)
    assert out.fp16_grad_clamped.dtype == torch.int64
    hidden, weight, bias, target = _problem(2, seed=3, dtype=torch.float32)
    assert fused_linear_rdrop_loss(hidden.requires_grad_(), weight, target, bias=bias, epsilon=0.1,
                                   alpha=1.0, passes=2, ignore_index=PAD).fp16_grad_clamped is None


# ---- chunk size ---------------------------------------------------------------
def test_auto_chunk_size_minimum_and_precision():
    """The chunk sizes' memory is measured by the memory tests below; here what follows from
    the policy's stated rules: large chunks for small vocabularies, the ceiling for huge
    ones, smaller chunks where the inputs' low-precision copies are held too."""
    assert auto_chunk_size(8000, 512, 2) >= 400  # small vocabulary: large chunks
    # huge one: the minimum of 256 rows would hold 640 MB, so the ceiling bounds it
    c, per_position = auto_chunk_size(250000, 512, 2), 4 * 250000 * 5
    assert c < 128 and c * per_position <= chunking.CHUNK_CEILING_BYTES < (c + 8) * per_position
    assert auto_chunk_size(16000, 512, 2, low_precision=True) < auto_chunk_size(16000, 512, 2)
    # a narrow weight asks for few rows (hidden / 2): WikiText-103's largest tail cluster, 207,744
    # words behind a 64-wide projection, gets 16 positions (32 rows), not the 32 a floor of 64
    # rows gave (160 MiB of buffers, where the budget is 64 MiB)
    assert auto_chunk_size(207744, 64, 2, low_precision=True) == 16


def _first_chunk_buffers(monkeypatch, vocab, passes, n):
    """Measured: the positions of the first chunk the logits loss forms by default on the CPU,
    and the bytes of the float buffers its chunk core works in (log-probabilities/gradient,
    probabilities, KL scratch)."""
    seen = []
    real = loop_mod.chunk_core

    def spy(scores, ws, *rest):
        buffers = [t for t in ws if t is not None]
        seen.append((ws.logp.shape[1], sum(t.numel() * t.element_size() for t in buffers)))
        return real(scores, ws, *rest)

    monkeypatch.setattr(loop_mod, "chunk_core", spy)
    logits = torch.randn(passes * n, vocab, requires_grad=True)
    target = torch.randint(2, vocab, (n,))
    chunked_rdrop_loss(logits, target, epsilon=0.1, alpha=1.0, passes=passes, ignore_index=PAD)
    monkeypatch.undo()
    return seen[0]


def test_logits_chunk_size_is_cache_sized_on_cpu_and_large_elsewhere(monkeypatch):
    budget = chunking.CPU_LOGITS_CHUNK_BUDGET_BYTES
    for vocab, n in ((1000, 1024), (8000, 256), (32000, 64)):  # n: several chunks' positions
        for passes in (2, 3):
            c, buffers = _first_chunk_buffers(monkeypatch, vocab, passes, n)
            assert c == chunking.logits_chunk_size(vocab, passes, "cpu") < n
            # the buffers fit the budget, and 8 positions more would not
            assert buffers <= budget and buffers + 8 * buffers // c > budget
    # a huge vocabulary: the minimum, not a chunk per position
    assert chunking.logits_chunk_size(250000, 2, "cpu") == chunking.CPU_LOGITS_MIN_POSITIONS
    # GPUs: the large budget (fewer kernels)
    assert chunking.logits_chunk_size(8000, 2, "cuda") == auto_chunk_size(8000, 0, 2)
    assert chunking.logits_chunk_size(8000, 2, "cuda") > 4 * chunking.logits_chunk_size(8000, 2, "cpu")


def test_chunked_loss_uses_the_cpu_chunk_size_by_default(monkeypatch):
    seen = []
    real = loop_mod.chunk_core

    def spy(scores, ws, *rest):
        seen.append(ws.logp.shape[1])
        return real(scores, ws, *rest)

    monkeypatch.setattr(loop_mod, "chunk_core", spy)
    n, vocab = 100, 8000
    logits = torch.randn(2 * n, vocab, requires_grad=True)
    target = torch.randint(2, vocab, (n,))
    chunked_rdrop_loss(logits, target, epsilon=0.1, alpha=1.0, passes=2, ignore_index=1).loss.backward()
    c = chunking.logits_chunk_size(vocab, 2, "cpu")
    assert seen == [c] * (n // c) + ([n % c] if n % c else [])


# ---- memory -------------------------------------------------------------------
_MEMORY_SCRIPT = r"""
import importlib, json, os, sys
import torch
import torch.nn.functional as F

def load(name):
    sys.path.insert(0, sys.argv[1])
    return importlib.import_module("rdrop_seq." + name)

torch.set_num_threads(2)
which = sys.argv[2]
shape = dict(n=2048, hdim=256, vocab=8000, chunk_size=None)
shape.update(json.loads(sys.argv[3]) if len(sys.argv) > 3 else {})
n, hdim, vocab = shape["n"], shape["hdim"], shape["vocab"]
g = torch.Generator().manual_seed(0)
hidden = torch.randn(2 * n, hdim, generator=g).requires_grad_()
weight = (torch.randn(vocab, hdim, generator=g) / hdim ** 0.5).requires_grad_()
target = torch.randint(2, vocab, (n,), generator=g)
target[:100] = 1
if which == "fused":
    fused = load("fused")
    loss_fn = lambda: fused.fused_linear_rdrop_loss(
        hidden, weight, target, epsilon=0.1, alpha=5.0, passes=2, ignore_index=1,
        chunk_size=shape["chunk_size"]).loss
else:
    losses = load("losses")
    loss_fn = lambda: losses.rdrop_label_smoothed_loss(
        F.log_softmax(hidden @ weight.T, -1), target, 0.1, 5.0, 2, 1).loss

def step():
    hidden.grad = weight.grad = None
    loss_fn().backward()

def status(key):
    with open("/proc/self/status") as f:
        return next(int(l.split()[1]) * 1024 for l in f if l.startswith(key))

step()
hidden.grad = weight.grad = None
before = status("VmRSS:")
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")
step()
print(json.dumps({"step_bytes": status("VmHWM:") - before}))
"""


def _step_peak_bytes(which, **shape):
    """Peak memory (resident-set high-water mark) one training step adds, measured in a
    fresh process: the loss of ``[2*n, hdim]`` hidden states over ``vocab`` words."""
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536")
    proc = subprocess.run([sys.executable, "-c", _MEMORY_SCRIPT, REPO, which, json.dumps(shape)],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])["step_bytes"]


@pytest.mark.memory
@pytest.mark.skipif(not os.path.exists("/proc/self/clear_refs"), reason="needs Linux /proc")
@pytest.mark.parametrize("vocab, n", [(8000, 2048), (32000, 1024)])
def test_fused_step_holds_at_most_one_chunk_budget_of_buffers(vocab, n):
    """Measured: what a fused training step holds beyond the gradients it returns is at most
    the automatic chunk's buffers, about the chunk budget, and a small explicit chunk holds
    little.  That the automatic chunk uses the budget (not needlessly less) is the chunk
    policy's, asserted on the sizes the code chooses, not on the allocator's resident set."""
    hdim = 256
    grads = 4 * (2 * n * hdim + vocab * hdim)  # float32 gradients of the hidden states and the weight
    budget = chunking.CHUNK_BUDGET_BYTES
    assert 4 * 2 * n * vocab > 1.5 * budget  # one logits tensor would not fit in the budget
    buffers = _step_peak_bytes("fused", n=n, hdim=hdim, vocab=vocab) - grads
    assert buffers <= 1.25 * budget
    per_position = chunking._bytes_per_position(vocab, 2, True, False)
    assert auto_chunk_size(vocab, hdim, 2) * per_position >= 0.75 * budget
    small = _step_peak_bytes("fused", n=n, hdim=hdim, vocab=vocab, chunk_size=8) - grads
    assert small < 0.25 * buffers


@pytest.mark.memory
@pytest.mark.skipif(not os.path.exists("/proc/self/clear_refs"), reason="needs Linux /proc")
def test_fused_peak_memory_far_below_unfused():
    logits_bytes = 2 * 2048 * 8000 * 4  # one float32 [m*N, V] tensor: 131 MB
    unfused = _step_peak_bytes("unfused")
    fused = _step_peak_bytes("fused")
    # unfused: logits, log-probs, their gradients... (about 5 such tensors at the peak)
    assert unfused > 3 * logits_bytes
    # fused: not even one of them (the default chunks keep ~64 MB of buffers)
    assert fused < 0.75 * logits_bytes
    assert fused < 0.2 * unfused


def test_the_fused_losses_refuse_a_second_derivative_instead_of_giving_a_wrong_one():
    """Their gradients are computed in the forward: a double backward has no graph to follow."""
    hidden, weight, bias, target = _problem(2, seed=5, dtype=torch.float32)
    hidden.requires_grad_()
    out = fused_linear_rdrop_loss(hidden, weight, target, bias=bias, epsilon=0.1, alpha=1.0, passes=2,
                                  ignore_index=PAD)
    (grad,) = torch.autograd.grad(out.loss, hidden, create_graph=True)
    with pytest.raises(RuntimeError, match="once_differentiable|differentiate twice|does not require grad"):
        torch.autograd.grad(grad.sum(), hidden)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("stored_scale", [1.0, FP16_GRAD_SCALE])
@pytest.mark.parametrize("grad_loss", [1.0, 0.37, 3e-3, 65536.0])
def test_a_low_precision_gradient_scaled_on_the_device_equals_the_host_number_path(dtype, stored_scale, grad_loss):
    """On an accelerator the incoming gradient is not read on the host (no wait for the device):
    the float32 multiplication on the device gives the same bits as the host-number path, a
    float16 loss scale of 2^16 included (it would be infinity rounded to float16), in small
    row blocks too."""
    g = (torch.randn(300, 77, generator=torch.Generator().manual_seed(5)) * 5).to(dtype)
    expected = g.clone().mul_(grad_loss / stored_scale)
    factor = torch.tensor(grad_loss) / stored_scale
    assert torch.equal(mul_in_float32(g.clone(), factor), expected)
    assert torch.equal(mul_in_float32(g.clone(), factor, elements=500), expected)  # 6-row blocks
    assert torch.equal(mul_in_float32(g[0].clone(), factor), expected[0])


def test_scaling_stored_gradients_never_reads_an_accelerators_incoming_gradient(monkeypatch):
    """The backward's only use of the incoming gradient on an accelerator stays on the device."""
    grads = [torch.ones(4, 3, dtype=torch.bfloat16), torch.ones(2, dtype=torch.float16) * 1024, None]

    class OnDevice:  # an incoming gradient whose device is not the CPU: reading it fails the test
        device = torch.device("meta")

        def float(self):
            return torch.tensor(0.5)

        def __float__(self):
            raise AssertionError("the incoming gradient was read on the host")

    monkeypatch.setattr(torch.Tensor, "item", lambda self: pytest.fail("item() called"))
    out = scale_stored_grads(grads, [torch.bfloat16, torch.float16, None], OnDevice(), stored_scale=1.0)
    assert torch.equal(out[0], torch.full((4, 3), 0.5, dtype=torch.bfloat16))
    assert torch.equal(out[1], torch.full((2,), 512.0, dtype=torch.float16)) and out[2] is None
