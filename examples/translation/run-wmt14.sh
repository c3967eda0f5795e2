#!/usr/bin/env bash
# The whole WMT14 recipe on one machine: prepare, train baseline and R-Drop,
# average + translate + score each.  See WMT14.md.
#
#   bash run-wmt14.sh en-de|en-fr RAW_DIR       the real thing (GPUs)
#   SMOKE=1 bash run-wmt14.sh en-de|en-fr       tiny CPU run on tests/fixtures/wmt14
#
# Environment (besides that of the stage scripts, which it passes on):
#   WORK=wmt14-en-de       everything goes below it (SMOKE=1: a new temporary directory)
#   RUNS="baseline rdrop"  which trainings
#   AVG_N=5                (SMOKE=1: 2) epoch checkpoints averaged
# For several nodes run the stage scripts instead (train-wmt14.sh on every node).
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
source "$HERE/../recipe_common.sh"

if [ $# -lt 1 ] || [ $# -gt 2 ] || { [ $# -eq 1 ] && [ "$SMOKE" != 1 ]; }; then
    usage "bash $0 en-de|en-fr RAW_DIR    or    SMOKE=1 bash $0 en-de|en-fr [RAW_DIR]"
fi
wmt14_pair "$1"
if [ "$SMOKE" = 1 ]; then
    RAW=${2:-$HERE/../../tests/fixtures/wmt14}
    WORK=${WORK:-$(mktemp -d "${TMPDIR:-/tmp}/rdrop-smoke-$NAME.XXXXXX")}
    export AVG_N=${AVG_N:-2}
else
    RAW=$2
    WORK=${WORK:-wmt14-$PAIR}
fi
RUNS=${RUNS:-baseline rdrop}
export SMOKE FORCE PYTHON
start=$SECONDS
say "work directory: $WORK"

export OUT=$WORK/$NAME DATA_BIN=$WORK/data-bin/$NAME
bash "$HERE/prepare-wmt14.sh" "$PAIR" "$RAW"
for run in $RUNS; do
    SAVE_DIR=$WORK/checkpoints/${NAME}_$run bash "$HERE/train-wmt14.sh" "$PAIR" "$run"
    RESULTS=$WORK/results/${NAME}_$run \
        bash "$HERE/evaluate-wmt14.sh" "$PAIR" "$WORK/checkpoints/${NAME}_$run"
done

say "results (newstest2014, $PAIR, average of the last ${AVG_N:-5} epoch checkpoints):"
for run in $RUNS; do
    "$PYTHON" - "$run" "$WORK/results/${NAME}_$run/scores.json" <<'PY'
import json, sys
run, path = sys.argv[1], sys.argv[2]
s = json.load(open(path, encoding="utf-8"))
cs, sb = s["tokenized_compound_split"], s["detokenized_sacrebleu"]
print(f"  {run:9s} compound-split BLEU {cs['bleu']:6.2f}   sacreBLEU {sb['bleu']:6.2f}  {sb['signature']}")
PY
done
say "done in $(elapsed "$start"); everything is in $WORK"
