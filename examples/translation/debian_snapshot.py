"""The German-English Debian corpus as files: the TSV format (``split<TAB>de<TAB>en``,
xz-compressed for the shipped snapshot), the snapshot in ``data/`` with its ``PROVENANCE.json``,
the comparison of a rebuild with it, and the export as line-aligned text files.
"""

import hashlib
import lzma
import os

from examples.common.debian_apt import DEFAULT_SUITE, CorpusError, now_utc
from examples.common.stages import atomic_write, sha256_file, show_path, write_json

HERE = os.path.dirname(os.path.abspath(__file__))
DATA_DIR = os.path.join(HERE, "data")
SNAPSHOT = os.path.join(DATA_DIR, "debian-de-en.tsv.xz")
PROVENANCE = os.path.join(DATA_DIR, "PROVENANCE.json")

SPLITS = ("train", "valid", "test")
LANGS = ("de", "en")
TSV_HEADER = "split\tde\ten"


def say(msg):
    print(f"[corpus] {msg}", flush=True)


def _open_text(path, mode):
    if path.endswith(".xz"):
        return lzma.open(path, mode + "t", encoding="utf-8", newline="\n")
    return open(path, mode, encoding="utf-8", newline="\n")


def write_tsv(path, rows):
    """Write ``(split, de, en)`` rows atomically (xz-compressed if ``*.xz``)."""
    with atomic_write(path, "wb") as raw:
        stream = lzma.open(raw, "w", preset=9 | lzma.PRESET_EXTREME) if path.endswith(".xz") else raw
        try:
            stream.write((TSV_HEADER + "\n").encode("utf-8"))
            for row in rows:
                if any("\t" in x or "\n" in x for x in row):
                    raise ValueError(f"tab or newline inside a field: {row!r}")
                stream.write(("\t".join(row) + "\n").encode("utf-8"))
        finally:
            if stream is not raw:
                stream.close()


def read_tsv(path):
    """Read a corpus TSV into ``{split: [(de, en), ...]}``."""
    if not os.path.exists(path):
        raise CorpusError(f"corpus file not found: {path}")
    splits = {s: [] for s in SPLITS}
    try:
        with _open_text(path, "r") as f:
            header = f.readline().rstrip("\n")
            if header != TSV_HEADER:
                raise CorpusError(f"{path}: expected header {TSV_HEADER!r}, got {header[:60]!r}")
            for lineno, line in enumerate(f, 2):
                fields = line.rstrip("\n").split("\t")
                if len(fields) != 3 or fields[0] not in splits:
                    raise CorpusError(f"{path}:{lineno}: expected 'split<TAB>de<TAB>en', got {line[:60]!r}")
                splits[fields[0]].append((fields[1], fields[2]))
    except (lzma.LZMAError, EOFError, UnicodeDecodeError) as e:
        raise CorpusError(f"cannot read corpus file {path}: {e}") from e
    return splits


def splits_to_rows(splits):
    for name in SPLITS:
        for de, en in splits[name]:
            yield (name, de, en)


def corpus_digest(splits):
    """sha256 of the corpus content (independent of compression)."""
    h = hashlib.sha256()
    for row in splits_to_rows(splits):
        h.update(("\t".join(row) + "\n").encode("utf-8"))
    return h.hexdigest()


def compare_with_snapshot(corpus_tsv, snapshot=SNAPSHOT):
    """Print whether the built corpus equals the snapshot; return True if equal."""
    if not os.path.exists(snapshot):
        say(f"no snapshot at {snapshot} to compare with")
        return False
    built, snap = read_tsv(corpus_tsv), read_tsv(snapshot)
    if corpus_digest(built) == corpus_digest(snap):
        say("the rebuilt corpus is identical to the shipped snapshot")
        return True
    say("the rebuilt corpus DIFFERS from the shipped snapshot:")
    for s in SPLITS:
        a, b = set(built[s]), set(snap[s])
        say(f"  {s}: rebuilt {len(built[s])}, snapshot {len(snap[s])}, only in rebuilt {len(a - b)}, only in snapshot {len(b - a)}")
    say("  (use --update-snapshot to replace the snapshot)")
    return False


def update_snapshot(corpus_tsv, info, release, snapshot=SNAPSHOT, provenance=PROVENANCE):
    """Write the xz snapshot and its provenance (atomically)."""
    splits = read_tsv(corpus_tsv)
    write_tsv(snapshot, splits_to_rows(splits))
    prov = {
        "description": "German-English segment pairs from Debian package-description translations "
        "(apt index files Translation-de and Translation-en), built by examples/translation/debian_corpus.py",
        "source": {
            "archive": release.get("origin", "Debian"),
            "mirror": release.get("mirror"),
            "suite": release.get("suite"),
            "codename": release.get("codename"),
            "version": release.get("version"),
            "component": release.get("component"),
            "release_date": release.get("date"),
            "fetched": release.get("fetched"),
            "index_files": ["i18n/Translation-de", "i18n/Translation-en"],
            "index_sha256": info["index_sha256"],
            "index_sha256_note": "sha256 of the uncompressed index files as read; checked against the "
            "SHA256 list of the suite's signed InRelease file when fetched with apt",
        },
        "rebuild": "python -m examples.translation.debian_corpus build --from-apt --suite "
        f"{release.get('codename') or DEFAULT_SUITE}",
        "built": now_utc(),
        "terms": "Debian package descriptions (from the packages' maintainers) and their German translations "
        "(from the Debian Description Translation Project, DDTP), as published in the Debian archive's i18n "
        "index files; see the Debian archive and the DDTP for their terms",
        "params": info["params"],
        "stats": info["stats"],
        "counts": info["counts"],
        "corpus_sha256": info["corpus_sha256"],
        "snapshot_sha256": sha256_file(snapshot),
        "format": "xz-compressed TSV with header 'split<TAB>de<TAB>en'; split is train, valid or test",
    }
    write_json(provenance, prov)
    say(f"snapshot written: {show_path(snapshot)} ({os.path.getsize(snapshot) / 1e6:.2f} MB)")


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
