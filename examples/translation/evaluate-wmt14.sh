#!/usr/bin/env bash
# Evaluate a WMT14 run: average the last AVG_N epoch checkpoints, translate
# newstest2014 with beam 4 and length penalty 0.6, and score it both ways
# (compound-split tokenised BLEU, detokenised sacreBLEU).  See WMT14.md.
#
#   bash evaluate-wmt14.sh en-de|en-fr CHECKPOINT_DIR [more fairseq-generate arguments]
#
# Environment:
#   DATA_BIN=data-bin/wmt14_en_de      from prepare-wmt14.sh
#   AVG_N=5                            epoch checkpoints to average
#   RESULTS=CHECKPOINT_DIR/test-avgN   output: checkpoint.avgN.pt, generate-test.txt,
#                                      scores.json (refused if it exists, unless FORCE=1)
#   BATCH_SIZE=128                     sentences per generation batch
#   SMOKE=1                            CPU, outputs of at most 20 tokens past the source
# --required-batch-size-multiple 1: fairseq 0.12 otherwise drops the last batch when
# its size is not a multiple of 8 (fairseq issue #5036), i.e. some test sentences.
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
source "$HERE/../recipe_common.sh"

if [ $# -lt 2 ]; then
    usage "[DATA_BIN=DIR] [AVG_N=5] bash $0 en-de|en-fr CHECKPOINT_DIR [fairseq-generate args]"
fi
wmt14_pair "$1"
CKPT_DIR=$2
shift 2
DATA_BIN=${DATA_BIN:-data-bin/$NAME}
AVG_N=${AVG_N:-5}
RESULTS=${RESULTS:-$CKPT_DIR/test-avg$AVG_N}
BATCH_SIZE=${BATCH_SIZE:-128}
require_dir "$CKPT_DIR" "the --save-dir of train-wmt14.sh"
require_file "$DATA_BIN/test.$SRC-$TGT.$SRC.bin" "the binarised newstest2014: run prepare-wmt14.sh first or set DATA_BIN"
require_file "$DATA_BIN/test.ref.detok.$TGT" "written by prepare-wmt14.sh"
GENERATE=$(tool rdrop-generate)
claim_output "$RESULTS"
mkdir -p "$RESULTS"
start=$SECONDS

AVERAGED=$RESULTS/checkpoint.avg$AVG_N.pt
say "averaging the last $AVG_N epoch checkpoints of $CKPT_DIR..."
example examples.translation.average_checkpoints --inputs "$CKPT_DIR" --num-epoch-checkpoints "$AVG_N" \
    --output "$AVERAGED"

GEN=(
    "$DATA_BIN" --task translation --source-lang "$SRC" --target-lang "$TGT"
    --path "$AVERAGED" --gen-subset test
    --beam 4 --lenpen 0.6 --remove-bpe --batch-size "$BATCH_SIZE"
    --required-batch-size-multiple 1 --results-path "$RESULTS"
)
if [ "$SMOKE" = 1 ]; then
    GEN+=(--cpu --max-len-a 1 --max-len-b 20)
fi
say "translating newstest2014 (beam 4, lenpen 0.6)..."
say "running: rdrop-generate ${GEN[*]} $*"
"$GENERATE" "${GEN[@]}" "$@"

say "scoring..."
example examples.translation.score_generate --generate "$RESULTS/generate-test.txt" --lang "$TGT" \
    --detok-ref "$DATA_BIN/test.ref.detok.$TGT" --json "$RESULTS/scores.json"
say "done in $(elapsed "$start"): $RESULTS/scores.json"
