"""Adaptive Transformer language-model architectures (Baevski & Auli, 2019).

Registered on fairseq's ``transformer_lm`` model, so training, checkpoints and
``fairseq-eval-lm`` are stock fairseq; only the default settings are new.
Every setting can still be overridden on the command line.

``rdrop_transformer_lm_wiki103``
    The Adaptive Transformer that the R-Drop paper (Liang et al. 2021)
    regularises on WikiText-103: fairseq's ``transformer_lm_wiki103`` settings
    unchanged -- 16 decoder layers, 1024 dims, 4096 FFN dims, 8 heads, adaptive
    input and adaptive softmax with cutoffs 20000,60000 and factor 4, tied
    adaptive weights and projections, pre-norm without a final layer norm;
    dropout 0.3, attention dropout 0.1, activation dropout 0.1, adaptive-softmax
    dropout 0.2.  The paper trains it with R-Drop at alpha = 1
    (``--criterion rdrop_adaptive_loss``, whose default alpha is 1) and
    otherwise the Adaptive Transformer recipe (NAG, cosine schedule,
    ``--tokens-per-sample 3072``); about 247M parameters with the 267,744-word
    WikiText-103 dictionary.

``rdrop_transformer_lm_adaptive_small``
    The same design sized for CPUs and small vocabularies (Penn Treebank's 10k
    words): 4 layers, 256 dims, 1024 FFN dims, 4 heads, adaptive input and
    softmax with cutoffs 2000,6000, the same tying and dropouts as above except
    adaptive-softmax dropout 0.1.  ``--decoder-input-dim`` and
    ``--decoder-output-dim`` default to the embedding dim (they must match it
    for the tied adaptive weights), so it trains out of the box; with a smaller
    vocabulary pass smaller ``--adaptive-input-cutoff`` and
    ``--adaptive-softmax-cutoff`` (the same list).

Both need ``--task language_modeling`` and an adaptive-softmax criterion:
``rdrop_adaptive_loss`` (or stock ``adaptive_loss``) with
``--ddp-backend legacy_ddp``.
"""

from fairseq.models import register_model_architecture
from fairseq.models.transformer_lm import transformer_lm_baevski_wiki103
from fairseq.utils import safe_getattr

ARCHITECTURES = ("rdrop_transformer_lm_wiki103", "rdrop_transformer_lm_adaptive_small")


@register_model_architecture("transformer_lm", "rdrop_transformer_lm_wiki103")
def rdrop_transformer_lm_wiki103(args):
    transformer_lm_baevski_wiki103(args)


@register_model_architecture("transformer_lm", "rdrop_transformer_lm_adaptive_small")
def rdrop_transformer_lm_adaptive_small(args):
    args.decoder_layers = safe_getattr(args, "decoder_layers", 4)
    args.decoder_embed_dim = safe_getattr(args, "decoder_embed_dim", 256)
    args.decoder_ffn_embed_dim = safe_getattr(args, "decoder_ffn_embed_dim", 1024)
    args.decoder_attention_heads = safe_getattr(args, "decoder_attention_heads", 4)
    args.decoder_input_dim = safe_getattr(args, "decoder_input_dim", args.decoder_embed_dim)
    args.decoder_output_dim = safe_getattr(args, "decoder_output_dim", args.decoder_embed_dim)
    args.adaptive_input_cutoff = safe_getattr(args, "adaptive_input_cutoff", "2000,6000")
    args.adaptive_softmax_cutoff = safe_getattr(args, "adaptive_softmax_cutoff", "2000,6000")
    args.adaptive_softmax_dropout = safe_getattr(args, "adaptive_softmax_dropout", 0.1)
    # everything else (adaptive input, tying, dropouts, no final norm) as wiki103
    transformer_lm_baevski_wiki103(args)
