"""The KL between adaptive softmaxes (rdrop_seq/adaptive_kl.py) against float64 references.

``head`` and ``full`` modes on random scores with padding, words in every tail
cluster and the pad collision (a real word whose in-cluster index equals the
pad index).
"""

import pytest
import torch
import torch.nn.functional as F

from fairseq.modules.adaptive_softmax import AdaptiveSoftmax
from rdrop_seq.adaptive_kl import adaptive_head_kl, adaptive_log_probs, cluster_positions
from rdrop_seq.losses import rdrop_cross_entropy_loss
from tests.lm_helpers import CUTOFF, PAD
from tests.reference_lm import (
    random_adaptive_batch,
    reference_adaptive_full,
    reference_adaptive_head,
    reference_full_log_probs,
)


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
