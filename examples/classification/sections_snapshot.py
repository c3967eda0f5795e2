"""The Debian sections corpus as files: its TSV columns (``split<TAB>label<TAB>package<TAB>text``),
the snapshot in ``data/`` with its ``PROVENANCE.json``, and the export as line-aligned
``{split}.input0`` / ``{split}.label`` files.  The format, the comparison of a rebuild with the
snapshot and the snapshot's rewrite are ``examples.common.corpus_snapshot``'s.
"""

import os

from examples.common import corpus_snapshot
from examples.common.corpus_snapshot import SPLITS, debian_source, rebuild_command, splits_to_rows
from examples.common.provenance import utc_now
from examples.common.stages import atomic_write

HERE = os.path.dirname(os.path.abspath(__file__))
DATA_DIR = os.path.join(HERE, "data")
SNAPSHOT = os.path.join(DATA_DIR, "debian-sections.tsv.xz")
PROVENANCE = os.path.join(DATA_DIR, "PROVENANCE.json")
COLUMNS = ("split", "label", "package", "text")


def write_tsv(path, splits):
    """Write the splits atomically (xz-compressed if ``*.xz``)."""
    corpus_snapshot.write_tsv(path, COLUMNS, splits_to_rows(splits))


def read_tsv(path):
    """``{split: [(label, package, text)]}`` from a file written by :func:`write_tsv`."""
    return corpus_snapshot.read_tsv(path, COLUMNS)


def _label_differences(built, snap):
    labels_a = {label for s in SPLITS for label, _, _ in built[s]}
    labels_b = {label for s in SPLITS for label, _, _ in snap[s]}
    if labels_a != labels_b:
        yield f"  sections only in rebuilt: {sorted(labels_a - labels_b)}, only in snapshot: {sorted(labels_b - labels_a)}"


def compare_with_snapshot(corpus_tsv, snapshot=SNAPSHOT):
    """Print whether the built corpus equals the snapshot, and how it differs; True if equal."""
    return corpus_snapshot.compare_with_snapshot(corpus_tsv, snapshot, COLUMNS, _label_differences)


def update_snapshot(corpus_tsv, info, release, snapshot=SNAPSHOT, provenance=PROVENANCE):
    """Write the xz snapshot and its provenance (atomically)."""
    index_files = ["binary-<architecture>/Packages", "i18n/Translation-en"]
    corpus_snapshot.update_snapshot(corpus_tsv, COLUMNS, snapshot, provenance, lambda snapshot_sha256: {
        "description": "Debian package descriptions (English) labelled with their archive section, "
        "built by examples/classification/debian_sections.py",
        "source": debian_source(release, index_files, info["index_sha256"], architecture=True),
        "rebuild": rebuild_command("examples.classification.debian_sections", release),
        "built": utc_now(),
        "terms": "Debian package descriptions (from the packages' maintainers) and sections, as published "
        "in the Debian archive's index files; see the Debian archive for their terms",
        "params": info["params"],
        "stats": info["stats"],
        "mapping": info["mapping"],
        "label_counts": info["label_counts"],
        "corpus_sha256": info["corpus_sha256"],
        "snapshot_sha256": snapshot_sha256,
        "format": "xz-compressed TSV with header 'split<TAB>label<TAB>package<TAB>text'; split is train, "
        "valid or test; package is the first (by name) of the packages carrying the description",
    })


def load_snapshot(snapshot=SNAPSHOT):
    """The shipped corpus as ``{split: [(label, package, text), ...]}``."""
    return read_tsv(snapshot)


def export_plain(splits, out_dir):
    """Write ``{split}.input0`` (texts) and ``{split}.label`` (sections), line-aligned, atomically."""
    os.makedirs(out_dir, exist_ok=True)
    for s in SPLITS:
        with atomic_write(os.path.join(out_dir, f"{s}.input0")) as f:
            f.writelines(text + "\n" for _, _, text in splits[s])
        with atomic_write(os.path.join(out_dir, f"{s}.label")) as f:
            f.writelines(label + "\n" for label, _, _ in splits[s])
