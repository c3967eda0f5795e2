#!/usr/bin/env bash
# Optional, needs the internet: download and extract the WMT14 tarballs that
# prepare-wmt14.sh reads, into RAW_DIR (those already there are not fetched again).
#
#   bash download-wmt14.sh en-de|en-fr RAW_DIR        (VALID=newstest2013: also dev.tgz)
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
source "$HERE/../recipe_common.sh"

if [ $# -ne 2 ]; then
    usage "bash $0 en-de|en-fr RAW_DIR"
fi
PAIR=$1
mkdir -p "$2"
RAW=$(cd "$2" && pwd)
tarballs=$(example examples.translation.wmt14_corpora urls --pair "$PAIR" --valid "${VALID:-split}") || exit 2
cd "$RAW"
while read -r name url; do
    if [ -f "$name" ]; then
        say "$name: already downloaded"
    else
        say "downloading $url..."
        if command -v curl >/dev/null 2>&1; then
            curl -fL --retry 3 -o "$name.part" "$url"
        else
            wget -O "$name.part" "$url"
        fi
        mv "$name.part" "$name"
    fi
    say "extracting $name..."
    case $name in
        *.tgz) tar -xzf "$name" ;;
        *.tar) tar -xf "$name" ;;
    esac
done <<<"$tarballs"
say "raw data in $RAW; next: bash $HERE/prepare-wmt14.sh $PAIR $RAW"
