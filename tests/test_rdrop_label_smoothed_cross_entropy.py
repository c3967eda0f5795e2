"""rdrop_label_smoothed_cross_entropy inside a real fairseq transformer, and through it what the
base class does for every criterion: the schedule, the update counter, the flag checks, logging."""

import copy
import logging
import math

import pytest
import torch

import rdrop_seq  # noqa: F401  (registers the criterions)
from fairseq.criterions.label_smoothed_cross_entropy import LabelSmoothedCrossEntropyCriterion
from fairseq.logging import metrics
from rdrop_seq.criterions.rdrop_label_smoothed_cross_entropy import (
    RDropLabelSmoothedCrossEntropyCriterion,
)
from tests.conftest import DEVICES, NEEDS_CUDA
from rdrop_seq.batching import needs_length_sorted_copies
from rdrop_seq.criterions.output_layer import forward_takes_features_only, fusable_output_projection
from tests.fairseq_helpers import (
    HALF_TOLERANCES, build_from_dataclass, check_step_against_reference, doubled, output_argmax_slack,
    speech_batch,
    tiny_bart, tiny_lstm, tiny_s2t_transformer, tiny_transformer, to_device, translation_batch,
    translation_criterion, translation_task,
)


def stock_criterion(task, **kw):
    return LabelSmoothedCrossEntropyCriterion(
        task, kw.get("sentence_avg", False), 0.1, report_accuracy=True,
        ignore_prefix_size=kw.get("ignore_prefix_size", 0),
    )


@pytest.fixture()
def setup():
    task = translation_task()
    model = tiny_transformer(task)
    sample = translation_batch(task, batch_size=5, seed=1)
    assert sample["target"].eq(task.tgt_dict.pad()).any(), "the batch must contain padding"
    return task, model, sample


@pytest.mark.parametrize("passes", [2, 3])
def test_fused_step_equals_unfused_step(setup, passes):
    """Same loss, logging and parameter update inside a real fairseq model."""
    task, model, sample = setup
    model.train()
    results = []
    for no_fused in (False, True):
        m = copy.deepcopy(model)
        # SGD: Adam would blow up the float noise of gradients that are zero in
        # exact arithmetic (e.g. attention key biases) into full-size steps
        opt = torch.optim.SGD(m.parameters(), lr=0.1)
        crit = translation_criterion(task, rdrop_passes=passes, rdrop_alpha=5.0, rdrop_no_fused=no_fused)
        torch.manual_seed(21)
        loss, size, log = crit(m, sample)
        loss.backward()
        opt.step()
        results.append((loss.detach(), log, {n: p.detach().clone() for n, p in m.named_parameters()}))
    (lf, logf, pf), (lu, logu, pu) = results
    torch.testing.assert_close(lf, lu, rtol=1e-6, atol=1e-5)
    torch.testing.assert_close(logf["nll_loss"], logu["nll_loss"], rtol=1e-6, atol=1e-5)
    torch.testing.assert_close(logf["rdrop_kl"], logu["rdrop_kl"], rtol=1e-5, atol=1e-6)
    # the fused loss's logits round differently: an argmax may flip at a near-tie
    assert abs(logf["n_correct"] - logu["n_correct"]) <= output_argmax_slack(model, sample, seed=21, passes=passes)
    assert logf["total"] == logu["total"]
    for name in pf:
        torch.testing.assert_close(pf[name], pu[name], rtol=1e-5, atol=1e-6, msg=name)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("no_fused", [False, True])
@pytest.mark.parametrize("passes", [2, 3])
def test_loss_and_gradients_match_reference_inside_the_model(setup, passes, no_fused, device):
    task, model, sample = setup
    model, sample = to_device(model, sample, device)
    model.train()
    crit = translation_criterion(task, rdrop_passes=passes, rdrop_alpha=3.0, rdrop_no_fused=no_fused)
    out, _ = check_step_against_reference(model, crit, sample, 0.1, 3.0, passes, task.tgt_dict.pad(), no_fused)
    # the copies really saw different dropout masks
    copies = out.detach().view(passes, -1, *out.shape[1:])
    assert not torch.allclose(copies[0], copies[1])


OTHER_MODELS = {
    # a transformer decoder, but forward() takes no features_only: it used to crash the fused path
    "s2t_transformer": (tiny_s2t_transformer, speech_batch),
    "lstm": (tiny_lstm, translation_batch),  # logits from a plain linear layer, no transformer decoder
}


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("arch", sorted(OTHER_MODELS))
def test_models_without_a_fusable_projection_take_the_logits_path(arch, device):
    task = translation_task()
    build, batch = OTHER_MODELS[arch]
    model, sample = build(task), batch(task, batch_size=5, seed=1)
    assert sample["target"].eq(task.tgt_dict.pad()).any()
    assert fusable_output_projection(model) is None
    model, sample = to_device(model, sample, device)
    model.train()
    crit = translation_criterion(task, rdrop_passes=2, rdrop_alpha=3.0)
    interleaved = arch == "lstm"  # its encoder packs the batch: it must stay sorted by length
    assert needs_length_sorted_copies(model) == interleaved
    out, log = check_step_against_reference(model, crit, sample, 0.1, 3.0, 2, task.tgt_dict.pad(), True,
                                            interleaved=interleaved)
    copies = out.detach().view(2, -1, *out.shape[1:])
    assert not torch.allclose(copies[0], copies[1])
    # and validation is the stock single pass there too
    model.eval()
    with torch.no_grad():
        ours = crit(model, sample)[2]
        stock = stock_criterion(task)(model, sample)[2]
    assert float(ours["loss"]) == pytest.approx(float(stock["loss"]), rel=1e-6)


@pytest.mark.parametrize("passes", [2, 3])
def test_interleaved_copies_are_the_copy_major_ones_reordered(passes):
    from rdrop_seq.batching import stack_copies, to_copy_major

    x = torch.arange(12).view(4, 3)
    net_input = {"src_tokens": x, "src_lengths": torch.tensor([3, 3, 2, 1]), "nested": {"mask": x > 5},
                 "scalar": torch.tensor(7), "other": "kept"}
    major = stack_copies(net_input, passes, 4)
    inter = stack_copies(net_input, passes, 4, interleave=True)
    assert torch.equal(major["src_tokens"], torch.cat([x] * passes))
    assert torch.equal(inter["src_tokens"][:passes], x[:1].expand(passes, 3))  # example 0's copies first
    assert torch.equal(inter["src_lengths"], inter["src_lengths"].sort(descending=True).values)
    for key in ("src_tokens", "src_lengths"):
        assert torch.equal(to_copy_major(inter[key], passes), major[key])
    assert torch.equal(to_copy_major(inter["nested"]["mask"], passes), major["nested"]["mask"])
    assert inter["scalar"] is net_input["scalar"] and inter["other"] == "kept"


@pytest.mark.parametrize("no_fused", [False, True])
def test_bart_matches_reference_on_both_paths(no_fused):
    task = translation_task()
    model, sample = tiny_bart(task), translation_batch(task, batch_size=5, seed=1)
    assert fusable_output_projection(model) is model.decoder.output_projection
    model.train()
    crit = translation_criterion(task, rdrop_alpha=3.0, rdrop_no_fused=no_fused)
    check_step_against_reference(model, crit, sample, 0.1, 3.0, 2, task.tgt_dict.pad(), no_fused)


class PassThrough(torch.nn.Module):
    """What fairseq's DDP and sharded wrappers look like from outside: ``.module``, ``forward(*a, **kw)``."""

    def __init__(self, module):
        super().__init__()
        self.module = module

    def forward(self, *args, **kwargs):
        return self.module(*args, **kwargs)


def test_fused_path_runs_through_fairseqs_distributed_wrappers(setup):
    """Under DDP the criterion gets ModuleProxyWrapper(DDP(model)), whose forward takes *args, **kwargs."""
    from fairseq.distributed import ModuleProxyWrapper

    task, model, sample = setup
    wrapped = ModuleProxyWrapper(PassThrough(model))
    assert fusable_output_projection(wrapped) is model.decoder.output_projection
    wrapped.train()
    crit = translation_criterion(task, rdrop_alpha=3.0)
    # no_fused=False: the captured output must be the decoder's features, i.e. the fused path ran
    check_step_against_reference(wrapped, crit, sample, 0.1, 3.0, 2, task.tgt_dict.pad(), False)


def test_sharded_models_take_the_logits_path(setup):
    """--ddp-backend fully_sharded: the weights are whole only inside the model's forward."""
    task, model, sample = setup

    class FullyShardedDataParallel(PassThrough):  # stands in for fairscale's / torch's wrapper (by name)
        pass

    model.decoder.layers[0] = FullyShardedDataParallel(model.decoder.layers[0])  # nested wrapping too
    assert fusable_output_projection(model) is None
    model.train()
    crit = translation_criterion(task, rdrop_alpha=3.0)
    check_step_against_reference(model, crit, sample, 0.1, 3.0, 2, task.tgt_dict.pad(), True)


def test_which_models_forward_hands_features_only_to_the_decoder():
    from fairseq.models.transformer_lm import TransformerLanguageModel

    task = translation_task()
    assert forward_takes_features_only(tiny_transformer(task))
    assert fusable_output_projection(tiny_transformer(task)) is not None
    assert forward_takes_features_only(TransformerLanguageModel.__new__(TransformerLanguageModel))  # FairseqLanguageModel.forward
    assert not forward_takes_features_only(tiny_s2t_transformer(task))
    assert not forward_takes_features_only(tiny_lstm(task))


@NEEDS_CUDA
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("no_fused", [False, True])
def test_half_precision_model_on_cuda_matches_reference(setup, no_fused, dtype):
    """What --fp16 / --bf16 run on a GPU: a 16-bit model, the loss and KL in float32."""
    task, model, sample = setup
    model, sample = to_device(model, sample, "cuda", dtype)
    model.train()
    crit = translation_criterion(task, rdrop_alpha=5.0, rdrop_no_fused=no_fused)
    out, log = check_step_against_reference(model, crit, sample, 0.1, 5.0, 2, task.tgt_dict.pad(),
                                            no_fused, tolerances=HALF_TOLERANCES[dtype])
    assert out.dtype == dtype and log["rdrop_kl"] > 0


def test_sample_is_not_mutated_by_a_training_step(setup):
    task, model, sample = setup
    before = copy.deepcopy(sample)
    model.train()
    loss, _, _ = translation_criterion(task)(model, sample)
    loss.backward()
    assert sample.keys() == before.keys()
    assert sample["net_input"].keys() == before["net_input"].keys()
    for key in ("src_tokens", "src_lengths", "prev_output_tokens"):
        assert torch.equal(sample["net_input"][key], before["net_input"][key]), key
    assert torch.equal(sample["target"], before["target"])
    assert sample["ntokens"] == before["ntokens"]


def test_logged_training_ppl_is_per_token_over_copies(setup):
    task, model, sample = setup
    model.train()
    crit = translation_criterion(task)
    _, _, log_a = crit(model, sample)
    _, _, log_b = crit(model, translation_batch(task, batch_size=3, seed=9))
    with metrics.aggregate(new_root=True) as agg:
        crit.reduce_metrics([log_a, log_b])
    nll = (log_a["nll_loss"] + log_b["nll_loss"]).item()
    tokens = 2 * (log_a["ntokens"] + log_b["ntokens"])
    assert agg.get_smoothed_value("nll_loss") == pytest.approx(nll / tokens / math.log(2), abs=1e-3)
    kl = (log_a["rdrop_kl"] + log_b["rdrop_kl"]).item() / (log_a["ntokens"] + log_b["ntokens"])
    assert agg.get_smoothed_value("rdrop_kl") == pytest.approx(kl / math.log(2), abs=1e-4)
    assert log_a["total"] == 2 * log_a["ntokens"]
    acc = 100.0 * (log_a["n_correct"] + log_b["n_correct"]) / (log_a["total"] + log_b["total"])
    assert agg.get_smoothed_value("accuracy") == pytest.approx(acc, abs=1e-3)


def test_sentence_avg_and_ignore_prefix(setup):
    task, model, sample = setup
    model.train()
    stock = stock_criterion(task, sentence_avg=True, ignore_prefix_size=2)
    torch.manual_seed(5)
    s_loss, _, s_log = stock(model, doubled(sample))
    for no_fused in (True, False):
        crit = translation_criterion(
            task, sentence_avg=True, ignore_prefix_size=2, rdrop_alpha=0.0, rdrop_no_fused=no_fused
        )
        torch.manual_seed(5)
        loss, size, log = crit(model, sample)
        assert size == sample["target"].size(0)
        if no_fused:
            assert torch.equal(loss, s_loss)
        torch.testing.assert_close(loss, s_loss, rtol=1e-6, atol=1e-5)
        slack = 0 if no_fused else output_argmax_slack(model, sample, seed=5)  # near-ties may flip
        assert abs(log["n_correct"] - s_log["n_correct"]) <= slack and log["total"] == s_log["total"]


def test_every_k_and_alpha_warmup_follow_their_schedules(setup):
    task, model, sample = setup
    model.train()
    crit = translation_criterion(task, rdrop_every=3, rdrop_alpha=4.0, rdrop_alpha_warmup=10)
    seen = []
    for update in range(8):
        crit.set_num_updates(update)
        passes, alpha = crit.passes_and_alpha(model)
        seen.append((passes, alpha))
        _, _, log = crit(model, sample)
        assert log.get("copies_ntokens", log["ntokens"]) == passes * sample["ntokens"]
        assert ("rdrop_kl" in log) == (passes == 2)
    assert seen == [
        (2, 0.0), (1, 0.0), (1, 0.0), (2, 4.0 * 3 / 10),
        (1, 0.0), (1, 0.0), (2, 4.0 * 6 / 10), (1, 0.0),
    ]
    crit.set_num_updates(30)
    assert crit.passes_and_alpha(model) == (2, 4.0)


def test_update_counter_comes_from_the_trainers_metrics(setup):
    task, model, _ = setup
    crit = build_from_dataclass(
        RDropLabelSmoothedCrossEntropyCriterion, task, label_smoothing=0.1, rdrop_alpha=1.0, rdrop_every=2
    )
    metrics.reset()
    try:
        metrics.log_scalar("num_updates", 5, weight=0, priority=200)
        assert crit.num_updates() == 5
        model.train()
        assert crit.passes_and_alpha(model) == (1, 0.0)
        metrics.log_scalar("num_updates", 6, weight=0, priority=200)
        assert crit.passes_and_alpha(model) == (2, 1.0)
    finally:
        metrics.reset()


@pytest.mark.parametrize(
    "kw, flag",
    [
        (dict(rdrop_alpha=-1.0), "--rdrop-alpha"),
        (dict(rdrop_alpha=float("nan")), "--rdrop-alpha"),
        (dict(rdrop_passes=1), "--rdrop-passes"),
        (dict(rdrop_every=0), "--rdrop-every"),
        (dict(rdrop_alpha_warmup=-5), "--rdrop-alpha-warmup"),
    ],
)
def test_bad_configuration_is_refused_naming_the_flag(kw, flag):
    with pytest.raises(ValueError, match=flag):
        translation_criterion(translation_task(), **kw)


@pytest.mark.parametrize("kw, why", [
    (dict(rdrop_no_fused=True), "--rdrop-no-fused"),
    (dict(rdrop_divergence="js"), "--rdrop-divergence js"),
])
def test_a_chunk_size_for_a_fused_loss_that_is_off_is_refused(kw, why):
    with pytest.raises(ValueError, match=f"--rdrop-chunk-size=64 sets the chunks of the fused loss, which {why}"):
        translation_criterion(translation_task(), rdrop_chunk_size=64, **kw)
    assert translation_criterion(translation_task(), rdrop_chunk_size=64).chunk_size == 64


def test_alpha_without_dropout_warns_once(caplog):
    task = translation_task()
    model = tiny_transformer(task, dropout=0.0, attention_dropout=0.0, activation_dropout=0.0)
    model.train()
    crit = translation_criterion(task)
    sample = translation_batch(task)
    with caplog.at_level(logging.WARNING):
        crit(model, sample)
        crit(model, sample)
    warnings = [r for r in caplog.records if "KL term is identically zero" in r.getMessage()]
    assert len(warnings) == 1
