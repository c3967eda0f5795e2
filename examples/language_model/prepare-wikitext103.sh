#!/usr/bin/env bash
# WikiText-103 -> fairseq data-bin (fairseq-preprocess --only-source), as in
# fairseq's language-model README.  See WIKITEXT103.md.
#
#   bash prepare-wikitext103.sh WIKITEXT_DIR
#
# WIKITEXT_DIR is the unzipped wikitext-103 directory of wikitext-103-v1.zip
# (the tokenised version): wiki.train.tokens, wiki.valid.tokens, wiki.test.tokens.
# Environment:
#   DATA_BIN=data-bin/wikitext-103   output (refused if it exists, unless FORCE=1)
#   WORKERS=$(nproc)                 binarisation processes
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
source "$HERE/../recipe_common.sh"

if [ $# -ne 1 ]; then
    usage "[DATA_BIN=DIR] bash $0 WIKITEXT_DIR"
fi
RAW=$1
DATA_BIN=${DATA_BIN:-data-bin/wikitext-103}
WORKERS=${WORKERS:-$( [ "$SMOKE" = 1 ] && echo 1 || nproc 2>/dev/null || echo 1)}
require_dir "$RAW" "the unzipped wikitext-103 directory"
for split in train valid test; do
    require_file "$RAW/wiki.$split.tokens" "from wikitext-103-v1.zip"
done
claim_output "$DATA_BIN"
start=$SECONDS
say "binarising $RAW into $DATA_BIN..."
"$PYTHON" -m fairseq_cli.preprocess --only-source \
    --trainpref "$RAW/wiki.train.tokens" --validpref "$RAW/wiki.valid.tokens" \
    --testpref "$RAW/wiki.test.tokens" --destdir "$DATA_BIN" --workers "$WORKERS"
say "done in $(elapsed "$start"): $(wc -l <"$DATA_BIN/dict.txt" | tr -d ' ') words in the dictionary; $DATA_BIN"
