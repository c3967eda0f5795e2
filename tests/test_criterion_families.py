"""Properties every token-level R-Drop criterion shares, one test per property,
parametrised over the criterion families: ``rdrop_label_smoothed_cross_entropy``
(a tiny translation transformer), ``rdrop_cross_entropy`` (a full-softmax LM) and
``rdrop_adaptive_loss`` in both KL modes (an Adaptive Transformer LM)."""

import copy
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from fairseq.criterions.adaptive_loss import AdaptiveLoss
from fairseq.criterions.cross_entropy import CrossEntropyCriterion
from fairseq.criterions.label_smoothed_cross_entropy import LabelSmoothedCrossEntropyCriterion
from fairseq.logging import metrics
from rdrop_seq.criterions.rdrop_label_smoothed_cross_entropy import (
    RDropLabelSmoothedCrossEntropyCriterion,
)
from tests.fairseq_helpers import build_from_dataclass, grads, tiny_transformer, translation_batch, translation_task
from tests.lm_helpers import adaptive_criterion, ce_criterion, lm_model, lm_task, random_lm_batch

FAMILIES = ["translation", "cross_entropy", "adaptive-full", "adaptive-head"]


def family(name, lm_sample=None):
    """The family's model, sample (for the LMs ``lm_sample`` where given), its R-Drop
    criterion at the defaults, the stock criterion it extends, and which of the stock
    figures it reproduces in validation."""
    if name == "translation":
        task = translation_task()
        model = tiny_transformer(task)
        sample = translation_batch(task, batch_size=5, seed=1)
        assert sample["target"].eq(task.tgt_dict.pad()).any(), "the batch must contain padding"
        ours = build_from_dataclass(
            RDropLabelSmoothedCrossEntropyCriterion, task, label_smoothing=0.1, report_accuracy=True,
            rdrop_alpha=5.0,
        )
        ours.set_num_updates(0)
        stock = LabelSmoothedCrossEntropyCriterion(task, False, 0.1, report_accuracy=True)
        return SimpleNamespace(model=model, sample=sample, ours=ours, stock=stock, same_nll=True,
                               metrics=("loss", "nll_loss", "ppl", "accuracy"))
    task = lm_task()
    if name == "cross_entropy":
        model = lm_model(task, arch="transformer_lm", share_decoder_input_output_embed=True)
        return SimpleNamespace(model=model, sample=lm_sample or random_lm_batch(seed=4, collide=True),
                               ours=ce_criterion(task), stock=CrossEntropyCriterion(task, False),
                               same_nll=False, metrics=("loss", "ppl"))
    mode = name.split("-")[1]
    return SimpleNamespace(model=lm_model(task), sample=lm_sample or random_lm_batch(seed=4, collide=False),
                           ours=adaptive_criterion(task, mode), stock=AdaptiveLoss(task, False),
                           same_nll=False, metrics=("loss", "ppl"))


@pytest.mark.parametrize("name", FAMILIES)
def test_validation_is_the_stock_single_pass(name):
    f = family(name)
    f.model.eval()
    with torch.no_grad():
        loss, size, log = f.ours(f.model, f.sample)
        s_loss, s_size, s_log = f.stock(f.model, f.sample)
    assert torch.equal(loss, s_loss.view(())) and size == s_size
    if f.same_nll:
        assert torch.equal(log["nll_loss"], s_log["nll_loss"])
    assert "rdrop_kl" not in log
    # reduced metrics match the stock criterion's
    with metrics.aggregate(new_root=True) as ours:
        type(f.ours).reduce_metrics([log])
    with metrics.aggregate(new_root=True) as stock:
        type(f.stock).reduce_metrics([s_log])
    for key in f.metrics:
        assert ours.get_smoothed_value(key) == stock.get_smoothed_value(key), key


@pytest.mark.parametrize("name", FAMILIES)
def test_bfloat16_model_gives_finite_loss_close_to_float32(name):
    f = family(name, lm_sample=random_lm_batch(seed=8, collide=True))
    atol = 0.5 if name == "translation" else 1.0
    model, crit, sample = f.model, f.ours, f.sample
    model.train()
    torch.manual_seed(11)
    loss32, _, log32 = crit(model, sample)
    loss32.backward()
    g32 = grads(model)
    model16 = copy.deepcopy(model).bfloat16()
    model16.zero_grad()
    torch.manual_seed(11)
    loss16, _, log16 = crit(model16, sample)
    loss16.backward()
    assert loss16.dtype == torch.float32 and torch.isfinite(loss16)
    assert log16["rdrop_kl"].dtype == torch.float32 and torch.isfinite(log16["rdrop_kl"])
    torch.testing.assert_close(loss16, loss32.detach(), rtol=5e-2, atol=atol)
    for param_name, p in model16.named_parameters():
        if p.grad is not None:
            assert torch.isfinite(p.grad.float()).all(), param_name
    cos = F.cosine_similarity(
        torch.cat([g.flatten() for g in g32.values()]),
        torch.cat([p.grad.float().flatten() for p in model16.parameters() if p.grad is not None]),
        dim=0,
    )
    assert cos > 0.9
