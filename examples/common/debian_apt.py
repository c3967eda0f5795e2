"""Debian's apt index files as a data source for the corpus builders: fetched by ``apt-get update``
into a private directory (nothing of the system's apt state is touched) and checked against the
suite's signed ``InRelease``, read however apt stored them, parsed as deb822.
"""

import bz2
import email
import gzip
import lzma
import os
import pathlib
import re
import shutil
import subprocess

from examples.common.provenance import utc_now
from examples.common.stages import atomic_write, sha256_file

DEFAULT_MIRROR = "http://deb.debian.org/debian"
DEFAULT_SUITE = "bookworm"
DEFAULT_COMPONENT = "main"
DEFAULT_ARCHITECTURE = "amd64"
DEBIAN_KEYRING = "/usr/share/keyrings/debian-archive-keyring.gpg"


class CorpusError(Exception):
    """Bad input to a corpus builder (the message names the file)."""


def read_index_text(path):
    """The text of an index file, decompressed by its magic bytes: apt stores lists plain or gz, xz,
    bz2 or lz4 compressed, depending on its settings (lz4 needs the ``lz4`` command: no stdlib module)."""
    if not os.path.exists(path):
        raise CorpusError(f"index file not found: {path}")
    with open(path, "rb") as f:
        raw = f.read()
    try:
        for magic, decompress in ((b"\x1f\x8b", gzip.decompress), (b"\xfd7zXZ\x00", lzma.decompress),
                                  (b"BZh", bz2.decompress)):
            if raw.startswith(magic):
                raw = decompress(raw)
                break
        if raw.startswith(b"\x04\x22\x4d\x18"):
            if not shutil.which("lz4"):
                raise CorpusError(f"{path} is lz4-compressed and the 'lz4' command is missing; install lz4 "
                                  "or fetch with apt's Acquire::GzipIndexes=false")
            raw = subprocess.run(["lz4", "-dc", path], check=True, stdout=subprocess.PIPE).stdout
    except (OSError, EOFError, lzma.LZMAError, subprocess.CalledProcessError) as e:
        raise CorpusError(f"cannot decompress index file {path}: {e}") from e
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise CorpusError(f"index file {path} is not UTF-8 text: {e}") from e


def iter_stanzas(path, what="apt index"):
    """The stanzas of a deb822 file as ``(line where it ends, {field: [value, continuation lines...]})``,
    continuation lines without their first space (a description's paragraph separator is ``"."``).
    Raises :class:`CorpusError` naming the file and line of anything malformed, or for a file
    without stanzas (``what``: the kind of file expected)."""
    text = read_index_text(path)
    stanza = {}
    current = None  # the field continuation lines belong to
    n_stanzas = 0
    for lineno, line in enumerate(text.split("\n") + [""], 1):  # a last blank line ends the last stanza
        line = line.rstrip("\r")
        if not line.strip():
            if stanza:
                n_stanzas += 1
                yield lineno, stanza
            stanza, current = {}, None
            continue
        if line[0] in " \t":
            if current is None:
                raise CorpusError(f"{path}:{lineno}: continuation line outside a field")
            stanza[current].append(line[1:].rstrip())
            continue
        if ":" not in line:
            raise CorpusError(f"{path}:{lineno}: not a deb822 field line: {line[:60]!r}")
        name, value = line.split(":", 1)
        current = name.strip()
        stanza[current] = [value.strip()]
    if n_stanzas == 0:
        raise CorpusError(f"index file {path} holds no stanzas (empty or not an {what} file)")


def description_md5(stanza, path, lineno):
    """A stanza's ``Description-md5``, checked to be 32 hex digits."""
    if "Description-md5" not in stanza:
        raise CorpusError(f"{path}: stanza ending at line {lineno} has no Description-md5 field")
    md5 = stanza["Description-md5"][0].strip()
    if not re.fullmatch(r"[0-9a-f]{32}", md5):
        raise CorpusError(f"{path}: bad Description-md5 {md5!r} in stanza ending at line {lineno}")
    return md5


def list_file_name(mirror, suite, path_in_suite):
    """apt's file name in its lists dir for ``path_in_suite`` (e.g. ``main/i18n/Translation-en``)."""
    return f"{re.sub(r'^[a-z]+://', '', mirror.rstrip('/'))}/dists/{suite}/{path_in_suite}".replace("/", "_")


def read_release(path):
    """Fields of an (In)Release file: origin, label, suite, codename, version, date, and ``sha256``
    (``{path in the suite: sha256}`` from its SHA256 list).  Its fields are RFC 822 headers, read
    with :mod:`email` once the clearsigned message's armour is cut off."""
    if not os.path.exists(path):
        return {"sha256": {}}
    with open(path, encoding="utf-8", errors="replace") as f:
        text = f.read().split("-----BEGIN PGP SIGNATURE")[0]
    if text.startswith("-----BEGIN PGP SIGNED MESSAGE"):
        text = text.split("\n\n", 1)[-1]  # the armour's header ends at the first blank line
    fields = email.message_from_string(text)
    info = {k.lower(): fields[k].strip() for k in ("Origin", "Label", "Suite", "Codename", "Version", "Date")
            if k in fields}
    listed = (line.split() for line in (fields["SHA256"] or "").splitlines())
    return dict(info, sha256={parts[2]: parts[0] for parts in listed if len(parts) == 3})


def fetch_indexes(apt_dir, languages, packages=False, mirror=DEFAULT_MIRROR, suite=DEFAULT_SUITE,
                  component=DEFAULT_COMPONENT, architecture=DEFAULT_ARCHITECTURE, say=print):
    """Run ``apt-get update`` into ``apt_dir`` (lists, cache, status and sources below it); return
    ``(paths, release)``: the fetched ``Translation-<lang>`` of each of ``languages`` (and
    ``Packages`` of ``architecture`` if ``packages``), stored uncompressed and checked against the
    sha256 the suite's signed ``InRelease`` lists for it (where it lists one), and its fields, the
    mirror, component and fetch time."""
    apt_get = shutil.which("apt-get")
    if not apt_get:
        raise CorpusError("apt-get not found: cannot rebuild the corpus from apt (use the snapshot)")
    lists = os.path.join(apt_dir, "lists")
    os.makedirs(os.path.join(lists, "partial"), exist_ok=True)
    os.makedirs(os.path.join(apt_dir, "cache", "archives", "partial"), exist_ok=True)
    status = os.path.join(apt_dir, "status")
    pathlib.Path(status).touch()
    sources = os.path.join(apt_dir, "sources.list")
    signed = f"[signed-by={DEBIAN_KEYRING}] " if os.path.exists(DEBIAN_KEYRING) else ""
    with atomic_write(sources) as f:
        f.write(f"deb {signed}{mirror} {suite} {component}\n")
    options = {
        "Dir::State::Lists": lists, "Dir::State::status": status, "Dir::Cache": os.path.join(apt_dir, "cache"),
        "Dir::Cache::pkgcache": "", "Dir::Cache::srcpkgcache": "", "Dir::Etc::SourceList": sources,
        "Dir::Etc::SourceParts": "/dev/null", "Acquire::Languages": ",".join(languages),
        "Acquire::GzipIndexes": "false", "APT::Architecture": architecture, "APT::Architectures": architecture,
        "Acquire::IndexTargets::deb::Packages::DefaultEnabled": "true" if packages else "false",
        "APT::Get::List-Cleanup": "0",
    }
    cmd = [apt_get, "update", "-q"] + [arg for name, value in options.items() for arg in ("-o", f"{name}={value}")]
    what = f"languages {','.join(languages)}" + (f", Packages for {architecture}" if packages else "")
    say(f"apt-get update into a private lists dir ({mirror} {suite} {component}, {what})")
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if proc.returncode != 0:
        raise CorpusError(f"apt-get update failed (exit {proc.returncode}):\n{proc.stdout.strip()}")
    in_suite = {f"Translation-{lang}": f"{component}/i18n/Translation-{lang}" for lang in languages}
    if packages:
        in_suite["Packages"] = f"{component}/binary-{architecture}/Packages"
    paths = {name: os.path.join(lists, list_file_name(mirror, suite, p)) for name, p in in_suite.items()}
    for p in paths.values():
        if not os.path.exists(p):
            found = [n for n in os.listdir(lists) if "Translation" in n or "Packages" in n]
            raise CorpusError(f"apt-get update did not produce index file {p} (found: {found or 'none'})")
    release = read_release(os.path.join(lists, list_file_name(mirror, suite, "InRelease")))
    release.update(mirror=mirror, component=component, fetched=utc_now())
    if packages:
        release["architecture"] = architecture
    listed = release.pop("sha256")
    for name, p in paths.items():
        want = listed.get(in_suite[name])
        if want and want != sha256_file(p):
            raise CorpusError(f"{p} does not match the sha256 listed in the suite's InRelease (a broken download?)")
    return paths, release
