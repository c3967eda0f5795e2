"""What the corpora built from Debian's index files (translations, package sections) share: the TSV
format (a header naming the columns, the split first, one row a line; xz for ``*.xz``), the digest,
the shipped snapshot (compared with a rebuild, rewritten with its ``PROVENANCE.json``) and the
builder's command line.  Each corpus module has its columns, build, export and provenance text.
"""

import argparse
import contextlib
import hashlib
import itertools
import json
import lzma
import os
import sys

from examples.common.debian_apt import DEFAULT_COMPONENT, DEFAULT_MIRROR, DEFAULT_SUITE, CorpusError
from examples.common.stages import atomic_write, sha256_file, show_path, speaker, write_json

SPLITS = ("train", "valid", "test")
say = speaker("corpus")


def write_tsv(path, columns, rows):
    """Write ``(split, field, ...)`` rows under the header ``columns`` atomically (xz-compressed if
    ``*.xz``)."""
    xz = path.endswith(".xz")
    with (atomic_write(path, "wb") as raw,
          lzma.open(raw, "w", preset=9 | lzma.PRESET_EXTREME) if xz else contextlib.nullcontext(raw) as stream):
        for row in itertools.chain([columns], rows):
            if any("\t" in x or "\n" in x for x in row):
                raise ValueError(f"tab or newline inside a field: {row!r}")
            stream.write(("\t".join(row) + "\n").encode("utf-8"))


def read_tsv(path, columns):
    """Read a corpus TSV with the header ``columns`` into ``{split: [(field, ...), ...]}``."""
    if not os.path.exists(path):
        raise CorpusError(f"corpus file not found: {path}")
    header_line = "\t".join(columns)
    splits = {s: [] for s in SPLITS}
    try:
        with (lzma.open if path.endswith(".xz") else open)(path, "rt", encoding="utf-8", newline="\n") as f:
            header = f.readline().rstrip("\n")
            if header != header_line:
                raise CorpusError(f"{path}: expected header {header_line!r}, got {header[:60]!r}")
            for lineno, line in enumerate(f, 2):
                fields = line.rstrip("\n").split("\t")
                if len(fields) != len(columns) or fields[0] not in splits:
                    raise CorpusError(f"{path}:{lineno}: expected '{'<TAB>'.join(columns)}', got {line[:60]!r}")
                splits[fields[0]].append(tuple(fields[1:]))
    except (lzma.LZMAError, EOFError, UnicodeDecodeError) as e:
        raise CorpusError(f"cannot read corpus file {path}: {e}") from e
    return splits


def splits_to_rows(splits):
    """``{split: [(field, ...)]}`` -> ``(split, field, ...)`` rows, the splits in order."""
    return ((name, *row) for name in SPLITS for row in splits[name])


def corpus_digest(splits):
    """sha256 of the corpus content (independent of compression)."""
    h = hashlib.sha256()
    for row in splits_to_rows(splits):
        h.update(("\t".join(row) + "\n").encode("utf-8"))
    return h.hexdigest()


def compare_with_snapshot(corpus_tsv, snapshot, columns, differences=None):
    """Print whether the built corpus equals the snapshot, and how it differs (after the counts, the
    corpus's own lines of ``differences(built, snap)``); True if equal."""
    if not os.path.exists(snapshot):
        say(f"no snapshot at {snapshot} to compare with")
        return False
    built, snap = read_tsv(corpus_tsv, columns), read_tsv(snapshot, columns)
    if built == snap:
        say("the rebuilt corpus is identical to the shipped snapshot")
        return True
    say("the rebuilt corpus DIFFERS from the shipped snapshot:")
    for s in SPLITS:
        a, b = set(built[s]), set(snap[s])
        say(f"  {s}: rebuilt {len(built[s])}, snapshot {len(snap[s])}, "
            f"only in rebuilt {len(a - b)}, only in snapshot {len(b - a)}")
    for line in differences(built, snap) if differences else ():
        say(line)
    say("  (use --update-snapshot to replace the snapshot)")
    return False


def debian_source(release, index_files, index_sha256, architecture=False):
    """The ``source`` part of a snapshot's provenance: the Debian release the index files came
    from (``release``, from ``debian_apt.fetch_indexes``; ``{}`` for files given by hand)."""
    source = {key: release.get(key) for key in ("mirror", "suite", "codename", "version", "component")}
    if architecture:
        source["architecture"] = release.get("architecture")
    return {
        "archive": release.get("origin", "Debian"),
        **source,
        "release_date": release.get("date"),
        "fetched": release.get("fetched"),
        "index_files": index_files,
        "index_sha256": index_sha256,
        "index_sha256_note": "sha256 of the uncompressed index files as read; checked against the "
        "SHA256 list of the suite's signed InRelease file when fetched with apt",
    }


def rebuild_command(module, release):
    """How the snapshot is rebuilt from the same Debian release."""
    return f"python -m {module} build --from-apt --suite {release.get('codename') or DEFAULT_SUITE}"


def update_snapshot(corpus_tsv, columns, snapshot, provenance, describe):
    """Write the xz snapshot of ``corpus_tsv`` and its provenance, ``describe(snapshot_sha256)``
    (atomically)."""
    write_tsv(snapshot, columns, splits_to_rows(read_tsv(corpus_tsv, columns)))
    write_json(provenance, describe(sha256_file(snapshot)))
    say(f"snapshot written: {show_path(snapshot)} ({os.path.getsize(snapshot) / 1e6:.2f} MB)")


def corpus_main(argv, corpus, text_files):
    """A corpus builder's ``main``: ``build`` (from apt or from index files; compared with the
    snapshot, ``--update-snapshot``, ``--export``) and ``export`` (``text_files``, e.g.
    ``{train,valid,test}.{de,en}``); the exit status (2, with the message, for a :class:`CorpusError`).

    ``corpus`` is the corpus module: its docstring, ``DEFAULT_WORK_DIR``, ``SNAPSHOT``,
    ``add_options(build, sources)`` (its index-file options beside ``--from-apt``, its parameters),
    ``build_from_args(args, parser)`` -> ``(corpus_tsv, info, release)``, ``load_snapshot(path)``,
    ``read_tsv(path)``, ``export_plain(splits, out_dir)``, ``compare_with_snapshot(tsv, snapshot)``
    and ``update_snapshot(tsv, info, release, snapshot, provenance)``.
    """
    parser = argparse.ArgumentParser(description=corpus.__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    build = sub.add_parser("build", help="build the corpus (from apt or from two index files)")
    sources = build.add_mutually_exclusive_group(required=True)
    sources.add_argument("--from-apt", action="store_true",
                         help="fetch the index files with apt-get update (private dir)")
    build.add_argument("--work-dir", default=corpus.DEFAULT_WORK_DIR,
                       help="where the build writes (default: %(default)s)")
    build.add_argument("--mirror", default=DEFAULT_MIRROR)
    build.add_argument("--suite", default=DEFAULT_SUITE)
    build.add_argument("--component", default=DEFAULT_COMPONENT)
    corpus.add_options(build, sources)
    build.add_argument("--snapshot", default=corpus.SNAPSHOT, help="snapshot to compare with / update")
    build.add_argument("--update-snapshot", action="store_true", help="replace the snapshot and PROVENANCE.json")
    build.add_argument("--export", metavar="DIR", help=f"also write {text_files} into DIR")
    export = sub.add_parser("export", help=f"write the snapshot as {text_files} text files")
    export.add_argument("out_dir")
    export.add_argument("--snapshot", default=corpus.SNAPSHOT)
    args = parser.parse_args(argv)
    try:
        if args.command == "export":
            splits = corpus.load_snapshot(args.snapshot)
            corpus.export_plain(splits, args.out_dir)
            say("exported " + ", ".join(f"{s} {len(splits[s])}" for s in SPLITS) + f" to {args.out_dir}")
            return 0
        corpus_tsv, info, release = corpus.build_from_args(args, parser)
        say(f"stats: {json.dumps(info['stats'])}")
        same = corpus.compare_with_snapshot(corpus_tsv, args.snapshot)
        if args.update_snapshot and not same:
            corpus.update_snapshot(corpus_tsv, info, release, args.snapshot,
                                   os.path.join(os.path.dirname(args.snapshot), "PROVENANCE.json"))
        if args.export:
            corpus.export_plain(corpus.read_tsv(corpus_tsv), args.export)
            say(f"exported to {args.export}")
    except CorpusError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0
