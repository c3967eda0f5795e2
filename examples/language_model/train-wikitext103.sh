#!/usr/bin/env bash
# Train a WikiText-103 language model with R-Drop (rdrop) or the stock
# criterion (baseline).  See WIKITEXT103.md.
#
#   bash train-wikitext103.sh transformer|adaptive rdrop|baseline [more fairseq-train arguments]
#
# transformer  transformer_lm_gpt, fairseq's language-model README recipe
#              (GPUs x update-freq = 32: 2 GPUs x 16 there), dropout 0.1;
#              R-Drop: rdrop_cross_entropy, alpha 1
# adaptive     the Adaptive Transformer (rdrop_transformer_lm_wiki103 = fairseq's
#              transformer_lm_wiki103), fairseq's adaptive-inputs recipe
#              (GPUs x update-freq = 24: 8 GPUs x 3), legacy_ddp;
#              R-Drop: rdrop_adaptive_loss, alpha 1
# --update-freq follows from the number of processes: examples/recipe_launch.py.
# Environment:
#   DATA_BIN=data-bin/wikitext-103
#   SAVE_DIR=checkpoints/wikitext103_transformer_rdrop   refused if it holds checkpoints,
#                                          unless RESUME=1 (continue) or FORCE=1 (start over)
#   PRECISION=fp16 | bf16 | fp32           (fp16 needs a CUDA GPU; checked first)
#   NNODES=1 NPROC_PER_NODE=<#GPUs> NODE_RANK=0 MASTER_ADDR MASTER_PORT=29500, UPDATE_FREQ
#   DRY_RUN=1   print the training command only
#   SMOKE=1     tiny model, a few updates on CPU, float32
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
source "$HERE/../recipe_common.sh"

if [ $# -lt 2 ]; then
    usage "[DATA_BIN=DIR] [SAVE_DIR=DIR] bash $0 transformer|adaptive rdrop|baseline [fairseq-train args]"
fi
MODEL=$1
RUN=$2
shift 2
DATA_BIN=${DATA_BIN:-data-bin/wikitext-103}
SAVE_DIR=${SAVE_DIR:-checkpoints/wikitext103_${MODEL}_$RUN}
if [ "$SMOKE" = 1 ]; then
    PRECISION=${PRECISION:-fp32}
    export NPROC_PER_NODE=${NPROC_PER_NODE:-1}
fi
PRECISION=${PRECISION:-fp16}
require_file "$DATA_BIN/dict.txt" "the binarised WikiText-103: run prepare-wikitext103.sh first or set DATA_BIN"

ARGS=("$DATA_BIN" --task language_modeling --save-dir "$SAVE_DIR" --log-format simple --log-interval 100)
case $MODEL in
    transformer)
        GPUS_X_UPDATE_FREQ=32
        ARGS+=(
            --arch transformer_lm_gpt --share-decoder-input-output-embed --dropout 0.1
            --optimizer adam --adam-betas "(0.9, 0.98)" --weight-decay 0.01 --clip-norm 0.0
            --lr 0.0005 --lr-scheduler inverse_sqrt --warmup-updates 4000 --warmup-init-lr 1e-07
            --tokens-per-sample 512 --sample-break-mode none --max-tokens 2048
            --max-update 50000 --seed 1
        )
        case $RUN in
            rdrop) ARGS+=(--criterion rdrop_cross_entropy --rdrop-alpha 1.0) ;;
            baseline) ARGS+=(--criterion cross_entropy) ;;
        esac
        SMOKE_ARGS=(--decoder-layers 1 --decoder-embed-dim 32 --decoder-ffn-embed-dim 64
            --decoder-attention-heads 2)
        ;;
    adaptive)
        GPUS_X_UPDATE_FREQ=24
        ARGS+=(
            --arch rdrop_transformer_lm_wiki103
            --max-update 286000 --lr 1.0 --t-mult 2 --lr-period-updates 270000
            --lr-scheduler cosine --lr-shrink 0.75 --warmup-updates 16000 --warmup-init-lr 1e-07
            --stop-min-lr 1e-09 --optimizer nag --min-lr 0.0001 --clip-norm 0.1
            --max-tokens 3072 --tokens-per-sample 3072 --seed 1 --sample-break-mode none
            --skip-invalid-size-inputs-valid-test --ddp-backend legacy_ddp
        )
        case $RUN in
            rdrop) ARGS+=(--criterion rdrop_adaptive_loss --rdrop-alpha 1.0) ;;
            baseline) ARGS+=(--criterion adaptive_loss) ;;
        esac
        SMOKE_ARGS=(--decoder-layers 1 --decoder-embed-dim 32 --decoder-input-dim 32
            --decoder-output-dim 32 --decoder-ffn-embed-dim 64 --decoder-attention-heads 2
            --adaptive-input-cutoff 50,150 --adaptive-softmax-cutoff 50,150)
        ;;
    *) die "unknown model '$MODEL': transformer or adaptive" ;;
esac
case $RUN in rdrop | baseline) ;; *) die "unknown run '$RUN': rdrop or baseline" ;; esac
precision_args
if [ "$SMOKE" = 1 ]; then
    # the same command with a tiny model, short samples and three epochs on CPU
    ARGS+=("${SMOKE_ARGS[@]}" --cpu --tokens-per-sample 64 --max-tokens 256 --max-epoch 3
        --log-interval 1 --num-workers 0 --required-batch-size-multiple 1)
fi

exec "$PYTHON" "$RECIPES_DIR/recipe_launch.py" --name "$RECIPE_NAME" \
    --gpus-x-update-freq "$GPUS_X_UPDATE_FREQ" -- "${ARGS[@]}" "$@"
