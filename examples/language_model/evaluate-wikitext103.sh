#!/usr/bin/env bash
# Perplexity of a WikiText-103 language model with fairseq-eval-lm (every
# token scored with a long left context).  See WIKITEXT103.md.
#
#   bash evaluate-wikitext103.sh transformer|adaptive CHECKPOINT_DIR [more fairseq-eval-lm arguments]
#
# transformer  --tokens-per-sample 512 --context-window 400 --batch-size 2
# adaptive     Baevski & Auli: --tokens-per-sample 3072 --context-window 2560
#              --batch-size 2 --softmax-batch 1024
# Environment:
#   DATA_BIN=data-bin/wikitext-103
#   CHECKPOINT=checkpoint_best.pt     which checkpoint of CHECKPOINT_DIR
#   SUBSETS="valid test"
#   RESULTS=CHECKPOINT_DIR/eval       eval-SUBSET.log and ppl.json (refused if it
#                                     exists, unless FORCE=1)
#   SMOKE=1                           CPU, short windows
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
source "$HERE/../recipe_common.sh"

if [ $# -lt 2 ]; then
    usage "[DATA_BIN=DIR] bash $0 transformer|adaptive CHECKPOINT_DIR [fairseq-eval-lm args]"
fi
MODEL=$1
CKPT_DIR=$2
shift 2
DATA_BIN=${DATA_BIN:-data-bin/wikitext-103}
CHECKPOINT=${CHECKPOINT:-checkpoint_best.pt}
SUBSETS=${SUBSETS:-valid test}
RESULTS=${RESULTS:-$CKPT_DIR/eval}
case $MODEL in
    transformer) EVAL=(--tokens-per-sample 512 --context-window 400 --batch-size 2) ;;
    adaptive) EVAL=(--tokens-per-sample 3072 --context-window 2560 --batch-size 2 --softmax-batch 1024) ;;
    *) die "unknown model '$MODEL': transformer or adaptive" ;;
esac
# fairseq 0.12 leaves out the last batch when its size is no multiple of this (default 8):
# every block of the split must be scored
EVAL+=(--required-batch-size-multiple 1)
if [ "$SMOKE" = 1 ]; then
    EVAL+=(--cpu --tokens-per-sample 64 --context-window 32)
fi
require_file "$CKPT_DIR/$CHECKPOINT" "train-wikitext103.sh writes it; or set CHECKPOINT"
require_file "$DATA_BIN/dict.txt" "run prepare-wikitext103.sh first or set DATA_BIN"
EVAL_LM=$(tool rdrop-eval-lm)
claim_output "$RESULTS"
mkdir -p "$RESULTS"
start=$SECONDS
entries=()
for subset in $SUBSETS; do
    say "perplexity on $subset: rdrop-eval-lm $DATA_BIN --path $CKPT_DIR/$CHECKPOINT --gen-subset $subset ${EVAL[*]} $*"
    "$EVAL_LM" "$DATA_BIN" --task language_modeling --path "$CKPT_DIR/$CHECKPOINT" \
        --gen-subset "$subset" "${EVAL[@]}" "$@" 2>&1 | tee "$RESULTS/eval-$subset.log"
    ppl=$(sed -n 's/.*Perplexity: \([0-9.][0-9.]*\).*/\1/p' "$RESULTS/eval-$subset.log" | tail -n 1)
    [ -n "$ppl" ] || die "no perplexity in $RESULTS/eval-$subset.log"
    say "$subset perplexity: $ppl"
    entries+=("\"$subset\": $ppl")
done
(IFS=,; echo "{${entries[*]}}") >"$RESULTS/ppl.json"
say "done in $(elapsed "$start"): $RESULTS/ppl.json"
