"""What the example pipelines share: atomic outputs, resumable stages, fairseq's tools.

A stage writes beside its output and swaps it in once it has succeeded, with a key (a hash of its
inputs and settings) beside it: a rerun skips a stage whose output holds the same key, and an
interrupted stage leaves the previous output (or none), never a half-written one.
"""

import contextlib
import hashlib
import json
import os
import shutil
import sys
import tempfile
import time


def speaker(prefix):
    """A ``say(*parts)`` that prints ``[prefix] parts...`` as one line, in one write, flushed: how
    every stage and demo reports (the demo's job threads report at once: a line must not split)."""

    def say(*parts):
        sys.stdout.write(" ".join((f"[{prefix}]", *map(str, parts))) + "\n")
        sys.stdout.flush()

    return say


say = speaker("prepare")


def show_path(path, start=os.curdir):
    """A path as shown: relative to ``start`` (default: the current dir) when below it."""
    relative = os.path.relpath(os.path.abspath(path), start)
    return path if relative.startswith("..") else relative


@contextlib.contextmanager
def atomic_write(path, mode="w", encoding="utf-8"):
    """Open a temp file beside ``path``, which replaces ``path`` on success and is removed on an exception."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", suffix=".tmp", dir=directory)
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        kwargs = {} if "b" in mode else {"encoding": encoding, "newline": "\n"}
        with os.fdopen(fd, mode, **kwargs) as f:
            yield f
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def unused_path(stem, suffix=""):
    """``<stem><suffix>``, or where that is taken ``<stem>-<n><suffix>`` for the first free ``n``."""
    path, n = stem + suffix, 1
    while os.path.exists(path):
        path, n = f"{stem}-{n}{suffix}", n + 1
    return path


def write_json(path, obj):
    with atomic_write(path) as f:
        json.dump(obj, f, indent=2, ensure_ascii=False, sort_keys=False)
        f.write("\n")


def read_json(path):
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def sha256_file(path):
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def stage_key(**inputs):
    """A short hash of a stage's inputs (file hashes, parameters)."""
    blob = json.dumps(inputs, sort_keys=True).encode("utf-8")
    return hashlib.sha256(blob).hexdigest()[:16]


def _stamp_holds(stamp, key):
    try:
        return read_json(stamp).get("key") == key
    except (OSError, ValueError):  # none, or unreadable: not done
        return False


def file_stage_done(output, key):
    """True when the file ``output`` exists and its stamp (``output.stamp``) records ``key``."""
    return os.path.exists(output) and _stamp_holds(output + ".stamp", key)


def mark_file_stage(output, key, **info):
    """Record that the file ``output`` was written for ``key`` (with ``info`` beside it)."""
    write_json(output + ".stamp", dict(key=key, **info))


def dir_stage(name, out_dir, key, build, detail="", log=say):
    """Run ``build(tmp_dir)`` unless ``out_dir`` is done for ``key``: it writes into a temp dir beside
    ``out_dir``, which replaces ``out_dir`` once it succeeds, and may return a dict for the stamp."""
    if _stamp_holds(os.path.join(out_dir, ".stage.json"), key):
        log(f"{name}: done already ({show_path(out_dir)})")
        return out_dir
    os.makedirs(os.path.dirname(os.path.abspath(out_dir)), exist_ok=True)
    tmp = f"{out_dir}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    t0 = time.time()
    log(f"{name}: {detail}..." if detail else f"{name}: ...")
    try:
        info = build(tmp) or {}
        write_json(os.path.join(tmp, ".stage.json"), dict(key=key, stage=name, **info))
        old = f"{out_dir}.old-{os.getpid()}"
        if os.path.exists(out_dir):
            os.replace(out_dir, old)
        os.replace(tmp, out_dir)
        shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log(f"{name}: done in {time.time() - t0:.1f}s ({show_path(out_dir)})")
    return out_dir


def train_sentencepiece(inputs, out_dir, vocab_size, threads):
    """A unigram sentencepiece model ``out_dir/spm.model`` on the text files ``inputs``; its size.
    Full character coverage, the vocabulary size an upper bound (small inputs have fewer pieces than
    asked for), at most 2M sentences sampled."""
    import sentencepiece as spm

    spm.SentencePieceTrainer.train(
        input=list(inputs),
        model_prefix=os.path.join(out_dir, "spm"),
        vocab_size=vocab_size,
        model_type="unigram",
        character_coverage=1.0,
        hard_vocab_limit=False,
        input_sentence_size=2_000_000,
        shuffle_input_sentence=True,
        num_threads=threads,
        minloglevel=2,
    )
    return spm.SentencePieceProcessor(model_file=os.path.join(out_dir, "spm.model")).get_piece_size()


def fairseq_command(tool):
    """How to run a fairseq CLI tool (``preprocess``, ``train``, ``generate``, ``eval-lm``): its script
    beside this interpreter (a venv not activated) or on the PATH, else ``python -m fairseq_cli.<tool>``."""
    search = os.pathsep.join([os.path.dirname(sys.executable), os.environ.get("PATH", os.defpath)])
    found = shutil.which(f"fairseq-{tool}", path=search)
    return [found] if found else [sys.executable, "-m", f"fairseq_cli.{tool.replace('-', '_')}"]
