"""Semi-supervised R-Drop: the divergence on unlabeled sentences (rdrop_seq/consistency.py),
inside rdrop_sentence_prediction and a real fairseq RoBERTa, against a float64 reference
written from the definition; and the task that mixes the unlabeled split into the batches."""

import copy

import pytest
import torch

import rdrop_seq  # noqa: F401  (registers the criterions and tasks)
from rdrop_seq.consistency import unlabeled_disagreement, unlabeled_divergence
from rdrop_seq.divergences import DIVERGENCES
from tests.fairseq_helpers import (
    criterion_step, sentence_batch, sentence_task, step_with_outputs, tiny_roberta,
)
from tests.reference import reference_rdrop_loss, reference_unlabeled_divergence
from tests.test_sentence_prediction import make_criterion


# ---- the math -----------------------------------------------------------------------------
@pytest.mark.parametrize("passes", [2, 3])
@pytest.mark.parametrize("divergence, confidence, temperature", [
    *[(d, 0.0, 1.0) for d in DIVERGENCES],
    ("sym-kl", 0.4, 1.0),
    ("kl-detached", 0.0, 0.4),
    ("kl-detached", 0.4, 0.6),
])
def test_unlabeled_divergence_matches_the_reference(passes, divergence, confidence, temperature):
    g = torch.Generator().manual_seed(passes)
    logits = (2.0 * torch.randn(passes * 9, 5, generator=g)).requires_grad_()
    ref_in = logits.detach().double().requires_grad_()
    total, kept = unlabeled_divergence(logits, passes, divergence, confidence, temperature)
    ref_total, ref_kept = reference_unlabeled_divergence(ref_in, passes, divergence, confidence, temperature)
    assert int(kept) == ref_kept and (0 < ref_kept < 9 if confidence else ref_kept == 9)
    torch.testing.assert_close(total.double(), ref_total, rtol=1e-5, atol=1e-6)
    total.backward()
    ref_total.backward()
    torch.testing.assert_close(logits.grad.double(), ref_in.grad, rtol=1e-4, atol=1e-6)


def test_unlabeled_regression_disagreement_is_the_pair_mean_squared_difference():
    outputs = torch.tensor([1.0, 2.0, 3.0, 1.5, 2.0, 5.0])  # m = 2 copies of 3 sentences
    total, n = unlabeled_disagreement(outputs, 2)
    assert float(total) == pytest.approx(0.25 + 0.0 + 4.0) and int(n) == 3


@pytest.mark.parametrize("flags, message", [
    (dict(unlabeled_temperature=0.5), "needs --rdrop-divergence kl-detached"),
    (dict(unlabeled_confidence=1.0), "--unlabeled-confidence=1.0"),
    (dict(unlabeled_temperature=0.0, rdrop_divergence="kl-detached"), "--unlabeled-temperature=0.0"),
    (dict(rdrop_unlabeled_alpha=-1.0), "--rdrop-unlabeled-alpha"),
])
def test_bad_semi_supervised_settings_are_refused_naming_the_flag(flags, message):
    with pytest.raises(ValueError, match=message):
        make_criterion(sentence_task(classes=3), **flags)


# ---- inside the criterion -------------------------------------------------------------------
def semi_supervised_sample(task, seed=4, unlabeled=5):
    sample = sentence_batch(task, batch_size=6, seed=seed)
    extra = sentence_batch(task, batch_size=unlabeled, seed=seed + 100)
    return dict(sample, unlabeled={"net_input": extra["net_input"], "nsentences": unlabeled,
                                   "ntokens": extra["ntokens"]})


@pytest.mark.parametrize("passes, flags", [
    (2, dict(rdrop_unlabeled_alpha=0.7)),
    (3, dict(rdrop_unlabeled_alpha=0.7)),
    (2, dict(rdrop_unlabeled_alpha=1.5, unlabeled_confidence=0.34)),
    (2, dict(rdrop_unlabeled_alpha=1.5, unlabeled_temperature=0.5, rdrop_divergence="kl-detached")),
])
def test_mixed_objective_matches_the_reference_inside_the_model(passes, flags):
    """The labeled copies' CE + alpha * their divergence, plus alpha_u * the unlabeled
    copies' divergence: value and the gradients reaching both batches' head outputs."""
    task = sentence_task(classes=3)
    model = tiny_roberta(task).train()
    sample = semi_supervised_sample(task)
    crit = make_criterion(task, rdrop_alpha=1.2, rdrop_passes=passes, **flags)
    (loss, size, log, _), (labeled, unlabeled) = step_with_outputs(crit, model, sample, seed=3)
    assert labeled.size(0) == passes * 6 and unlabeled.size(0) == passes * 5
    leaves = [t.detach().double().requires_grad_() for t in (labeled, unlabeled)]
    divergence = flags.get("rdrop_divergence", "sym-kl")
    ref_loss, _, _ = reference_rdrop_loss(leaves[0], sample["target"], 0.0, 1.2, passes, None, divergence)
    ref_unlabeled, kept = reference_unlabeled_divergence(
        leaves[1], passes, divergence, flags.get("unlabeled_confidence", 0.0), flags.get("unlabeled_temperature", 1.0))
    total = ref_loss + flags["rdrop_unlabeled_alpha"] * ref_unlabeled
    total.backward()
    torch.testing.assert_close(loss.double(), total, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(log["unlabeled_kl"].double(), ref_unlabeled.detach(), rtol=1e-5, atol=1e-6)
    assert int(log["unlabeled_kept"]) == kept and log["unlabeled_nsentences"] == 5
    assert size == 6 and log["nsentences"] == 6  # the labeled sentences alone
    for out, leaf in zip((labeled, unlabeled), leaves):
        torch.testing.assert_close(out.grad.double(), leaf.grad, rtol=1e-4, atol=1e-6)


def test_unlabeled_weight_zero_and_a_batch_without_unlabeled_sentences_are_supervised_rdrop_bitwise():
    task = sentence_task(classes=3)
    model = tiny_roberta(task).train()
    sample = semi_supervised_sample(task)
    plain = {k: v for k, v in sample.items() if k != "unlabeled"}
    supervised = criterion_step(make_criterion(task), model, plain, seed=5)
    for crit, batch in ((make_criterion(task, rdrop_unlabeled_alpha=0.0), sample),
                        (make_criterion(task, rdrop_unlabeled_alpha=2.0), plain)):
        loss, size, log, grads = criterion_step(crit, model, batch, seed=5)
        assert torch.equal(loss, supervised[0]) and log.keys() == supervised[2].keys()
        assert all(torch.equal(grads[n], g) for n, g in supervised[3].items())


def test_no_label_of_an_unlabeled_sentence_is_read():
    """Poison every label field an unlabeled batch could carry: the loss does not change."""
    task = sentence_task(classes=3)
    model = tiny_roberta(task).train()
    sample = semi_supervised_sample(task)
    crit = make_criterion(task, rdrop_unlabeled_alpha=1.0)
    clean = criterion_step(crit, model, sample, seed=6)[0]
    poisoned = copy.deepcopy(sample)
    poisoned["unlabeled"]["target"] = torch.full((5,), 10**6)
    poisoned["unlabeled"]["net_input"]["target"] = torch.full((5,), -(10**6))
    assert torch.equal(criterion_step(crit, model, poisoned, seed=6)[0], clean)


def test_the_unlabeled_weight_ramps_up_with_its_warmup():
    task = sentence_task(classes=3)
    model = tiny_roberta(task).eval()
    sample = semi_supervised_sample(task)
    crit = make_criterion(task, rdrop_unlabeled_alpha=2.0, rdrop_unlabeled_warmup=4)
    model.train()
    weights = []
    for update in (0, 2, 4, 9):
        crit.set_num_updates(update)
        with_u = criterion_step(crit, model, sample, seed=7)
        without = criterion_step(crit, model, {k: v for k, v in sample.items() if k != "unlabeled"}, seed=7)
        extra = float(with_u[0] - without[0])
        weights.append(round(extra / float(with_u[2]["unlabeled_kl"]), 4) if update else extra)
    assert weights == [0.0, 1.0, 2.0, 2.0]
