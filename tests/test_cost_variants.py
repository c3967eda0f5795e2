"""The variants that cut R-Drop's cost: partial duplication (--rdrop-fraction), the shared
encoder (--rdrop-share-encoder) and the late start (--rdrop-start-update), each against a
float64 reference written from its definition inside real fairseq models."""

import pytest
import torch

import rdrop_seq  # noqa: F401  (registers the criterions)
from fairseq.criterions.label_smoothed_cross_entropy import LabelSmoothedCrossEntropyCriterion
from rdrop_seq.batching import duplicated_rows
from rdrop_seq.schedule import RDropSchedule
from tests.fairseq_helpers import (
    FLOAT32_TOLERANCES, check_step_against_reference, criterion_step, doubled, sentence_batch,
    sentence_task, step_with_outputs, tiny_lstm, tiny_roberta, tiny_transformer, translation_batch,
    translation_criterion, translation_task,
)
from tests.lm_helpers import adaptive_criterion, ce_criterion, lm_model, lm_task, random_lm_batch
from tests.reference import reference_partial_rdrop_loss
from tests.test_sentence_prediction import make_criterion as sentence_criterion

SEED = 1


@pytest.fixture()
def setup():
    task = translation_task()
    model = tiny_transformer(task).train()
    sample = translation_batch(task, batch_size=6, seed=1)
    assert sample["target"].eq(task.tgt_dict.pad()).any(), "the batch must contain padding"
    return task, model, sample


def chosen_rows(batch_size, fraction, seed=SEED):
    """The rows partial duplication picks in a criterion call whose dropout is drawn from ``seed``
    (the criterion's first draw, on rank 0)."""
    torch.manual_seed(seed)
    return duplicated_rows(batch_size, fraction)


# ---- the schedule ------------------------------------------------------------------------
def test_late_start_runs_stock_updates_before_it_then_every_k_and_warmup_from_it():
    schedule = RDropSchedule(alpha=4.0, every=2, warmup=4, start=3)
    assert [u for u in range(12) if schedule.active(u)] == [3, 5, 7, 9, 11]
    assert [schedule.alpha_at(u) for u in (3, 5, 7, 9)] == [0.0, 2.0, 4.0, 4.0]


@pytest.mark.parametrize("flags, flag", [
    (dict(rdrop_fraction=0.0), "--rdrop-fraction"),
    (dict(rdrop_fraction=1.5), "--rdrop-fraction"),
    (dict(rdrop_fraction=float("nan")), "--rdrop-fraction"),
    (dict(rdrop_start_update=-1), "--rdrop-start-update"),
])
def test_bad_variant_settings_are_refused_naming_the_flag(flags, flag):
    with pytest.raises(ValueError, match=flag):
        translation_criterion(translation_task(), **flags)


def test_updates_before_the_late_start_are_bitwise_the_stock_criterion(setup):
    task, model, sample = setup
    crit = translation_criterion(task, rdrop_start_update=5)
    stock = LabelSmoothedCrossEntropyCriterion(task, False, 0.1, report_accuracy=True)
    crit.set_num_updates(4)
    loss, size, log, grads = criterion_step(crit, model, sample, seed=SEED)
    s_loss, s_size, s_log, s_grads = criterion_step(stock, model, sample, seed=SEED)
    assert torch.equal(loss, s_loss) and size == s_size and log == s_log
    assert all(torch.equal(grads[name], g) for name, g in s_grads.items())
    crit.set_num_updates(5)
    assert "rdrop_kl" in crit(model, sample)[2]


# ---- partial duplication ---------------------------------------------------------------
def test_duplicated_rows_are_a_reproducible_random_share_of_the_batch():
    rows = [chosen_rows(1000, 0.3, seed) for seed in (1, 1, 2)]
    assert torch.equal(rows[0], rows[1]) and not torch.equal(rows[0], rows[2])
    assert all(torch.equal(r, r.sort().values) for r in rows)
    assert 240 < rows[0].numel() < 360  # 300 expected, std 14.5
    assert torch.equal(duplicated_rows(7, 1.0), torch.arange(7))


@pytest.mark.parametrize("no_fused", [False, True], ids=["fused", "unfused"])
@pytest.mark.parametrize("passes", [2, 3])
def test_partial_duplication_matches_the_reference_inside_the_model(setup, passes, no_fused):
    """Value, logged NLL and KL, and the gradient reaching every copy's output: the
    cross-entropy of every copy run, the divergence of the duplicated sentences only."""
    task, model, sample = setup
    pad = task.tgt_dict.pad()
    batch = sample["target"].size(0)
    fraction = 0.5
    chosen = chosen_rows(batch, fraction)
    assert 0 < chosen.numel() < batch, "the seed must pick some sentences, not all"
    crit = translation_criterion(task, rdrop_passes=passes, rdrop_alpha=3.0, rdrop_no_fused=no_fused,
                                 rdrop_fraction=fraction)
    (loss, size, log, _), (once, copied) = step_with_outputs(crit, model, sample, seed=SEED)  # the sentences run once, then the chosen ones' copies (copy-major)
    k = chosen.numel()
    assert once.size(0) == batch - k and copied.size(0) == passes * k

    weight = model.decoder.output_projection.weight.detach().double()
    to_logits = (lambda t: t) if no_fused else (lambda t: t @ weight.t())  # noqa: E731
    leaves = [once.detach().double().requires_grad_(), copied.detach().double().requires_grad_()]
    rest = [b for b in range(batch) if b not in chosen.tolist()]
    copies_of = [None] * batch
    for i, b in enumerate(rest):
        copies_of[b] = [to_logits(leaves[0][i])]
    for j, b in enumerate(chosen.tolist()):
        copies_of[b] = [to_logits(leaves[1][c * k + j]) for c in range(passes)]
    ref_loss, ref_nll, ref_kl = reference_partial_rdrop_loss(copies_of, sample["target"], 0.1, 3.0, pad)
    ref_loss.backward()
    (loss_tol, kl_tol, grad_tol) = FLOAT32_TOLERANCES
    torch.testing.assert_close(loss.double(), ref_loss, rtol=loss_tol[0], atol=loss_tol[1])
    torch.testing.assert_close(log["nll_loss"].double(), ref_nll, rtol=loss_tol[0], atol=loss_tol[1])
    torch.testing.assert_close(log["rdrop_kl"].double(), ref_kl.detach(), rtol=kl_tol[0], atol=kl_tol[1])
    for out, leaf in zip((once, copied), leaves):
        torch.testing.assert_close(out.grad.double(), leaf.grad, rtol=grad_tol[0], atol=grad_tol[1])
    ntokens = sample["target"].ne(pad).sum(dim=1)
    assert size == log["sample_size"] == sample["ntokens"] and log["nsentences"] == batch
    assert log["rdrop_ntokens"] == int(ntokens[chosen].sum())
    assert log["copies_ntokens"] == sample["ntokens"] + (passes - 1) * log["rdrop_ntokens"]


def test_partial_duplication_with_every_sentence_chosen_is_full_rdrop_bitwise(setup):
    task, model, sample = setup
    partial = translation_criterion(task, rdrop_fraction=0.999999)
    assert chosen_rows(6, 0.999999).numel() == 6
    full = translation_criterion(task)
    # the same first draw, so that both calls' dropout masks come from the same generator state
    torch.manual_seed(SEED)
    torch.rand(6)
    state = torch.get_rng_state()
    torch.manual_seed(SEED)
    loss_p, _, log_p = partial(model, sample)
    torch.set_rng_state(state)
    loss_f, _, log_f = full(model, sample)
    assert torch.equal(loss_p, loss_f) and torch.equal(log_p["rdrop_kl"], log_f["rdrop_kl"])


@pytest.mark.parametrize("family", ["cross_entropy", "adaptive-head", "adaptive-full", "sentence"])
def test_partial_duplication_runs_in_every_family_with_the_whole_batchs_sizes(family):
    """The sub-batches' sizes add up to the batch's: what fairseq divides the gradient by."""
    if family == "sentence":
        task = sentence_task(classes=3)
        model = tiny_roberta(task).train()
        sample = sentence_batch(task, batch_size=8, seed=4)
        crit = sentence_criterion(task, rdrop_fraction=0.5)
        whole, copies_key = sample["target"].size(0), "copies_nsentences"
    else:
        task = lm_task()
        sample = random_lm_batch(seed=2, collide=False)
        if family == "cross_entropy":
            model, crit = lm_model(task, arch="transformer_lm"), ce_criterion(task, rdrop_fraction=0.5)
        else:
            model, crit = lm_model(task), adaptive_criterion(task, family.split("-")[1], rdrop_fraction=0.5)
        model.train()
        whole, copies_key = int(sample["target"].ne(crit.padding_idx).sum()), "copies_ntokens"
    batch = sample["target"].size(0)
    chosen = chosen_rows(batch, 0.5)
    assert 0 < chosen.numel() < batch
    loss, size, log, grads = criterion_step(crit, model, sample, seed=SEED)
    assert size == log["sample_size"] == whole and torch.isfinite(loss) and grads
    assert log["nsentences"] == batch and log["rdrop_kl"] > 0
    per_row = (torch.ones(batch, dtype=torch.long) if family == "sentence"
               else sample["target"].ne(crit.padding_idx).sum(dim=1))
    assert log[copies_key] == whole + int(per_row[chosen].sum())


# ---- the shared encoder -----------------------------------------------------------------
def test_shared_encoder_runs_the_encoder_once_and_matches_the_reference(setup):
    """The encoder sees the batch once, the decoder every copy (different dropout masks);
    the loss is the R-Drop objective of the decoder's outputs (float64 reference)."""
    task, model, sample = setup
    batch = sample["target"].size(0)
    seen = []
    handle = model.encoder.register_forward_hook(lambda _m, args, _out: seen.append(args[0].size(0)))
    try:
        crit = translation_criterion(task, rdrop_alpha=3.0, rdrop_share_encoder=True)
        out, _ = check_step_against_reference(model, crit, sample, 0.1, 3.0, 2, task.tgt_dict.pad(), False)
    finally:
        handle.remove()
    assert seen == [batch]
    copies = out.detach().view(2, batch, *out.shape[1:])
    assert not torch.allclose(copies[0], copies[1])


def test_shared_encoder_output_is_the_encoders_single_pass_repeated(setup):
    """The decoder's input equals, by hand: the encoder once (its dropout drawn first, as
    in the model's own forward), its output repeated for the copies, the decoder on them."""
    task, model, sample = setup
    crit = translation_criterion(task, rdrop_share_encoder=True)
    captured = []
    handle = model.register_forward_hook(lambda _m, _i, out: captured.append(out[0].detach()))
    try:
        criterion_step(crit, model, sample, seed=SEED)
    finally:
        handle.remove()
    net_input = sample["net_input"]
    torch.manual_seed(SEED)
    with torch.no_grad():
        encoded = model.encoder(net_input["src_tokens"], src_lengths=net_input["src_lengths"])
        batch = net_input["src_tokens"].size(0)
        encoded = model.encoder.reorder_encoder_out(encoded, torch.arange(batch).repeat(2))
        features, _ = model.decoder(doubled(sample)["net_input"]["prev_output_tokens"],
                                    encoder_out=encoded, features_only=True,
                                    src_lengths=net_input["src_lengths"])
    assert torch.equal(captured[0], features)


def test_shared_encoder_on_a_recurrent_encoder_keeps_the_copies_sorted():
    """fairseq's lstm packs a length-sorted batch: the shared output follows the interleaved copies."""
    task = translation_task()
    model = tiny_lstm(task).train()
    sample = translation_batch(task, batch_size=5, seed=2)
    crit = translation_criterion(task, rdrop_share_encoder=True, rdrop_alpha=2.0)
    check_step_against_reference(model, crit, sample, 0.1, 2.0, 2, task.tgt_dict.pad(), True,
                                 interleaved=True)


@pytest.mark.parametrize("family", ["language-model", "sentence"])
def test_shared_encoder_is_refused_for_models_without_encoder_and_decoder(family):
    if family == "sentence":
        task = sentence_task(classes=3)
        model, sample = tiny_roberta(task).train(), sentence_batch(task, seed=1)
        crit = sentence_criterion(task, rdrop_share_encoder=True)
    else:
        task = lm_task()
        model, sample = lm_model(task).train(), random_lm_batch(seed=1, collide=False)
        crit = adaptive_criterion(task, "head", rdrop_share_encoder=True)
    with pytest.raises(ValueError, match="--rdrop-share-encoder needs an encoder-decoder model"):
        crit(model, sample)
