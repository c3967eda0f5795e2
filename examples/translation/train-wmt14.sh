#!/usr/bin/env bash
# Train Transformer big on WMT14 En-De / En-Fr with the R-Drop paper's settings
# (rdrop) or the same model with the stock criterion (baseline).  See WMT14.md.
#
#   bash train-wmt14.sh en-de|en-fr rdrop|baseline [more fairseq-train arguments]
#
# --update-freq is computed so that GPUs x update-freq = 16 (max-tokens 4096
# per GPU), from the processes this run has: see examples/recipe_launch.py.
# Environment:
#   DATA_BIN=data-bin/wmt14_en_de           from prepare-wmt14.sh
#   SAVE_DIR=checkpoints/wmt14_en_de_rdrop  refused if it holds checkpoints, unless
#                                           RESUME=1 (continue) or FORCE=1 (start over)
#   PRECISION=fp16 | bf16 | fp32            (fp16 needs a CUDA GPU; checked first)
#   NNODES=1 NPROC_PER_NODE=<#GPUs> NODE_RANK=0 MASTER_ADDR MASTER_PORT=29500
#   UPDATE_FREQ                             override the computed --update-freq
#   KEEP_LAST_EPOCHS=10                     epoch checkpoints kept (evaluate averages the last 5)
#   DRY_RUN=1                               print the training command only
#   SMOKE=1                                 tiny model, a few updates on CPU, float32
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
source "$HERE/../recipe_common.sh"

if [ $# -lt 2 ]; then
    usage "[DATA_BIN=DIR] [SAVE_DIR=DIR] bash $0 en-de|en-fr rdrop|baseline [fairseq-train args]"
fi
wmt14_pair "$1"
RUN=$2
shift 2
DATA_BIN=${DATA_BIN:-data-bin/$NAME}
SAVE_DIR=${SAVE_DIR:-checkpoints/${NAME}_$RUN}
KEEP_LAST_EPOCHS=${KEEP_LAST_EPOCHS:-10}
if [ "$SMOKE" = 1 ]; then
    PRECISION=${PRECISION:-fp32}
    export NPROC_PER_NODE=${NPROC_PER_NODE:-1}
fi
PRECISION=${PRECISION:-fp16}
require_file "$DATA_BIN/dict.$SRC.txt" "the binarised WMT14 $PAIR data: run prepare-wmt14.sh first or set DATA_BIN"

ARGS=(
    "$DATA_BIN" --task translation --source-lang "$SRC" --target-lang "$TGT"
    --arch transformer_vaswani_wmt_en_de_big --share-all-embeddings
    --dropout 0.1 --attention-dropout 0.1 --activation-dropout 0.1
    --optimizer adam --adam-betas "(0.9, 0.98)" --clip-norm 0.0 --weight-decay 0.0
    --lr 0.001 --lr-scheduler inverse_sqrt --warmup-updates 6000 --warmup-init-lr 1e-07
    --label-smoothing 0.1
    --max-tokens 4096 --max-update 300000
    --save-dir "$SAVE_DIR" --keep-last-epochs "$KEEP_LAST_EPOCHS"
    --log-format simple --log-interval 100 --seed 1
)
case $RUN in
    rdrop) ARGS+=(--criterion rdrop_label_smoothed_cross_entropy --rdrop-alpha 5) ;;
    baseline) ARGS+=(--criterion label_smoothed_cross_entropy) ;;
    *) die "unknown run '$RUN': rdrop or baseline" ;;
esac
precision_args
if [ "$SMOKE" = 1 ]; then
    # the same command with a tiny model, small batches and three epochs on CPU
    ARGS+=(
        --cpu --encoder-layers 1 --decoder-layers 1
        --encoder-embed-dim 32 --decoder-embed-dim 32
        --encoder-ffn-embed-dim 64 --decoder-ffn-embed-dim 64
        --encoder-attention-heads 2 --decoder-attention-heads 2
        --max-tokens 256 --max-epoch 3 --log-interval 1 --num-workers 0
        --required-batch-size-multiple 1   # the 7-sentence valid set is one batch < 8
    )
fi

exec "$PYTHON" "$RECIPES_DIR/recipe_launch.py" --name "$RECIPE_NAME" --gpus-x-update-freq 16 -- "${ARGS[@]}" "$@"
