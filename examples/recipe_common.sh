# Shared by the reproduction recipes (examples/translation/*-wmt14.sh,
# examples/language_model/*-wikitext103.sh); sourced, never run.
#
# What every recipe gets from here:
#   PYTHON        the Python of the active environment (default: python3 on PATH);
#                 fairseq, rdrop-seq and the recipe dependencies must be installed in it
#   tool NAME     the path of console script NAME (rdrop-train, rdrop-generate, ...)
#                 installed beside that Python, else the one on PATH
#   example M     run module M of the examples package with that Python
#                 (example examples.translation.sgm ...)
#   say / die     progress on stdout, errors on stderr (exit status 2)
#   usage TEXT    print "usage: TEXT" on stderr and exit with status 2
#   require_file / require_dir  stop with an error that names a missing input
#   claim_output  refuse to overwrite an existing, non-empty output directory
#                 unless FORCE=1 (which removes it first)
#   precision_args  add PRECISION's fairseq-train flag (fp16, bf16; fp32: none) to ARGS
#   wmt14_pair P  check a WMT14 pair (en-de or en-fr) and set PAIR, SRC, TGT and
#                 NAME (wmt14_en_de, the default data-bin/checkpoint name)
#   SMOKE         1: the tiny CPU version of the recipe (see the recipe READMEs)

RECIPE_NAME=${RECIPE_NAME:-$(basename "$0")}
RECIPES_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
PYTHON=${PYTHON:-python3}
SMOKE=${SMOKE:-0}
FORCE=${FORCE:-0}

say() { echo "[$RECIPE_NAME] $*"; }

die() {
    echo "[$RECIPE_NAME] error: $*" >&2
    exit 2
}

usage() {
    echo "usage: $*" >&2
    exit 2
}

if ! command -v "$PYTHON" >/dev/null 2>&1; then
    die "Python not found: PYTHON=$PYTHON (activate the environment with rdrop-seq installed, or set PYTHON)"
fi
PYTHON_BIN_DIR=$("$PYTHON" -c 'import os, sys; print(os.path.dirname(sys.executable))')
REPO_ROOT=$(cd "$RECIPES_DIR/.." && pwd)

# example MODULE ARGS...: run a module of this repository's examples package
# (example examples.translation.sgm ...), wherever the recipe runs
example() {
    PYTHONPATH="$REPO_ROOT${PYTHONPATH:+:$PYTHONPATH}" "$PYTHON" -m "$@"
}

tool() {
    local name=$1
    if [ -x "$PYTHON_BIN_DIR/$name" ]; then
        echo "$PYTHON_BIN_DIR/$name"
    elif command -v "$name" >/dev/null 2>&1; then
        command -v "$name"
    else
        die "$name not found beside $PYTHON or on PATH: install rdrop-seq in that environment (pip install -e '.[recipes]')"
    fi
}

require_file() {
    local path=$1 what=${2:-}
    if [ ! -f "$path" ]; then
        die "missing file: $path${what:+ ($what)}"
    fi
}

require_dir() {
    local path=$1 what=${2:-}
    if [ ! -d "$path" ]; then
        die "missing directory: $path${what:+ ($what)}"
    fi
}

# claim_output DIR...: every DIR must be absent or empty; FORCE=1 removes them.
claim_output() {
    local dir
    for dir in "$@"; do
        if [ -e "$dir" ] && [ -n "$(ls -A "$dir" 2>/dev/null || echo file)" ]; then
            if [ "$FORCE" = 1 ]; then
                say "FORCE=1: removing the existing $dir"
                rm -rf "$dir"
            else
                die "output directory $dir already exists and would be overwritten; remove it, choose another path, or set FORCE=1 to replace it"
            fi
        fi
    done
}

# precision_args: PRECISION's flag appended to the training command's ARGS (fp32: none)
precision_args() {
    case $PRECISION in
        fp16) ARGS+=(--fp16) ;;
        bf16) ARGS+=(--bf16) ;;
        fp32) ;;
        *) die "PRECISION=$PRECISION: fp16, bf16 or fp32" ;;
    esac
}

# elapsed SECONDS_AT_START: "12s"
elapsed() { echo "$((SECONDS - $1))s"; }

wmt14_pair() {
    case $1 in en-de | en-fr) ;; *) die "unknown pair '$1': en-de or en-fr" ;; esac
    PAIR=$1
    SRC=en
    TGT=${1#en-}
    NAME=wmt14_${1/-/_}
}
