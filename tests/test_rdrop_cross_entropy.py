"""``rdrop_cross_entropy`` inside real fairseq language models.

A full-softmax Transformer LM against the stock ``cross_entropy`` on the
doubled batch and against the float64 reference (fused and unfused), and
fairseq's recurrent and convolutional LMs (the logits path).  Validation, the
same property in every family, is in ``test_criterion_families.py``.
"""

import pytest
import torch

from fairseq.criterions.cross_entropy import CrossEntropyCriterion
from tests.conftest import DEVICES
from tests.fairseq_helpers import check_step_against_reference, doubled, grads, to_device
from tests.lm_helpers import OTHER_LMS, PAD, ce_criterion, lm_model, lm_task, other_lm, random_lm_batch


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



@pytest.mark.parametrize("arch", sorted(OTHER_LMS))
def test_cross_entropy_matches_reference_inside_recurrent_and_convolutional_lms(arch):
    task = lm_task()
    model = other_lm(task, arch, **OTHER_LMS[arch])
    model.train()
    crit = ce_criterion(task, rdrop_alpha=1.0, rdrop_passes=2)
    check_step_against_reference(model, crit, random_lm_batch(seed=2, collide=False), 0.0, 1.0, 2, PAD, True)


def test_lm_criterions_default_to_the_papers_lm_alpha():
    from rdrop_seq.criterions.config import RDropConfig
    from rdrop_seq.criterions.rdrop_adaptive_loss import RDropAdaptiveLossConfig
    from rdrop_seq.criterions.rdrop_cross_entropy import RDropCrossEntropyConfig

    assert RDropCrossEntropyConfig.__dataclass_fields__["rdrop_alpha"].default == 1.0
    assert RDropAdaptiveLossConfig.__dataclass_fields__["rdrop_alpha"].default == 1.0
    assert RDropConfig.__dataclass_fields__["rdrop_alpha"].default == 5.0  # translation
