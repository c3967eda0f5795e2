#!/usr/bin/env bash
# The whole WikiText-103 recipe on one machine: prepare, train baseline and
# R-Drop for both models, evaluate each.  See WIKITEXT103.md.
#
#   bash run-wikitext103.sh WIKITEXT_DIR        the real thing (GPUs)
#   SMOKE=1 bash run-wikitext103.sh             tiny CPU run on tests/fixtures/wikitext-103
#
# Environment (besides that of the stage scripts, which it passes on):
#   WORK=wikitext103-work        everything goes below it (SMOKE=1: a new temporary directory)
#   MODELS="transformer adaptive"  RUNS="baseline rdrop"  SUBSETS="valid test"
# For several nodes run the stage scripts instead (train-wikitext103.sh on every node).
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
source "$HERE/../recipe_common.sh"

if [ $# -gt 1 ] || { [ $# -eq 0 ] && [ "$SMOKE" != 1 ]; }; then
    usage "bash $0 WIKITEXT_DIR    or    SMOKE=1 bash $0 [WIKITEXT_DIR]"
fi
if [ "$SMOKE" = 1 ]; then
    RAW=${1:-$HERE/../../tests/fixtures/wikitext-103}
    WORK=${WORK:-$(mktemp -d "${TMPDIR:-/tmp}/rdrop-smoke-wikitext103.XXXXXX")}
else
    RAW=$1
    WORK=${WORK:-wikitext103-work}
fi
MODELS=${MODELS:-transformer adaptive}
RUNS=${RUNS:-baseline rdrop}
export SMOKE FORCE PYTHON SUBSETS
start=$SECONDS
say "work directory: $WORK"

export DATA_BIN=$WORK/data-bin/wikitext-103
bash "$HERE/prepare-wikitext103.sh" "$RAW"
for model in $MODELS; do
    for run in $RUNS; do
        SAVE_DIR=$WORK/checkpoints/wikitext103_${model}_$run \
            bash "$HERE/train-wikitext103.sh" "$model" "$run"
        RESULTS=$WORK/results/wikitext103_${model}_$run \
            bash "$HERE/evaluate-wikitext103.sh" "$model" "$WORK/checkpoints/wikitext103_${model}_$run"
    done
done

say "results (perplexity, checkpoint_best.pt):"
for model in $MODELS; do
    for run in $RUNS; do
        say "  $model $run: $(cat "$WORK/results/wikitext103_${model}_$run/ppl.json")"
    done
done
say "done in $(elapsed "$start"); everything is in $WORK"
