"""Tiny real fairseq models and batches for the criterion tests."""

import copy

import torch
from fairseq.data import Dictionary, LanguagePairDataset
from fairseq.models.transformer import TransformerModel
from fairseq.tasks.translation import TranslationConfig, TranslationTask
from tests.rounding import argmax_may_differ, matmul_error


def build_from_dataclass(criterion_cls, task, **overrides):
    """``criterion_cls`` built from its registered dataclass with ``overrides``
    (fields not given keep their defaults; ``sentence_avg``, an interpolation of
    fairseq's ``--sentence-avg`` in the dataclass, defaults to False as that flag)."""
    config_cls = getattr(criterion_cls, "__dataclass")
    if "sentence_avg" in config_cls.__dataclass_fields__:
        overrides.setdefault("sentence_avg", False)
    return criterion_cls(config_cls(**overrides), task)


def translation_criterion(task, **flags):
    """``rdrop_label_smoothed_cross_entropy`` at the translation tests' settings (label
    smoothing 0.1, accuracy reported, alpha 5), ``flags`` overriding them, at update 0."""
    from rdrop_seq.criterions.rdrop_label_smoothed_cross_entropy import (
        RDropLabelSmoothedCrossEntropyCriterion,
    )

    settings = dict(label_smoothing=0.1, report_accuracy=True, rdrop_alpha=5.0)
    crit = build_from_dataclass(RDropLabelSmoothedCrossEntropyCriterion, task, **dict(settings, **flags))
    crit.set_num_updates(0)
    return crit


def tiny_dictionary(words=40):
    d = Dictionary()
    for i in range(words):
        d.add_symbol(f"w{i}")
    d.finalize(padding_factor=1)
    return d


def translation_task(words=40):
    d = tiny_dictionary(words)
    return TranslationTask(TranslationConfig(), d, d)


def transformer_args(**overrides):
    from argparse import Namespace

    args = Namespace(
        encoder_layers=1,
        decoder_layers=1,
        encoder_embed_dim=16,
        decoder_embed_dim=16,
        encoder_ffn_embed_dim=32,
        decoder_ffn_embed_dim=32,
        encoder_attention_heads=2,
        decoder_attention_heads=2,
        dropout=0.3,
        attention_dropout=0.1,
        activation_dropout=0.1,
        share_all_embeddings=True,
        max_source_positions=64,
        max_target_positions=64,
    )
    for k, v in overrides.items():
        setattr(args, k, v)
    return args


def tiny_transformer(task, seed=0, **overrides):
    from fairseq.models.transformer import base_architecture

    torch.manual_seed(seed)
    args = transformer_args(**overrides)
    base_architecture(args)
    return TransformerModel.build_model(args, task)


def tiny_lstm(task, seed=0):
    """fairseq's ``lstm`` translation model: logits from ``fc_out``, no transformer decoder."""
    from argparse import Namespace

    from fairseq.models.lstm import LSTMModel, base_architecture

    torch.manual_seed(seed)
    args = Namespace(encoder_embed_dim=16, decoder_embed_dim=16, decoder_out_embed_dim=16, dropout=0.3,
                     criterion="rdrop_label_smoothed_cross_entropy",
                     max_source_positions=64, max_target_positions=64)
    base_architecture(args)
    return LSTMModel.build_model(args, task)


def tiny_bart(task, seed=0):
    """BART (the model the paper fine-tunes with R-Drop for summarization), transformer-sized."""
    from fairseq.models.bart import BARTModel
    from fairseq.models.bart.model import bart_base_architecture

    args = transformer_args()
    bart_base_architecture(args)
    for k, v in vars(transformer_args(decoder_input_dim=16, decoder_output_dim=16)).items():
        setattr(args, k, v)  # the tiny sizes over bart_base's
    torch.manual_seed(seed)
    return BARTModel.build_model(args, task)


SPEECH_FEATURES = 8


def tiny_s2t_transformer(task, seed=0):
    """fairseq's speech-to-text transformer: a transformer decoder, but a ``forward``
    without ``features_only``."""
    from argparse import Namespace

    from fairseq.models.speech_to_text.s2t_transformer import S2TTransformerModel, base_architecture

    torch.manual_seed(seed)
    args = transformer_args(input_feat_per_channel=SPEECH_FEATURES, input_channels=1,
                            conv_kernel_sizes="5", conv_channels=16)
    del args.share_all_embeddings
    base_architecture(args)
    return S2TTransformerModel.build_model(args, Namespace(target_dictionary=task.tgt_dict))


def speech_batch(task, batch_size=4, seed=0):
    """A speech-to-text sample: filterbank-like features of different lengths, padded targets."""
    text = translation_batch(task, batch_size, seed)
    g = torch.Generator().manual_seed(seed + 1)
    lengths = torch.randint(10, 21, (batch_size,), generator=g)
    lengths[0] = 20
    feats = torch.randn(batch_size, 20, SPEECH_FEATURES, generator=g)
    for i, n in enumerate(lengths):
        feats[i, n:] = 0.0
    net_input = {"src_tokens": feats, "src_lengths": lengths,
                 "prev_output_tokens": text["net_input"]["prev_output_tokens"]}
    return dict(text, net_input=net_input)


def translation_batch(task, batch_size=4, seed=0, min_len=2, max_len=9):
    """A collated sample with sentences of different lengths (so there is padding)."""
    g = torch.Generator().manual_seed(seed)
    d = task.src_dict
    n_special = d.nspecial
    srcs, tgts = [], []
    for _ in range(batch_size):
        for bucket in (srcs, tgts):
            n = int(torch.randint(min_len, max_len + 1, (1,), generator=g))
            toks = torch.randint(n_special, len(d), (n,), generator=g)
            bucket.append(torch.cat([toks, torch.tensor([d.eos()])]))
    ds = LanguagePairDataset(
        srcs, [len(s) for s in srcs], d, tgts, [len(t) for t in tgts], d, shuffle=False
    )
    return ds.collater([ds[i] for i in range(batch_size)])


def doubled(sample, passes=2):
    """The sample with its batch repeated, as the stock criterion would need it."""
    out = copy.deepcopy(sample)
    b = sample["target"].size(0)
    for k, v in list(out["net_input"].items()):
        if torch.is_tensor(v) and v.size(0) == b:
            out["net_input"][k] = v.repeat(passes, *([1] * (v.dim() - 1)))
    out["target"] = sample["target"].repeat(passes, 1)
    out["ntokens"] = sample["ntokens"] * passes
    out["nsentences"] = b * passes
    return out


def grads(model):
    """Every parameter's gradient (a copy), by name, where it has one."""
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def step_with_outputs(criterion, model, sample, seed):
    """:func:`criterion_step`, and the first output of every model call inside it (their
    gradients kept): ``(step, [outputs])``."""
    outputs = []

    def hook(_module, _inp, out):
        out[0].retain_grad()
        outputs.append(out[0])

    handle = model.register_forward_hook(hook)
    try:
        step = criterion_step(criterion, model, sample, seed)
    finally:
        handle.remove()
    return step, outputs


def criterion_step(criterion, model, sample, seed):
    """``(loss, sample_size, logging_output, gradients)`` of one call of ``criterion`` with
    dropout drawn from ``seed``; the backward only while the model is training."""
    model.zero_grad()
    torch.manual_seed(seed)
    loss, size, log = criterion(model, sample)
    if model.training:
        loss.backward()
    return loss, size, log, grads(model)


def to_device(model, sample, device, dtype=None):
    """The model (in ``dtype`` if given) and a copy of the sample on ``device``."""
    from fairseq import utils

    model.to(device=device, dtype=dtype)
    return model, utils.apply_to_sample(lambda t: t.to(device), sample)


# tolerances against the float64 reference: (loss and nll, KL, gradient) as (rtol, atol)
FLOAT32_TOLERANCES = ((1e-5, 1e-5), (1e-4, 1e-6), (1e-4, 1e-6))
# a 16-bit model: the fused path's logits are rounded to 16 bits before the float32
# loss (the reference takes them from the same 16-bit features in float64), and the
# gradient that reaches the model is a 16-bit tensor (the tiny models' gradients reach
# about 2.5: bfloat16's 8-bit mantissa allows about 1 % of that)
HALF_TOLERANCES = {
    torch.float16: ((2e-3, 1e-2), (2e-2, 1e-3), (2e-2, 2e-3)),
    torch.bfloat16: ((5e-3, 2e-2), (5e-2, 2e-3), (5e-2, 3e-2)),
}


def check_step_against_reference(model, criterion, sample, epsilon, alpha, passes, pad, no_fused,
                                 tolerances=FLOAT32_TOLERANCES, interleaved=False, divergence="sym-kl"):
    """One training forward/backward of ``criterion`` checked against the float64 reference.

    Captures what the model returns inside the criterion's forward (logits when
    ``no_fused``: ``--rdrop-no-fused``, or a model without a fusable output
    projection; else the final hidden states), recomputes the R-Drop loss from
    it in float64 on the CPU (through the output projection when fused) and
    compares the loss, the logged nll and KL, and the gradient that reached the
    captured tensor.  ``interleaved``: the model gets the copies example-major
    (recurrent encoders).  ``divergence``: the reference's ``--rdrop-divergence``.
    The model and sample may be on any device.  Returns
    ``(captured, logging_output)``, the captured output copy-major.
    """
    from tests.reference import reference_rdrop_loss

    (loss_tol, kl_tol, grad_tol) = tolerances
    weight = None if no_fused else model.decoder.output_projection.weight
    captured = {}

    def hook(_module, _inp, out):
        out[0].retain_grad()
        captured["out"] = out[0]

    handle = model.register_forward_hook(hook)
    torch.manual_seed(3)
    try:
        loss, _, log = criterion(model, sample)
    finally:
        handle.remove()
    loss.backward()
    out = captured["out"]  # [m*B, T, V] logits or [m*B, T, H] features
    batch = sample["target"].size(0)
    assert out.size(0) == passes * batch
    grad = out.grad
    if interleaved:  # the model got example b's copy i at row b*m + i: the reference wants i*B + b
        rows = [b * passes + i for i in range(passes) for b in range(batch)]
        out, grad = out[rows], grad[rows]
    assert out.size(-1) == (len(criterion.task.target_dictionary) if no_fused else weight.size(1))
    assert loss.dtype == log["rdrop_kl"].dtype == torch.float32

    cpu64 = lambda t: t.detach().cpu().double()  # noqa: E731
    ref_in = cpu64(out).reshape(-1, out.size(-1)).requires_grad_()
    logits = ref_in if no_fused else ref_in @ cpu64(weight).t()
    ref_loss, ref_nll, ref_kl = reference_rdrop_loss(
        logits, sample["target"].cpu().reshape(-1), epsilon, alpha, passes, pad, divergence
    )
    ref_loss.backward()
    torch.testing.assert_close(cpu64(loss), ref_loss, rtol=loss_tol[0], atol=loss_tol[1])
    torch.testing.assert_close(cpu64(log["nll_loss"]), ref_nll, rtol=loss_tol[0], atol=loss_tol[1])
    torch.testing.assert_close(cpu64(log["rdrop_kl"]), ref_kl.detach(), rtol=kl_tol[0], atol=kl_tol[1])
    torch.testing.assert_close(
        cpu64(grad).reshape(-1, out.size(-1)), ref_in.grad, rtol=grad_tol[0], atol=grad_tol[1]
    )
    assert log["copies_ntokens"] == passes * sample["ntokens"]
    return out, log


HEAD = "sentence_classification_head"


def sentence_task(classes=3, words=40, label_names=None):
    """fairseq's ``sentence_prediction`` task over a tiny dictionary; ``classes=1``: regression."""
    from fairseq.data import Dictionary
    from fairseq.tasks.sentence_prediction import SentencePredictionConfig, SentencePredictionTask

    labels = Dictionary()
    for name in label_names or [str(c) for c in range(classes)]:
        labels.add_symbol(name)
    labels.finalize(padding_factor=1)
    cfg = SentencePredictionConfig(
        data="unused", num_classes=classes, regression_target=classes == 1,
        classification_head_name=HEAD, seed=1, max_positions=64,
    )
    return SentencePredictionTask(cfg, tiny_dictionary(words), labels)


def tiny_roberta(task, seed=0, **overrides):
    """A 1-layer, 16-dim ``roberta`` encoder with a classification head of the task's classes."""
    from argparse import Namespace

    from fairseq.models.roberta import RobertaModel

    torch.manual_seed(seed)
    args = Namespace(
        encoder_layers=1, encoder_embed_dim=16, encoder_ffn_embed_dim=32, encoder_attention_heads=2,
        dropout=0.3, attention_dropout=0.1, activation_dropout=0.1, pooler_dropout=0.3,
        max_positions=64,
    )
    for k, v in overrides.items():
        setattr(args, k, v)
    model = RobertaModel.build_model(args, task)
    model.register_classification_head(HEAD, num_classes=task.cfg.num_classes)
    return model


def sentence_batch(task, batch_size=6, seed=0, min_len=3, max_len=10):
    """A collated sentence-prediction sample: left-padded sentences of different lengths."""
    from fairseq.data import data_utils

    g = torch.Generator().manual_seed(seed)
    d = task.source_dictionary
    lengths = torch.randint(min_len, max_len + 1, (batch_size,), generator=g)
    lengths[0] = max_len
    lengths[-1] = min_len  # some padding, always
    sentences = [
        torch.cat([torch.tensor([d.bos()]), torch.randint(d.nspecial, len(d), (int(n) - 1,), generator=g)])
        for n in lengths
    ]
    tokens = data_utils.collate_tokens(sentences, d.pad(), left_pad=False)
    if task.cfg.regression_target:
        target = torch.rand(batch_size, 1, generator=g) * 5
    else:
        target = torch.randint(0, task.cfg.num_classes, (batch_size,), generator=g)
    return {
        "id": torch.arange(batch_size),
        "net_input": {"src_tokens": tokens, "src_lengths": lengths},
        "target": target,
        "ntokens": int(lengths.sum()),
        "nsentences": batch_size,
    }


def output_argmax_slack(model, sample, seed, passes=2):
    """Target positions of the ``passes`` copies of ``sample`` (dropout drawn from ``seed``)
    whose argmax two float32 computations of the output projection may disagree on (another
    kernel, another chunking: tests/rounding.py)."""
    torch.manual_seed(seed)
    with torch.no_grad():
        features, _ = model(**doubled(sample, passes)["net_input"], features_only=True)
    features = features.reshape(-1, features.size(-1))
    weight = model.decoder.output_projection.weight
    logits = features.double() @ weight.double().T
    return int(argmax_may_differ(logits, matmul_error(features, weight)).sum())
