"""The fused adaptive-softmax R-Drop loss (both KL modes) against float64 references.

Random scores and small head/tail modules with padding, words in every tail
cluster, the word whose in-cluster index equals the pad index, m = 2 and 3, and
chunk sizes that split the clusters' positions unevenly.  Values and gradients
(w.r.t. the scores in ``head`` mode; the softmax's input and every parameter of
its modules in ``full`` mode).
"""

import copy

import pytest
import torch
from torch import nn

from rdrop_seq.fused.adaptive import adaptive_full_rdrop_loss, adaptive_head_rdrop_loss
from rdrop_seq.adaptive_kl import cluster_positions
from rdrop_seq.fused import chunked_rdrop_loss
from tests.reference_lm import random_adaptive_batch, reference_adaptive_full, reference_adaptive_head

PAD = 1
CUTOFF = [6, 13, 21]  # head: words 0..5 + 2 clusters; tails 6..12 and 13..20


def head_mode_scores(tails, target, passes):
    """Each cluster's scores where the target is in it (copy-major) and its in-cluster targets."""
    n = target.numel()
    rows, targets = [], []
    for i, pos in enumerate(cluster_positions(target, CUTOFF)):
        assert pos is not None, "every tail cluster must be hit"
        rows.append(tails[i][torch.cat([pos + c * n for c in range(passes)])])
        targets.append(target[pos] - CUTOFF[i])
    return rows, targets


def head_classes(target):
    """The head's target: the word, or c_0 + i for a word of tail cluster i."""
    out = target.clone()
    for i in range(len(CUTOFF) - 1):
        out[(target >= CUTOFF[i]) & (target < CUTOFF[i + 1])] = CUTOFF[0] + i
    return out


@pytest.mark.parametrize("given", ["scores", "projections", "blocks"])
@pytest.mark.parametrize("chunk_size", [None, 1, 4])
@pytest.mark.parametrize("passes", [2, 3])
def test_head_mode_matches_reference_value_and_gradient(passes, chunk_size, given):
    """The head's and the tails' scores given, or the (input, weight) pairs they are the products
    of (then fused with the loss; the head's weight also as row blocks); gradients w.r.t. what
    was given."""
    _, tails, target = random_adaptive_batch(passes, 17, CUTOFF, PAD, seed=passes)
    g = torch.Generator().manual_seed(passes)
    tail_rows, tail_targets = head_mode_scores(tails, target, passes)
    assert all(t.numel() >= 2 for t in tail_targets)  # chunks of 4 split them unevenly
    # float64 (input, weight) of every cluster: the head's at every position, each tail's where
    # the target is in it (tail i's input of width 8 / 2 ** (i + 1))
    pairs = [(torch.randn(passes * target.numel(), 8, generator=g, dtype=torch.float64),
              torch.randn(CUTOFF[0] + 2, 8, generator=g, dtype=torch.float64))]
    pairs += [(torch.randn(rows.size(0), 8 // 2 ** (i + 1), generator=g, dtype=torch.float64),
               torch.randn(rows.size(1), 8 // 2 ** (i + 1), generator=g, dtype=torch.float64))
              for i, rows in enumerate(tail_rows)]
    # ours: float32 leaves (the scores, or the pairs they come from)
    if given == "scores":
        leaves = [(h @ w.t()).float().requires_grad_() for h, w in pairs]
        ours = leaves
        ref_leaves = [(h @ w.t()).requires_grad_() for h, w in pairs]
        ref_scores = ref_leaves
    else:  # "blocks": the head's weight as two row blocks (as fairseq's tied head keeps it)
        def split(w, i):
            return [w[:4], w[4:]] if given == "blocks" and i == 0 else [w]

        def leaf_pairs(dtype):
            return [(h.to(dtype).requires_grad_(), [b.to(dtype).requires_grad_() for b in split(w, i)])
                    for i, (h, w) in enumerate(pairs)]

        ours = [(h, ws if len(ws) > 1 else ws[0]) for h, ws in leaf_pairs(torch.float32)]
        leaves = [t for h, w in ours for t in [h] + (w if isinstance(w, list) else [w])]
        ref_pairs = leaf_pairs(torch.float64)
        ref_leaves = [t for h, ws in ref_pairs for t in [h] + ws]
        ref_scores = [h @ torch.cat(ws).t() for h, ws in ref_pairs]
    out = adaptive_head_rdrop_loss(
        ours[0], ours[1:], head_classes(target), tail_targets,
        alpha=1.5, passes=passes, ignore_index=PAD, chunk_size=chunk_size,
    )
    ref_loss, ref_nll, ref_kl = reference_adaptive_head(
        ref_scores[0], ref_scores[1:], target, CUTOFF, 1.5, passes, PAD)
    assert out.loss.dtype == torch.float32 and ref_kl > 0
    torch.testing.assert_close(out.loss.double(), ref_loss, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(out.nll_loss.double(), ref_nll.detach(), rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(out.kl.double(), ref_kl.detach(), rtol=1e-5, atol=1e-5)
    out.loss.backward()
    ref_loss.backward()
    for a, b in zip(leaves, ref_leaves):
        torch.testing.assert_close(a.grad.double(), b.grad, rtol=1e-4, atol=1e-5)
    assert leaves[0].grad[target.eq(PAD).repeat(passes)].abs().max() == 0


def test_head_mode_counts_the_tail_word_that_collides_with_the_pad_index():
    passes = 2
    head, tails, target = random_adaptive_batch(passes, 12, CUTOFF, PAD, seed=3)
    tail_rows, tail_targets = head_mode_scores(tails, target, passes)
    assert any(t.eq(PAD).any() for t in tail_targets)
    out = adaptive_head_rdrop_loss(head, tail_rows, head_classes(target), tail_targets,
                                   alpha=1.0, passes=passes, ignore_index=PAD)
    _, ref_nll, ref_kl = reference_adaptive_head(head, tail_rows, target, CUTOFF, 1.0, passes, PAD)
    assert out.loss.dtype == torch.float64  # float64 in, float64 math
    torch.testing.assert_close(out.nll_loss, ref_nll, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(out.kl, ref_kl, rtol=1e-10, atol=1e-10)


class Softmax(nn.Module):
    """A small adaptive softmax's head and tails (projection, dropout, output), float64."""

    def __init__(self, dim=8, tied=False, seed=0):
        super().__init__()
        torch.manual_seed(seed)
        k = len(CUTOFF) - 1
        self.head = nn.Linear(dim, CUTOFF[0] + k, bias=False)
        self.tail = nn.ModuleList(
            nn.Sequential(nn.Linear(dim, dim // 2 ** (i + 1), bias=False), nn.Dropout(0.0),
                          nn.Linear(dim // 2 ** (i + 1), CUTOFF[i + 1] - CUTOFF[i], bias=False))
            for i in range(k)
        )
        if tied:  # one weight in two modules (as fairseq's tied adaptive input and output)
            self.tail[1][0] = nn.Linear(dim, dim // 2, bias=False)
            self.tail[1][0].weight = self.tail[0][0].weight
            self.tail[1][2] = nn.Linear(dim // 2, CUTOFF[2] - CUTOFF[1], bias=False)
        self.double()


def full_reference(sm, x, target, alpha, passes):
    scores = [sm.head(x)] + [t(x) for t in sm.tail]
    return reference_adaptive_full(scores[0], scores[1:], target, CUTOFF, alpha, passes, PAD)


@pytest.mark.parametrize("chunk_size", [None, 1, 5])
@pytest.mark.parametrize("passes, tied", [(2, False), (3, False), (2, True)])
def test_full_mode_matches_reference_value_and_gradients(passes, tied, chunk_size):
    _, _, target = random_adaptive_batch(passes, 13, CUTOFF, PAD, seed=5)
    sm = Softmax(tied=tied)
    g = torch.Generator().manual_seed(1)
    x = (torch.randn(passes * target.numel(), 8, generator=g, dtype=torch.float64) * 2).requires_grad_()
    ref_loss, ref_nll, ref_kl = full_reference(sm, x, target, 1.5, passes)
    ref_loss.backward()
    ref_grads = [x.grad] + [p.grad for p in sm.parameters()]

    sm32 = copy.deepcopy(sm).float()
    sm32.zero_grad()
    x32 = x.detach().float().requires_grad_()
    out = adaptive_full_rdrop_loss(x32, sm32.head, sm32.tail, CUTOFF, target, alpha=1.5, passes=passes,
                                   ignore_index=PAD, chunk_size=chunk_size)
    assert out.loss.dtype == torch.float32 and ref_kl > 0
    torch.testing.assert_close(out.loss.double(), ref_loss.detach(), rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(out.nll_loss.double(), ref_nll.detach(), rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(out.kl.double(), ref_kl.detach(), rtol=1e-5, atol=1e-5)
    out.loss.backward()
    ours = [x32.grad] + [p.grad for p in sm32.parameters()]
    assert len(ours) == len(ref_grads)
    for a, b in zip(ours, ref_grads):
        torch.testing.assert_close(a.double(), b, rtol=1e-4, atol=1e-5)
    assert x32.grad[target.eq(PAD).repeat(passes)].abs().max() == 0


def test_full_mode_in_float64_is_the_reference_to_rounding_and_scales_by_the_incoming_gradient():
    passes = 2
    _, _, target = random_adaptive_batch(passes, 11, CUTOFF, PAD, seed=6)
    sm = Softmax(seed=2)
    x = torch.randn(passes * target.numel(), 8, dtype=torch.float64).requires_grad_()
    ref_loss, _, _ = full_reference(sm, x, target, 2.0, passes)
    (3.0 * ref_loss).backward()
    ref_grads = [x.grad.clone()] + [p.grad.clone() for p in sm.parameters()]
    x.grad = None
    sm.zero_grad()
    out = adaptive_full_rdrop_loss(x, sm.head, sm.tail, CUTOFF, target, alpha=2.0, passes=passes,
                                   ignore_index=PAD, chunk_size=3)
    torch.testing.assert_close(out.loss, ref_loss.detach(), rtol=1e-12, atol=1e-10)
    (3.0 * out.loss).backward()
    for a, b in zip([x.grad] + [p.grad for p in sm.parameters()], ref_grads):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)
    with pytest.raises(RuntimeError, match="backward called twice"):
        out2 = adaptive_full_rdrop_loss(x, sm.head, sm.tail, CUTOFF, target, alpha=2.0, passes=passes,
                                        ignore_index=PAD)
        out2.loss.backward(retain_graph=True)
        out2.loss.backward()


def test_full_mode_values_without_grad_equal_those_with_grad():
    passes = 3
    _, _, target = random_adaptive_batch(passes, 9, CUTOFF, PAD, seed=7)
    sm = Softmax(seed=3).float()
    x = torch.randn(passes * target.numel(), 8)
    with torch.no_grad():
        a = adaptive_full_rdrop_loss(x, sm.head, sm.tail, CUTOFF, target, alpha=1.0, passes=passes,
                                     ignore_index=PAD, chunk_size=2)
    b = adaptive_full_rdrop_loss(x.requires_grad_(), sm.head, sm.tail, CUTOFF, target, alpha=1.0,
                                 passes=passes, ignore_index=PAD, chunk_size=2)
    for u, v in zip(a[:3], b[:3]):
        torch.testing.assert_close(u, v.detach())


def test_full_mode_bfloat16_modules_compute_in_float32_close_to_float32():
    passes = 2
    _, _, target = random_adaptive_batch(passes, 15, CUTOFF, PAD, seed=8)
    sm = Softmax(seed=4).float()
    x = torch.randn(passes * target.numel(), 8)
    ref = adaptive_full_rdrop_loss(x, sm.head, sm.tail, CUTOFF, target, alpha=1.0, passes=passes,
                                   ignore_index=PAD)
    sm16 = copy.deepcopy(sm).bfloat16()
    x16 = x.bfloat16().requires_grad_()
    out = adaptive_full_rdrop_loss(x16, sm16.head, sm16.tail, CUTOFF, target, alpha=1.0, passes=passes,
                                   ignore_index=PAD, chunk_size=4)
    assert out.loss.dtype == torch.float32 and torch.isfinite(out.loss)
    torch.testing.assert_close(out.loss, ref.loss.detach(), rtol=2e-2, atol=0.5)
    out.loss.backward()
    assert x16.grad.dtype == torch.bfloat16 and torch.isfinite(x16.grad.float()).all()
    for p in sm16.parameters():
        assert p.grad.dtype == torch.bfloat16 and torch.isfinite(p.grad.float()).all()


def test_shape_errors_are_clear():
    sm = Softmax().float()
    target = torch.tensor([3, 7, 15])
    with pytest.raises(ValueError, match="expected passes"):
        adaptive_full_rdrop_loss(torch.randn(5, 8), sm.head, sm.tail, CUTOFF, target, alpha=1.0,
                                 passes=2, ignore_index=PAD)
    with pytest.raises(ValueError, match="tail modules"):
        adaptive_full_rdrop_loss(torch.randn(6, 8), sm.head, sm.tail[:1], CUTOFF, target, alpha=1.0,
                                 passes=2, ignore_index=PAD)
    with pytest.raises(ValueError, match="one entry per cluster"):
        adaptive_head_rdrop_loss(torch.randn(6, 8), [None], target, [None, None], alpha=1.0, passes=2,
                                 ignore_index=PAD)


class _ToFloat32(nn.Module):
    def forward(self, x):
        return x.float()


def test_full_mode_outputs_of_mixed_dtypes_get_their_gradients_at_one_scale():
    """A float16 head beside a tail whose output is float32 (a module ending in a cast, as
    some layers do under autocast): the gradients that reach the shared input sum both outputs'
    contributions, so every output's gradient is scaled alike and unscaled once."""
    passes = 2
    _, _, target = random_adaptive_batch(passes, 15, CUTOFF, PAD, seed=9)
    sm = Softmax(seed=6).float()
    x = torch.randn(passes * target.numel(), 8, generator=torch.Generator().manual_seed(2))
    ref = copy.deepcopy(sm)
    x32 = x.clone().requires_grad_()
    adaptive_full_rdrop_loss(x32, ref.head, ref.tail, CUTOFF, target, alpha=1.0, passes=passes,
                             ignore_index=PAD).loss.backward()
    mixed = copy.deepcopy(sm).half()
    mixed.tail[0].append(_ToFloat32())
    x16 = x.half().requires_grad_()
    out = adaptive_full_rdrop_loss(x16, mixed.head, mixed.tail, CUTOFF, target, alpha=1.0, passes=passes,
                                   ignore_index=PAD, chunk_size=4)
    out.loss.backward()
    assert x16.grad.dtype == torch.float16
    torch.testing.assert_close(x16.grad.float(), x32.grad, rtol=5e-2, atol=5e-3)


def test_saturated_fp16_gradient_entries_are_counted_in_both_modes():
    """float16 scores' gradients are stored scaled (FP16_GRAD_SCALE) and saturate at float16's
    maximum: both modes count the saturated entries (head mode: summed over the clusters'
    losses), None where nothing is float16."""
    passes, alpha = 2, 200.0
    head, tails, target = random_adaptive_batch(passes, 15, CUTOFF, PAD, seed=11, scale=20.0)
    tail_rows, tail_targets = head_mode_scores(tails, target, passes)
    kw = dict(alpha=alpha, passes=passes, ignore_index=PAD)
    half = [head.half().requires_grad_()] + [t.half().requires_grad_() for t in tail_rows]
    out = adaptive_head_rdrop_loss(half[0], half[1:], head_classes(target), tail_targets, **kw)
    apart = [chunked_rdrop_loss(half[0].detach().requires_grad_(), head_classes(target), epsilon=0.0, **kw)]
    apart += [chunked_rdrop_loss(t.detach().requires_grad_(), tt, epsilon=0.0, alpha=alpha, passes=passes, ignore_index=None)
              for t, tt in zip(half[1:], tail_targets)]
    assert int(out.fp16_grad_clamped) == sum(int(a.fp16_grad_clamped) for a in apart) > 0
    assert adaptive_head_rdrop_loss(head, tail_rows, head_classes(target), tail_targets,
                                    **kw).fp16_grad_clamped is None

    sm = Softmax(seed=3)
    g = torch.Generator().manual_seed(4)
    x = torch.cat([torch.randn(target.numel(), 8, generator=g, dtype=torch.float64),
                   30 * torch.randn(target.numel(), 8, generator=g, dtype=torch.float64)])
    full = adaptive_full_rdrop_loss(x.requires_grad_(), sm.head, sm.tail, CUTOFF, target, **kw)
    assert full.fp16_grad_clamped is None
    sm16 = copy.deepcopy(sm).half()
    x16 = x.detach().half().requires_grad_()
    full = adaptive_full_rdrop_loss(x16, sm16.head, sm16.tail, CUTOFF, target, chunk_size=4, **kw)
    assert full.fp16_grad_clamped.dtype == torch.int64 and int(full.fp16_grad_clamped) > 0
