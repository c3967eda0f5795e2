"""Properties every token-level R-Drop criterion shares, one test per property,
parametrised over the criterion families: ``rdrop_label_smoothed_cross_entropy``
(a tiny translation transformer), ``rdrop_cross_entropy`` (a full-softmax LM) and
``rdrop_adaptive_loss`` in both KL modes (an Adaptive Transformer LM)."""

import copy
import math
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from fairseq.criterions.adaptive_loss import AdaptiveLoss
from fairseq.criterions.cross_entropy import CrossEntropyCriterion
from fairseq.criterions.label_smoothed_cross_entropy import LabelSmoothedCrossEntropyCriterion
from fairseq.logging import metrics
from tests.fairseq_helpers import (
    criterion_step, doubled, grads, output_argmax_slack, tiny_transformer, translation_batch, translation_criterion,
    translation_task,
)
from tests.lm_helpers import adaptive_criterion, ce_criterion, lm_model, lm_task, random_lm_batch

FAMILIES = ["translation", "cross_entropy", "adaptive-full", "adaptive-head"]


def family(name, lm_seed=4, collide=None):
    """One family's model and sample (for the LMs: ``random_lm_batch(lm_seed, collide)``,
    ``collide`` by default with the pad collision for ``cross_entropy`` only), ``make(**flags)``
    building its R-Drop criterion (``ours``: at the defaults), the stock criterion it extends,
    and how its figures compare with the stock ones: ``stock_nll``, the stock log's key of
    the NLL, where both log it; ``metrics``, the reduced metrics both report; ``fused_tol``,
    the (rtol, atol) of the fused loss and of the gradients against the stock ones."""
    if name == "translation":
        task = translation_task()
        model = tiny_transformer(task)
        sample = translation_batch(task, batch_size=5, seed=1)
        assert sample["target"].eq(task.tgt_dict.pad()).any(), "the batch must contain padding"

        make = lambda **flags: translation_criterion(task, **flags)  # noqa: E731
        stock = LabelSmoothedCrossEntropyCriterion(task, False, 0.1, report_accuracy=True)
        return SimpleNamespace(model=model, sample=sample, make=make, ours=make(), stock=stock,
                               stock_nll="nll_loss", metrics=("loss", "nll_loss", "ppl", "accuracy"),
                               fused_tol=((1e-6, 1e-5), (1e-5, 1e-6)))
    task = lm_task()
    if name == "cross_entropy":
        model = lm_model(task, arch="transformer_lm", share_decoder_input_output_embed=True)
        sample = random_lm_batch(seed=lm_seed, collide=True if collide is None else collide)
        make = lambda **flags: ce_criterion(task, **flags)  # noqa: E731
        return SimpleNamespace(model=model, sample=sample, make=make, ours=make(),
                               stock=CrossEntropyCriterion(task, False), stock_nll=None,
                               metrics=("loss", "ppl"), fused_tol=((1e-6, 1e-4), (1e-4, 1e-6)))
    mode = name.split("-")[1]
    sample = random_lm_batch(seed=lm_seed, collide=bool(collide))
    make = lambda **flags: adaptive_criterion(task, mode, **flags)  # noqa: E731
    return SimpleNamespace(model=lm_model(task), sample=sample, make=make, ours=make(),
                           stock=AdaptiveLoss(task, False), stock_nll="loss", metrics=("loss", "ppl"),
                           fused_tol=((1e-5, 1e-6), (1e-5, 1e-6)))


@pytest.mark.parametrize("no_fused", [True, False], ids=["unfused", "fused"])
@pytest.mark.parametrize("name", FAMILIES)
def test_alpha_zero_equals_stock_on_the_doubled_batch(name, no_fused):
    """Loss, NLL, accuracy counts, sizes and every gradient: bitwise with --rdrop-no-fused,
    the fused loss to float rounding."""
    f = family(name, lm_seed=1)
    model, sample = f.model, f.sample
    model.train()
    torch.manual_seed(7)
    loss, size, log = f.make(rdrop_alpha=0.0, rdrop_no_fused=no_fused)(model, sample)
    loss.backward()
    ours = grads(model)
    model.zero_grad()
    torch.manual_seed(7)
    s_loss, s_size, s_log = f.stock(model, doubled(sample))
    s_loss.backward()
    stock = grads(model)
    (loss_rtol, loss_atol), (grad_rtol, grad_atol) = f.fused_tol

    def same(a, b, rtol, atol, msg=None):
        if no_fused:
            assert torch.equal(a, b), msg
        else:
            torch.testing.assert_close(a, b, rtol=rtol, atol=atol, msg=msg)

    same(loss, s_loss.view(()), loss_rtol, loss_atol)
    if f.stock_nll is not None:
        same(log["nll_loss"], s_log[f.stock_nll].view(()), loss_rtol, loss_atol)
    if "n_correct" in s_log:  # the fused loss's logits round differently: near-ties may flip
        slack = 0 if no_fused else output_argmax_slack(model, sample, seed=7)
        assert abs(log["n_correct"] - s_log["n_correct"]) <= slack and log["total"] == s_log["total"]
    assert size == sample["target"].ne(f.ours.padding_idx).sum() == sample["ntokens"]
    assert s_size == 2 * size and log["copies_ntokens"] == s_log["ntokens"]
    assert ours.keys() == stock.keys()
    for param_name, g in stock.items():
        same(ours[param_name], g, grad_rtol, grad_atol, msg=param_name)


def forbid_fused_losses(monkeypatch):
    """Make every fused loss raise: a step that must be the stock criterion's never calls one."""
    from rdrop_seq.criterions import rdrop_adaptive_loss, softmax_terms

    def fused(*args, **kwargs):
        raise AssertionError("a step without R-Drop entered a fused loss")

    for module, name in ((softmax_terms, "fused_linear_rdrop_loss"), (softmax_terms, "chunked_rdrop_loss"),
                         (rdrop_adaptive_loss, "adaptive_head_rdrop_loss"),
                         (rdrop_adaptive_loss, "adaptive_full_rdrop_loss")):
        monkeypatch.setattr(module, name, fused)


@pytest.mark.parametrize("step", ["validation", "skipped-update"])
@pytest.mark.parametrize("no_fused", [True, False], ids=["unfused", "fused"])
@pytest.mark.parametrize("name", FAMILIES)
def test_a_step_without_rdrop_is_bitwise_the_stock_criterion(name, no_fused, step, monkeypatch):
    """Validation and the updates --rdrop-every skips run the stock criterion's operations:
    loss, sample size, logging output and (in training) every gradient bitwise equal, so on
    every CPU, whatever kernels it picks, and no fused loss is called.  The LM batches hold
    no pad-colliding tail word (where rdrop_adaptive_loss deliberately differs)."""
    f = family(name, lm_seed=3, collide=False)
    model, sample = f.model, f.sample
    crit = f.make(rdrop_no_fused=no_fused, rdrop_every=2)
    crit.set_num_updates(1)  # skipped by --rdrop-every 2; validation never runs R-Drop
    forbid_fused_losses(monkeypatch)
    model.train(step == "skipped-update")

    loss, size, log, ours = criterion_step(crit, model, sample, seed=9)
    s_loss, s_size, s_log, stock = criterion_step(f.stock, model, sample, seed=9)
    assert torch.equal(loss.view(()), s_loss.view(())) and size == s_size
    assert "rdrop_kl" not in log
    for key, value in s_log.items():  # every stock key, the same value
        assert torch.equal(torch.as_tensor(log[key]).view(-1), torch.as_tensor(value).view(-1)), key
    assert ours.keys() == stock.keys() and (step == "validation") == (not stock)
    for param_name, g in stock.items():
        assert torch.equal(ours[param_name], g), param_name
    with metrics.aggregate(new_root=True) as ours_agg:
        type(crit).reduce_metrics([log])
    with metrics.aggregate(new_root=True) as stock_agg:
        type(f.stock).reduce_metrics([s_log])
    for key in f.metrics:
        assert ours_agg.get_smoothed_value(key) == stock_agg.get_smoothed_value(key), key


@pytest.mark.parametrize("name", FAMILIES)
def test_logs_of_rdrop_and_stock_steps_reduce_to_figures_per_token_of_every_copy(name):
    """An interval mixing R-Drop updates (m copies) with skipped ones (the stock log) logs
    the NLL per target token of every copy run: sum of NLLs / (m * tokens + tokens)."""
    f = family(name, lm_seed=2, collide=False)
    model, sample = f.model, f.sample
    model.train()
    crit = f.make(rdrop_every=2)
    crit.set_num_updates(0)
    _, _, rdrop_log = crit(model, sample)
    crit.set_num_updates(1)
    _, _, stock_log = crit(model, sample)
    assert "copies_ntokens" not in stock_log or name.startswith("adaptive")
    with metrics.aggregate(new_root=True) as agg:
        type(crit).reduce_metrics([rdrop_log, stock_log])
    stock_nll = stock_log.get("nll_loss", stock_log["loss"])
    tokens = 3 * sample["ntokens"]
    expected = (rdrop_log["nll_loss"] + stock_nll).sum().item() / tokens / math.log(2)
    assert agg.get_smoothed_value("nll_loss") == pytest.approx(expected, abs=1e-3)
    loss = (rdrop_log["loss"] + stock_log["loss"]).sum().item() / tokens / math.log(2)
    assert agg.get_smoothed_value("loss") == pytest.approx(loss, abs=1e-3)


@pytest.mark.parametrize("name", FAMILIES)
def test_bfloat16_model_gives_finite_loss_close_to_float32(name):
    f = family(name, lm_seed=8, collide=True)
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


@pytest.mark.parametrize("report", [True, False])
def test_the_fused_loss_counts_accuracy_only_where_it_is_reported(report, monkeypatch):
    """No argmax per chunk for a criterion that does not log accuracy."""
    from rdrop_seq.criterions import softmax_terms

    seen = []
    real = softmax_terms.fused_linear_rdrop_loss
    monkeypatch.setattr(softmax_terms, "fused_linear_rdrop_loss",
                        lambda *a, **kw: seen.append(kw["report_accuracy"]) or real(*a, **kw))
    task = translation_task()
    model = tiny_transformer(task).train()
    _, _, log = translation_criterion(task, report_accuracy=report)(model, translation_batch(task, seed=2))
    assert seen == [report] and ("n_correct" in log) == report
