#!/usr/bin/env bash
# WMT14 En-De / En-Fr: raw corpora -> fairseq data-bin, as fairseq's
# examples/translation/prepare-wmt14en2de.sh --icml17 and prepare-wmt14en2fr.sh
# do it, with the Moses Perl scripts replaced by sacremoses (moses_text.py,
# clean_corpus.py) and subword-nmt's Python package.  See WMT14.md.
#
#   bash prepare-wmt14.sh en-de|en-fr RAW_DIR
#
# RAW_DIR holds the extracted WMT tarballs (layout: wmt14_corpora.py;
# download-wmt14.sh fetches them).  Environment:
#   OUT=wmt14_en_de            text output: train/valid/test.{en,de} (BPE), code, tmp/
#   DATA_BIN=data-bin/wmt14_en_de   fairseq-preprocess --joined-dictionary output
#   BPE_TOKENS=32000 (en-de) | 40000 (en-fr)   joint BPE merge operations
#   VALID=split                every VALID_EVERY-th training line (100 en-de, 1333
#                              en-fr) is the valid set, as in fairseq; or newstest2013
#   WORKERS=$(nproc)           processes for tokenisation, BPE and binarisation
#   FORCE=1                    replace existing OUT / DATA_BIN (otherwise refused)
#   SMOKE=1                    small BPE (400), VALID_EVERY=10, 1 worker (for the fixtures)
#   PYTHON=python3             the environment's Python
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
source "$HERE/../recipe_common.sh"

if [ $# -ne 2 ]; then
    usage "[OUT=DIR] [DATA_BIN=DIR] bash $0 en-de|en-fr RAW_DIR"
fi
wmt14_pair "$1"
RAW=$2
OUT=${OUT:-$NAME}
DATA_BIN=${DATA_BIN:-data-bin/$NAME}
VALID=${VALID:-split}
if [ "$SMOKE" = 1 ]; then
    BPE_TOKENS=${BPE_TOKENS:-400}
    VALID_EVERY=${VALID_EVERY:-10}
    WORKERS=${WORKERS:-1}
fi
WORKERS=${WORKERS:-$(nproc 2>/dev/null || echo 1)}

if ! "$PYTHON" -c "import sacremoses, subword_nmt" 2>/dev/null; then
    die "the WMT14 recipe needs sacremoses and subword-nmt in $PYTHON's environment: pip install 'sacremoses>=0.2.0' 'subword-nmt>=0.3.8' (or pip install -e '.[recipes]')"
fi
# every raw file, or an error naming each missing one
corpora=$(example examples.translation.wmt14_corpora shell --pair "$PAIR" --raw "$RAW" --valid "$VALID") || exit 2
eval "$corpora"
BPE_TOKENS=${BPE_TOKENS:-$PAIR_BPE_TOKENS}
VALID_EVERY=${VALID_EVERY:-$PAIR_VALID_EVERY}

claim_output "$OUT" "$DATA_BIN"
tmp=$OUT/tmp
mkdir -p "$tmp"
MOSES=(example examples.translation.moses_text tokenize --workers "$WORKERS")
lines() { wc -l <"$1" | tr -d ' '; }
raw_lines() { case $1 in *.gz) gzip -dc "$1" | wc -l | tr -d ' ' ;; *) lines "$1" ;; esac; }
start=$SECONDS

say "pre-processing train data (normalise punctuation, remove non-printing characters, tokenise -a)..."
"${MOSES[@]}" --normalize --lang "$SRC" "${TRAIN_SRC_FILES[@]}" >"$tmp/train.tags.$PAIR.tok.$SRC"
"${MOSES[@]}" --normalize --lang "$TGT" "${TRAIN_TGT_FILES[@]}" >"$tmp/train.tags.$PAIR.tok.$TGT"
n_src=$(lines "$tmp/train.tags.$PAIR.tok.$SRC")
if [ "$n_src" != "$(lines "$tmp/train.tags.$PAIR.tok.$TGT")" ]; then
    for i in "${!TRAIN_SRC_FILES[@]}"; do
        a=$(raw_lines "${TRAIN_SRC_FILES[$i]}")
        b=$(raw_lines "${TRAIN_TGT_FILES[$i]}")
        [ "$a" = "$b" ] || die "misaligned corpus: ${TRAIN_SRC_FILES[$i]} has $a lines but ${TRAIN_TGT_FILES[$i]} has $b"
    done
    die "the $SRC and $TGT training data have different numbers of lines"
fi
say "  ${#TRAIN_SRC_FILES[@]} corpora, $n_src lines: $(printf '%s ' "${TRAIN_SRC_FILES[@]##*/}")"

say "pre-processing test data (newstest2014: <seg> text, tokenise -a)..."
example examples.translation.sgm fairseq "$TEST_SRC_SGM" | "${MOSES[@]}" --lang "$SRC" >"$tmp/test.$SRC"
example examples.translation.sgm fairseq "$TEST_REF_SGM" | "${MOSES[@]}" --lang "$TGT" >"$tmp/test.$TGT"
if [ "$(lines "$tmp/test.$SRC")" != "$(lines "$tmp/test.$TGT")" ]; then
    die "misaligned test set: $TEST_SRC_SGM and $TEST_REF_SGM have different numbers of segments"
fi

if [ "$VALID" = split ]; then
    say "splitting train and valid (every ${VALID_EVERY}th line is valid)..."
    for l in "$SRC" "$TGT"; do
        awk -v n="$VALID_EVERY" 'NR % n == 0' "$tmp/train.tags.$PAIR.tok.$l" >"$tmp/valid.$l"
        awk -v n="$VALID_EVERY" 'NR % n != 0' "$tmp/train.tags.$PAIR.tok.$l" >"$tmp/train.$l"
    done
else
    say "valid = newstest2013 (pre-processed like the training data)..."
    "${MOSES[@]}" --normalize --lang "$SRC" "$DEV_SRC" >"$tmp/valid.$SRC"
    "${MOSES[@]}" --normalize --lang "$TGT" "$DEV_TGT" >"$tmp/valid.$TGT"
    for l in "$SRC" "$TGT"; do
        cp "$tmp/train.tags.$PAIR.tok.$l" "$tmp/train.$l"
    done
fi
if [ "$(lines "$tmp/valid.$SRC")" = 0 ]; then
    die "the valid set is empty (VALID_EVERY=$VALID_EVERY is larger than the training data)"
fi

say "learning $BPE_TOKENS joint BPE merges on train.$SRC + train.$TGT..."
cat "$tmp/train.$SRC" "$tmp/train.$TGT" >"$tmp/train.$TGT-$SRC"
"$PYTHON" -m subword_nmt.learn_bpe -s "$BPE_TOKENS" --num-workers "$WORKERS" \
    --input "$tmp/train.$TGT-$SRC" --output "$OUT/code"
for l in "$SRC" "$TGT"; do
    for f in train valid test; do
        "$PYTHON" -m subword_nmt.apply_bpe -c "$OUT/code" --num-workers "$WORKERS" \
            --input "$tmp/$f.$l" --output "$tmp/bpe.$f.$l"
    done
done

say "cleaning train and valid (1-250 tokens, length ratio <= 1.5)..."
example examples.translation.clean_corpus --ratio 1.5 "$tmp/bpe.train" "$SRC" "$TGT" "$OUT/train" 1 250
example examples.translation.clean_corpus --ratio 1.5 "$tmp/bpe.valid" "$SRC" "$TGT" "$OUT/valid" 1 250
for l in "$SRC" "$TGT"; do
    cp "$tmp/bpe.test.$l" "$OUT/test.$l"
done

say "binarising (fairseq-preprocess --joined-dictionary) into $DATA_BIN..."
"$PYTHON" -m fairseq_cli.preprocess --source-lang "$SRC" --target-lang "$TGT" \
    --trainpref "$OUT/train" --validpref "$OUT/valid" --testpref "$OUT/test" \
    --destdir "$DATA_BIN" --joined-dictionary --workers "$WORKERS"
cp "$OUT/code" "$DATA_BIN/code"
# the raw newstest2014 reference, as `sacrebleu -t wmt14/full -l $PAIR` has it
example examples.translation.sgm sacrebleu "$TEST_REF_SGM" >"$DATA_BIN/test.ref.detok.$TGT"
if [ "$(lines "$DATA_BIN/test.ref.detok.$TGT")" != "$(lines "$OUT/test.$TGT")" ]; then
    die "$TEST_REF_SGM: the sacrebleu and fairseq extractions disagree on the number of segments"
fi

say "done in $(elapsed "$start"): train $(lines "$OUT/train.$SRC"), valid $(lines "$OUT/valid.$SRC"), test $(lines "$OUT/test.$SRC") sentence pairs; $DATA_BIN"
