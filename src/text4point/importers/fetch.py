"""Locate a real dataset from its ``data.<name>`` params: a local directory, a local archive, or a URL.

* ``path`` set: a directory is used as it is; an archive (.zip, .tar, .tar.gz, .tgz, .tar.bz2, .tar.xz)
  is extracted into ``<download_dir>/<name>/``.
* else ``url`` set: the file is streamed to ``<download_dir>/<name>-<file name>`` (under a temporary name,
  renamed when complete), checked against ``sha256`` when that is given, then extracted as above.
* neither: a one-line ``InputError`` that says which key to set.

Extraction is all-or-nothing: every member is checked before anything is written (no absolute paths,
no ``..`` components, no tar link that points outside the archive; tar members also pass
``tarfile``'s ``"data"`` filter), the archive is unpacked into a temporary directory, a marker file
recording the archive's identity is written last, and the directory is renamed into place. A later call
with the same archive (same path, size and modification time) finds the marker and skips extraction.
When the archive holds a single top-level directory, that directory is the returned root.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import posixpath
import re
import tarfile
import urllib.parse
import urllib.request
import zipfile
from pathlib import Path

from tqdm import tqdm

from ..errors import InputError, bad
from ..fsutil import atomic_dir, atomic_path, sha256_file, write_json

ARCHIVE_SUFFIXES = (".zip", ".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tbz2", ".tar.xz", ".txz")
MARKER = ".text4point-extracted.json"
DESCRIPTIONS = {
    "scannet": "ScanNet v2",
    "s3dis": "S3DIS (Stanford3dDataset_v1.2_Aligned_Version)",
    "sunrgbd": "SUN RGB-D (SUNRGBD/ with SUNRGBDtoolbox/)",
}
_CHUNK = 1 << 20


def resolve_source(cfg: dict, name: str, download_dir: Path, progress: bool = True) -> Path:
    """Return the root directory of dataset ``name`` as configured by ``cfg`` (the ``data.<name>`` params)."""
    key = f"data.{name}"
    download_dir = Path(download_dir)
    path, url = cfg["path"], cfg["url"]
    if path:
        p = Path(path).expanduser()
        if not p.exists():
            raise bad(None, f"{key}.path", "an existing directory or archive (.zip, .tar, .tar.gz, .tgz)", str(p))
        if p.is_dir():
            return p
        return extract_archive(p, download_dir / name, sha256=cfg["sha256"], field=f"{key}.sha256",
                               progress=progress)
    if url:
        archive = download(url, download_dir, name, sha256=cfg["sha256"], progress=progress)
        return extract_archive(archive, download_dir / name, progress=progress)
    raise InputError(f"{key}.path is not set: set {key}.path to your local copy of {DESCRIPTIONS.get(name, name)} "
                     f"(or {key}.url to the URL you were given after accepting its licence)")


# ---------------------------------------------------------------- download

def download(url: str, download_dir: Path, name: str, sha256: str | None = None, progress: bool = True) -> Path:
    """Stream ``url`` to ``<download_dir>/<name>-<file name>`` and return that path.

    An existing complete download is reused (after its checksum is verified when ``sha256`` is given).
    A download whose checksum does not match is discarded and reported as a one-line ``InputError``.
    """
    key = f"data.{name}"
    fname = Path(urllib.parse.unquote(urllib.parse.urlparse(url).path)).name or "download"
    final = Path(download_dir) / f"{name}-{fname}"
    expected = sha256.lower().strip() if sha256 else None
    if final.is_file() and (expected is None or sha256_file(final) == expected):
        return final
    h = hashlib.sha256()
    with atomic_path(final) as tmp:
        try:
            with urllib.request.urlopen(url, timeout=60) as r, open(tmp, "wb") as out:
                total = int(r.headers.get("Content-Length") or 0) or None
                with tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=f"download {name}",
                          disable=not progress) as bar:
                    while chunk := r.read(_CHUNK):
                        out.write(chunk)
                        h.update(chunk)
                        bar.update(len(chunk))
        except (OSError, ValueError, http.client.HTTPException) as e:  # URLError/HTTPError are OSErrors
            reason = getattr(e, "reason", None) or e
            raise InputError(f"{key}.url: could not download {url!r}: {reason}") from None
        got = h.hexdigest()
        if expected is not None and got != expected:
            raise InputError(f"{key}.sha256: expected {expected}, got {got} (the file downloaded from {url})")
    return final


# ---------------------------------------------------------------- extraction

def archive_kind(path: Path) -> str | None:
    """``"zip"``, ``"tar"`` or None, from the file name, else from the content."""
    lower = path.name.lower()
    if lower.endswith(".zip"):
        return "zip"
    if lower.endswith(ARCHIVE_SUFFIXES):
        return "tar"
    if zipfile.is_zipfile(path):
        return "zip"
    try:
        if tarfile.is_tarfile(path):
            return "tar"
    except OSError:
        pass
    return None


def _escapes(name: str) -> bool:
    """True when an archive member name is absolute or climbs out of the extraction directory."""
    n = name.replace("\\", "/")
    if n.startswith("/") or re.match(r"^[A-Za-z]:", n):
        return True
    return ".." in n.split("/")


def _unsafe_member(archive: Path, member: str, why: str) -> InputError:
    return InputError(f"{archive}: member {member!r}: expected a relative path inside the archive, got {why} "
                      f"(nothing was extracted)")


def _check_tar_member(archive: Path, m: tarfile.TarInfo) -> None:
    if _escapes(m.name):
        raise _unsafe_member(archive, m.name, "a path outside it")
    if m.issym():
        link = m.linkname.replace("\\", "/")
        target = posixpath.normpath(posixpath.join(posixpath.dirname(m.name.replace("\\", "/")), link))
        if link.startswith("/") or _escapes(target):
            raise _unsafe_member(archive, m.name, f"a symlink to {m.linkname!r} outside it")
    elif m.islnk() and _escapes(posixpath.normpath(m.linkname.replace("\\", "/"))):
        raise _unsafe_member(archive, m.name, f"a hard link to {m.linkname!r} outside it")


def _extract_zip(archive: Path, dest: Path, progress: bool) -> None:
    with zipfile.ZipFile(archive) as zf:
        infos = zf.infolist()
        for info in infos:
            if _escapes(info.filename):
                raise _unsafe_member(archive, info.filename, "a path outside it")
        for info in tqdm(infos, desc=f"extract {archive.name}", unit="file", disable=not progress):
            zf.extract(info, dest)


def _extract_tar(archive: Path, dest: Path, progress: bool) -> None:
    with tarfile.open(archive, "r:*") as tf:
        members = tf.getmembers()
        for m in members:
            _check_tar_member(archive, m)
        # the "data" filter (Python >= 3.11.4, 3.12) also refuses devices, and links through links
        kwargs = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
        try:
            tf.extractall(dest, members=tqdm(members, desc=f"extract {archive.name}", unit="file",
                                             disable=not progress), **kwargs)
        except getattr(tarfile, "FilterError", ()) as e:
            member = getattr(e, "tarinfo", None)
            raise _unsafe_member(archive, member.name if member else "?", f"a member the 'data' filter rejects "
                                 f"({type(e).__name__})") from None


def extract_archive(archive: Path, dest: Path, sha256: str | None = None, field: str = "sha256",
                    progress: bool = True) -> Path:
    """Extract ``archive`` into ``dest`` (all-or-nothing, skipped when already done); return the data root."""
    archive = Path(archive)
    st = archive.stat()
    ident = {"archive": str(archive.resolve()), "size": st.st_size, "mtime_ns": st.st_mtime_ns}
    marker = dest / MARKER
    try:
        if json.loads(marker.read_text()) == ident:
            return _data_root(dest)
    except (OSError, ValueError):
        pass
    kind = archive_kind(archive)
    if kind is None:
        raise bad(archive, "archive", "a directory or a .zip, .tar, .tar.gz or .tgz archive", "an unknown file type")
    if sha256:
        got = sha256_file(archive)
        if got != sha256.lower().strip():
            raise InputError(f"{field}: expected {sha256.lower().strip()}, got {got} (the file {archive})")
    try:
        with atomic_dir(dest) as tmp:
            if kind == "zip":
                _extract_zip(archive, tmp, progress)
            else:
                _extract_tar(archive, tmp, progress)
            write_json(tmp / MARKER, ident)  # last: its presence means the extraction is complete
    except (zipfile.BadZipFile, tarfile.TarError, EOFError) as e:
        raise bad(archive, "archive", f"a readable {kind} archive", f"{type(e).__name__}: {e}") from None
    return _data_root(dest)


def _data_root(dest: Path) -> Path:
    entries = [e for e in dest.iterdir() if e.name != MARKER]
    if len(entries) == 1 and entries[0].is_dir():
        return entries[0]
    return dest


def find_root(root: Path, is_root, what: str, field: str) -> Path:
    """``root`` or its only/first sub-directory for which ``is_root`` holds (a release unpacked one level deep)."""
    if is_root(root):
        return root
    subs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")) if root.is_dir() else []
    for p in subs:
        if is_root(p):
            return p
    raise bad(None, field, what, str(root))


__all__ = ["resolve_source", "download", "extract_archive", "archive_kind", "find_root", "MARKER"]
