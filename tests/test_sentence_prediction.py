"""rdrop_sentence_prediction inside a real fairseq RoBERTa encoder with a classification head."""

import copy
from argparse import Namespace

import pytest
import torch

import rdrop_seq  # noqa: F401  (registers the criterions)
from fairseq.criterions.sentence_prediction import SentencePredictionCriterion
from fairseq.logging import metrics
from rdrop_seq.criterions.rdrop_sentence_prediction import (
    RDropSentencePredictionConfig,
    RDropSentencePredictionCriterion,
)
from rdrop_seq.divergences import DIVERGENCES
from tests.fairseq_helpers import (
    HEAD, build_from_dataclass, criterion_step, sentence_batch, sentence_task, tiny_roberta,
)
from tests.reference import reference_rdrop_loss, reference_regression_loss


def make_criterion(task, **kw):
    kw.setdefault("regression_target", task.cfg.regression_target)
    kw.setdefault("classification_head_name", HEAD)
    crit = build_from_dataclass(RDropSentencePredictionCriterion, task, **kw)
    crit.set_num_updates(0)
    return crit


def stock_criterion(task, **kw):
    from fairseq.criterions.sentence_prediction import SentencePredictionConfig

    cfg = SentencePredictionConfig(
        classification_head_name=HEAD, regression_target=task.cfg.regression_target, **kw
    )
    return SentencePredictionCriterion(cfg, task)


def doubled_sentences(sample, passes=2):
    out = copy.deepcopy(sample)
    out["net_input"] = {k: v.repeat(passes, *([1] * (v.dim() - 1))) for k, v in sample["net_input"].items()}
    out["target"] = sample["target"].repeat(passes, *([1] * (sample["target"].dim() - 1)))
    out["ntokens"] = passes * sample["ntokens"]
    out["nsentences"] = passes * sample["nsentences"]
    return out


def grads(model):
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def training_step(model, crit, sample, seed=3):
    """Loss, logging output and the captured head output (with its gradient) of one step."""
    captured = {}

    def hook(_module, _inp, out):
        out[0].retain_grad()
        captured["out"] = out[0]

    handle = model.register_forward_hook(hook)
    torch.manual_seed(seed)
    try:
        loss, size, log = crit(model, sample)
    finally:
        handle.remove()
    loss.backward()
    return loss, size, log, captured["out"]


@pytest.mark.parametrize("divergence", DIVERGENCES)
@pytest.mark.parametrize("passes", [2, 3])
def test_classification_loss_and_gradients_match_the_float64_reference(passes, divergence):
    task = sentence_task(classes=4)
    model = tiny_roberta(task).train()
    sample = sentence_batch(task, batch_size=7, seed=1)
    crit = make_criterion(task, rdrop_alpha=2.5, rdrop_passes=passes, rdrop_divergence=divergence)
    loss, size, log, logits = training_step(model, crit, sample)

    assert logits.shape == (passes * 7, 4)
    ref_in = logits.detach().double().requires_grad_()
    ref_loss, ref_nll, ref_kl = reference_rdrop_loss(
        ref_in, sample["target"], 0.0, 2.5, passes, None, divergence
    )
    ref_loss.backward()
    torch.testing.assert_close(loss.double(), ref_loss, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(log["rdrop_kl"].double(), ref_kl.detach(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(logits.grad.double(), ref_in.grad, rtol=1e-4, atol=1e-6)
    assert size == 7 and log["sample_size"] == 7 and log["copies_nsentences"] == passes * 7
    # the copies really saw different dropout masks
    assert not torch.allclose(logits[:7], logits[7:14])


@pytest.mark.parametrize("passes", [2, 3])
def test_regression_loss_and_gradients_match_the_float64_reference(passes):
    task = sentence_task(classes=1)
    model = tiny_roberta(task).train()
    sample = sentence_batch(task, batch_size=6, seed=2)
    crit = make_criterion(task, rdrop_alpha=1.5, rdrop_passes=passes)
    loss, size, log, outputs = training_step(model, crit, sample)

    assert outputs.shape == (passes * 6, 1)
    ref_in = outputs.detach().double().requires_grad_()
    ref_loss, ref_error, ref_disagreement = reference_regression_loss(
        ref_in.view(-1), sample["target"].view(-1), 1.5, passes
    )
    ref_loss.backward()
    torch.testing.assert_close(loss.double(), ref_loss, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(log["rdrop_kl"].double(), ref_disagreement.detach(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(outputs.grad.double(), ref_in.grad, rtol=1e-4, atol=1e-6)
    assert ref_disagreement > 0 and size == 6


@pytest.mark.parametrize("classes", [1, 3])
def test_alpha_zero_is_bitwise_the_stock_criterion_on_the_doubled_batch(classes):
    task = sentence_task(classes=classes)
    model = tiny_roberta(task).train()
    sample = sentence_batch(task, seed=4)
    ours = make_criterion(task, rdrop_alpha=0.0)
    torch.manual_seed(5)
    loss, size, log = ours(model, sample)
    loss.backward()
    g_ours = grads(model)
    model.zero_grad()
    torch.manual_seed(5)
    s_loss, s_size, s_log = stock_criterion(task)(model, doubled_sentences(sample))
    s_loss.backward()
    assert torch.equal(loss, s_loss)
    for name, g in grads(model).items():
        assert torch.equal(g_ours[name], g), name
    assert size == s_size // 2
    if classes > 1:
        assert log["ncorrect"] == s_log["ncorrect"]


@pytest.mark.parametrize("classes", [1, 2])
def test_validation_is_the_stock_single_pass_with_the_stock_metrics(classes):
    task = sentence_task(classes=classes)
    model = tiny_roberta(task).eval()
    sample = sentence_batch(task, batch_size=8, seed=6)
    flags = {"report_mcc": True} if classes > 1 else {"report_pearson_and_spearman": True}
    with torch.no_grad():
        loss, size, log = make_criterion(task, **flags)(model, sample)
        s_loss, s_size, s_log = stock_criterion(task, **flags)(model, sample)
    assert torch.equal(loss, s_loss) and size == s_size
    assert log["pred"] == s_log["pred"] and log["targ"] == s_log["targ"]
    assert "rdrop_kl" not in log

    def reduced(criterion_cls, logs):
        with metrics.aggregate(new_root=True) as agg:
            criterion_cls.reduce_metrics(logs)
        return agg.get_smoothed_values()

    ours, stock = reduced(RDropSentencePredictionCriterion, [log]), reduced(SentencePredictionCriterion, [s_log])
    assert ours.keys() == stock.keys()
    for key in stock:
        assert ours[key] == stock[key], key


def test_training_logs_loss_and_accuracy_per_copy_and_the_divergence_per_sentence():
    task = sentence_task(classes=3)
    model = tiny_roberta(task).train()
    sample = sentence_batch(task, batch_size=6, seed=7)
    crit = make_criterion(task, rdrop_alpha=1.0)
    torch.manual_seed(1)
    _, _, log = crit(model, sample)
    with metrics.aggregate(new_root=True) as agg:
        RDropSentencePredictionCriterion.reduce_metrics([log])
    values = agg.get_smoothed_values()
    ln2 = torch.log(torch.tensor(2.0)).item()
    assert values["loss"] == pytest.approx(round(log["loss"].item() / 12 / ln2, 3), abs=1e-3)
    assert values["accuracy"] == pytest.approx(round(100.0 * int(log["ncorrect"]) / 12, 1))
    assert values["rdrop_kl"] == pytest.approx(round(log["rdrop_kl"].item() / 6 / ln2, 4), abs=1e-4)


def test_sample_is_not_mutated_by_a_training_step():
    task = sentence_task(classes=3)
    model = tiny_roberta(task).train()
    sample = sentence_batch(task, seed=8)
    before = copy.deepcopy(sample)
    make_criterion(task)(model, sample)[0].backward()
    assert sample.keys() == before.keys() and sample["net_input"].keys() == before["net_input"].keys()
    for key in ("src_tokens", "src_lengths"):
        assert torch.equal(sample["net_input"][key], before["net_input"][key])
    assert torch.equal(sample["target"], before["target"])


def test_named_labels_are_reported_by_index_where_stock_would_crash():
    task = sentence_task(classes=3, label_names=["net", "admin", "libs"])
    model = tiny_roberta(task).eval()
    sample = sentence_batch(task, seed=9)
    with torch.no_grad():
        with pytest.raises(ValueError):
            stock_criterion(task, report_mcc=True)(model, sample)
        _, _, log = make_criterion(task, report_mcc=True)(model, sample)
    assert log["targ"] == sample["target"].tolist()


def test_regression_with_a_distribution_divergence_is_refused_naming_the_flag():
    task = sentence_task(classes=1)
    with pytest.raises(ValueError, match="--rdrop-divergence=js.*--regression-target"):
        make_criterion(task, rdrop_divergence="js")


def test_a_model_without_the_head_is_refused_with_the_flag_to_check():
    task = sentence_task(classes=3)
    model = tiny_roberta(task).train()
    crit = make_criterion(task, classification_head_name="other_head")
    with pytest.raises(ValueError, match="classification head 'other_head'.*--classification-head-name"):
        crit(model, sentence_batch(task))


def test_default_alpha_is_one_and_every_r_drop_flag_is_there():
    cfg = RDropSentencePredictionConfig()
    assert cfg.rdrop_alpha == 1.0 and cfg.rdrop_passes == 2 and str(cfg.rdrop_divergence) == "sym-kl"
    for name in ("rdrop_every", "rdrop_alpha_warmup", "regression_target", "report_mcc",
                 "classification_head_name"):
        assert hasattr(cfg, name), name


@pytest.mark.parametrize("step", ["validation", "skipped-update"])
@pytest.mark.parametrize("classes", [1, 3])
def test_a_step_without_rdrop_is_bitwise_the_stock_criterion(classes, step):
    """Validation and the updates --rdrop-every skips run the stock criterion's forward:
    loss, sample size, logging output and every gradient bitwise equal (on every CPU)."""
    task = sentence_task(classes=classes)
    model = tiny_roberta(task).train(step == "skipped-update")
    sample = sentence_batch(task, seed=10)
    flags = {"report_mcc": True} if classes > 1 else {"report_pearson_and_spearman": True}
    crit = make_criterion(task, rdrop_every=2, **flags)
    crit.set_num_updates(1)

    loss, size, log, ours = criterion_step(crit, model, sample, seed=2)
    s_loss, s_size, s_log, stock = criterion_step(stock_criterion(task, **flags), model, sample, seed=2)
    assert torch.equal(loss, s_loss) and size == s_size
    assert log.keys() == s_log.keys() and "rdrop_kl" not in log
    for key, value in s_log.items():
        same = torch.equal(value, log[key]) if torch.is_tensor(value) else value == log[key]
        assert same, key
    assert ours.keys() == stock.keys() and (step == "validation") == (not stock)
    for name, g in stock.items():
        assert torch.equal(ours[name], g), name


def test_logs_of_rdrop_and_stock_steps_reduce_to_figures_per_sentence_of_every_copy():
    task = sentence_task(classes=3)
    model = tiny_roberta(task).train()
    sample = sentence_batch(task, batch_size=6, seed=12)
    crit = make_criterion(task, rdrop_every=2)
    _, _, rdrop_log = crit(model, sample)
    crit.set_num_updates(1)
    _, _, stock_log = crit(model, sample)
    with metrics.aggregate(new_root=True) as agg:
        RDropSentencePredictionCriterion.reduce_metrics([rdrop_log, stock_log])
    ln2 = torch.log(torch.tensor(2.0)).item()
    loss = (rdrop_log["loss"] + stock_log["loss"]).item() / 18 / ln2
    assert agg.get_smoothed_value("loss") == pytest.approx(loss, abs=1e-3)
    correct = int(rdrop_log["ncorrect"]) + int(stock_log["ncorrect"])
    assert agg.get_smoothed_value("accuracy") == pytest.approx(100.0 * correct / 18, abs=0.1)


def test_bfloat16_model_gives_finite_loss_close_to_float32():
    task = sentence_task(classes=3)
    model = tiny_roberta(task).train()
    sample = sentence_batch(task, seed=11)
    crit = make_criterion(task, rdrop_alpha=1.0)
    torch.manual_seed(4)
    loss32, _, log32 = crit(model, sample)
    torch.manual_seed(4)
    loss16, _, log16 = crit(copy.deepcopy(model).bfloat16(), sample)
    assert loss16.dtype == torch.float32 and torch.isfinite(loss16)
    torch.testing.assert_close(loss16, loss32, rtol=5e-2, atol=5e-2)
    loss16.backward()


def test_fairseq_builds_the_criterion_from_its_flags():
    from fairseq import options
    from fairseq.criterions import build_criterion

    parser = options.get_training_parser()
    args = options.parse_args_and_arch(
        parser,
        ["/nonexistent", "--task", "sentence_prediction", "--num-classes", "3", "--arch", "roberta_base",
         "--criterion", "rdrop_sentence_prediction", "--rdrop-alpha", "0.7", "--rdrop-divergence", "js",
         "--rdrop-passes", "3"],
    )
    crit = build_criterion(Namespace(**vars(args)), sentence_task(classes=3))
    assert isinstance(crit, RDropSentencePredictionCriterion)
    assert crit.schedule.alpha == 0.7 and crit.schedule.passes == 3 and crit.divergence == "js"


@pytest.mark.parametrize("flag, value, message", [
    ("rdrop_alpha", -1.0, "--rdrop-alpha=-1.0: must be a finite number >= 0"),
    ("rdrop_passes", 1, "--rdrop-passes=1: must be >= 2"),
    ("rdrop_divergence", "kl", "--rdrop-divergence=kl: must be one of sym-kl, js, kl-detached"),
])
def test_bad_flags_are_refused_when_the_criterion_is_built_naming_the_flag(flag, value, message):
    with pytest.raises(ValueError, match=message):
        make_criterion(sentence_task(classes=3), **{flag: value})
