"""All-or-nothing writes and the lock around them: the one place raytickets publishes files and directories.

A reader (another trial, `analyze`, a resumed sweep) sees a file or directory whole or not at all: everything is
written under a `.tmp-*` name beside its destination and renamed into place once complete. Files go through any
filesystem pyarrow opens (a local disk, `s3://`, `file://`); directories are local (trajectory state, tokenised
caches, exports). A writer killed half-way leaves only an ignored `.tmp-*` entry behind.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import uuid
from pathlib import Path
from typing import Any, Callable

TMP_PREFIX = ".tmp-"
TMP_SUFFIX = ".partial"


class exclusive:
    """An exclusive lock file (flock: released by the kernel if its holder dies), held when `active`."""

    def __init__(self, path: Path, active: bool = True):
        self.path, self.active, self.fd = path, active, None

    def __enter__(self):
        if self.active:
            import fcntl

            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.fd = os.open(self.path, os.O_CREAT | os.O_RDWR)
            fcntl.flock(self.fd, fcntl.LOCK_EX)  # a concurrent trial computing the same thing: wait
        return self

    def __exit__(self, *exc):
        if self.fd is not None:
            os.close(self.fd)


def write_dir_atomically(final: Path, write: Callable[[Path], Any], replace: bool = False,
                         mode: int | None = None) -> Any:
    """Let `write` fill a private temp dir beside `final`, then rename it into place: `final` is complete or absent.

    Two writers of the same key (identical by construction) race harmlessly: the first copy is kept. With
    `replace`, an existing `final` is renamed aside only once the new one is complete, then deleted. `mode` sets
    the published directory's permissions (mkdtemp's are 0700). Returns what `write` returned.
    """
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f"{TMP_PREFIX}{final.name}-", dir=final.parent))
    try:
        out = write(tmp)
        if mode is not None:
            os.chmod(tmp, mode)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if replace and final.is_dir():
        aside = final.with_name(f".old-{final.name}-{tmp.name.rsplit('-', 1)[-1]}")
        os.rename(final, aside)
        os.rename(tmp, final)
        shutil.rmtree(aside, ignore_errors=True)
    else:
        publish(tmp, final)
    return out


def publish(tmp: Path, final: Path) -> None:
    """Move a fully written directory into place in one rename, so readers never see half of it.

    If another writer published the same key first, its copy (identical by construction) is kept.
    """
    try:
        os.rename(tmp, final)
    except OSError:
        if not final.is_dir():
            raise
        shutil.rmtree(tmp, ignore_errors=True)


def write_file_atomically(fs, path: str, write: Callable[[Any], Any]) -> None:
    """`write(stream)` to `path` on the pyarrow filesystem `fs`: a reader sees the whole file or no file."""
    import pyarrow.fs as pafs

    directory, name = path.rsplit("/", 1) if "/" in path else (".", path)
    tmp = f"{directory}/{TMP_PREFIX}{uuid.uuid4().hex}-{name}{TMP_SUFFIX}"
    if isinstance(fs, pafs.LocalFileSystem):
        _write_local(directory, tmp, path, write)
        return
    # Object stores publish an object only when its upload completes; the rename keeps the same
    # "complete or absent" guarantee on any other filesystem pyarrow can open.
    fs.create_dir(directory, recursive=True)
    try:
        with fs.open_output_stream(tmp) as out:
            write(out)
        fs.move(tmp, path)
    except BaseException:
        with contextlib.suppress(Exception):
            fs.delete_file(tmp)
        raise


def _write_local(directory: str, tmp: str, path: str, write: Callable[[Any], Any]) -> None:
    os.makedirs(directory, exist_ok=True)
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())  # the data is on disk before the name points at it
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    with contextlib.suppress(OSError):  # make the rename itself durable; not possible on every platform
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
