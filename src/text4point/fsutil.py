"""Atomic outputs: everything is written under a temporary name and renamed when complete.

A killed job therefore never leaves a file or a directory under its final name that a later
stage (or Snakemake/DVC) could take as complete; the temporaries it leaves (``.<name>.*.tmp``) are
removed by the next writer of the same output. A write that fails (full disk, quota, read-only or failing device)
is one line naming the final path and the cause, and leaves nothing under that name.
"""

from __future__ import annotations

import contextlib
import errno
import glob
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

from .errors import InputError


def check_writable(path: str | os.PathLike) -> None:
    """One-line ``InputError`` unless ``path`` can be written: its nearest existing ancestor must be a
    writable directory (missing directories below it are created by the writers)."""
    parent = Path(os.path.abspath(path)).parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    why = ("not a directory" if not parent.is_dir() else
           "not writable" if not os.access(parent, os.W_OK | os.X_OK) else None)
    if why:
        raise InputError(f"{path}: output path: expected a location in a writable directory, got {parent} ({why})")


# Errors of writing (not of reading what the writer reads): a full disk, a quota, a read-only or failing device.
WRITE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EIO}


def _write_error(final: Path, e: OSError) -> InputError:
    return InputError(f"{final}: could not be written ({e.strerror or e}); nothing was left under that name")


def _tmp_sibling(path: Path, is_dir: bool) -> Path:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        if is_dir:
            return Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
        fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError:
        check_writable(path)  # a location that cannot be written is bad input: one line
        raise
    os.close(fd)
    return Path(name)


def _remove_stale(final: Path) -> None:
    """Remove temporaries of ``final`` that a killed writer left (one writer per output in this pipeline)."""
    if final.parent.is_dir():
        for p in final.parent.glob(f".{glob.escape(final.name)}.*.tmp"):
            if p.is_dir():
                shutil.rmtree(p, ignore_errors=True)
            else:
                p.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary file path beside ``path``; rename it onto ``path`` only on success."""
    final = Path(path)
    _remove_stale(final)
    tmp = _tmp_sibling(final, is_dir=False)
    try:
        yield tmp
        os.replace(tmp, final)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        if e.errno in WRITE_ERRNOS:
            raise _write_error(final, e) from None
        raise
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary directory beside ``path``; it replaces ``path`` only on success."""
    final = Path(path)
    _remove_stale(final)
    tmp = _tmp_sibling(final, is_dir=True)
    try:
        yield tmp
        if final.exists():
            old = _tmp_sibling(final, is_dir=True)
            old.rmdir()
            os.replace(final, old)
            os.replace(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, final)
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        if e.errno in WRITE_ERRNOS:
            raise _write_error(final, e) from None
        raise
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_json(path: str | os.PathLike, obj: object) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def read_array(path: str | os.PathLike, mmap: bool = False):
    """``np.load`` of a ``.npy`` file (memory-mapped read-only with ``mmap``); a missing, truncated or damaged file
    is one line naming it (a truncated memmap would otherwise end in numpy's "mmap length is greater than file
    size")."""
    import numpy as np

    try:
        return np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
    except FileNotFoundError:
        raise InputError(f"{path}: file not found") from None
    except (ValueError, OSError, EOFError) as e:
        raise InputError(f"{path}: not a readable .npy file ({str(e).splitlines()[0][:160]}); rerun the stage that "
                         f"writes it") from None


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()
