"""The German-English Debian corpus as files: its TSV columns (``split<TAB>de<TAB>en``), the
snapshot in ``data/`` with its ``PROVENANCE.json``, and the export as line-aligned text files.
The format, the comparison of a rebuild with the snapshot and the snapshot's rewrite are
``examples.common.corpus_snapshot``'s.
"""

import os

from examples.common import corpus_snapshot
# SPLITS, corpus_digest, say and splits_to_rows also serve this corpus's callers from here
from examples.common.corpus_snapshot import SPLITS, corpus_digest, debian_source, rebuild_command, say, splits_to_rows
from examples.common.provenance import utc_now
from examples.common.stages import atomic_write

HERE = os.path.dirname(os.path.abspath(__file__))
DATA_DIR = os.path.join(HERE, "data")
SNAPSHOT = os.path.join(DATA_DIR, "debian-de-en.tsv.xz")
PROVENANCE = os.path.join(DATA_DIR, "PROVENANCE.json")

LANGS = ("de", "en")
COLUMNS = ("split",) + LANGS


def write_tsv(path, rows):
    """Write ``(split, de, en)`` rows atomically (xz-compressed if ``*.xz``)."""
    corpus_snapshot.write_tsv(path, COLUMNS, rows)


def read_tsv(path):
    """Read a corpus TSV into ``{split: [(de, en), ...]}``."""
    return corpus_snapshot.read_tsv(path, COLUMNS)


def compare_with_snapshot(corpus_tsv, snapshot=SNAPSHOT):
    """Print whether the built corpus equals the snapshot; return True if equal."""
    return corpus_snapshot.compare_with_snapshot(corpus_tsv, snapshot, COLUMNS)


def update_snapshot(corpus_tsv, info, release, snapshot=SNAPSHOT, provenance=PROVENANCE):
    """Write the xz snapshot and its provenance (atomically)."""
    corpus_snapshot.update_snapshot(corpus_tsv, COLUMNS, snapshot, provenance, lambda snapshot_sha256: {
        "description": "German-English segment pairs from Debian package-description translations "
        "(apt index files Translation-de and Translation-en), built by examples/translation/debian_corpus.py",
        "source": debian_source(release, ["i18n/Translation-de", "i18n/Translation-en"], info["index_sha256"]),
        "rebuild": rebuild_command("examples.translation.debian_corpus", release),
        "built": utc_now(),
        "terms": "Debian package descriptions (from the packages' maintainers) and their German translations "
        "(from the Debian Description Translation Project, DDTP), as published in the Debian archive's i18n "
        "index files; see the Debian archive and the DDTP for their terms",
        "params": info["params"],
        "stats": info["stats"],
        "counts": info["counts"],
        "corpus_sha256": info["corpus_sha256"],
        "snapshot_sha256": snapshot_sha256,
        "format": "xz-compressed TSV with header 'split<TAB>de<TAB>en'; split is train, valid or test",
    })


def load_snapshot(snapshot=SNAPSHOT):
    """The shipped corpus as ``{split: [(de, en), ...]}``."""
    return read_tsv(snapshot)


def export_plain(splits, out_dir):
    """Write ``{split}.de`` / ``{split}.en`` line-aligned text files atomically."""
    os.makedirs(out_dir, exist_ok=True)
    for s in SPLITS:
        for i, lang in enumerate(LANGS):
            with atomic_write(os.path.join(out_dir, f"{s}.{lang}")) as f:
                for pair in splits[s]:
                    f.write(pair[i] + "\n")
