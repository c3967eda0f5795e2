"""``rdrop_cross_entropy`` inside real fairseq language models.

A full-softmax Transformer LM against the float64 reference (fused and
unfused), and fairseq's recurrent and convolutional LMs (the logits path).
Against the stock ``cross_entropy`` (on the doubled batch, in validation): the
properties every family shares, in ``test_criterion_families.py``.
"""

import pytest

from tests.conftest import DEVICES
from tests.fairseq_helpers import check_step_against_reference, to_device
from tests.lm_helpers import OTHER_LMS, PAD, ce_criterion, lm_model, lm_task, other_lm, random_lm_batch


@pytest.fixture()
def full_lm():
    task = lm_task()
    return task, lm_model(task, arch="transformer_lm", share_decoder_input_output_embed=True)


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
