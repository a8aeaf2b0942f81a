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
                         mode: int | None = None, sweep_stale: bool = False) -> Any:
    """Let `write` fill a private temp dir beside `final`, then rename it into place: `final` is complete or absent.

    Two writers of the same key (identical by construction) race harmlessly: the first copy is kept. With
    `replace`, an existing `final` is renamed aside only once the new one is complete, then deleted. `mode` sets
    the published tree's permissions, directories `mode` and files `mode & 0o666` (0o755: dirs 0755, files 0644;
    mkdtemp's 0700 would hide an export from every other user and container). `sweep_stale` first removes the
    temp dirs of earlier writers of `final` on this host whose process is gone (killed beyond any cleanup, e.g.
    SIGKILL); only for a `final` that one host writes. Returns what `write` returned.
    """
    final.parent.mkdir(parents=True, exist_ok=True)
    if sweep_stale:
        remove_stale(final)
    # The writer's pid in the name: what tells a later sweep whether the writer is still alive.
    tmp = Path(tempfile.mkdtemp(prefix=f"{TMP_PREFIX}{final.name}-{os.getpid()}-", dir=final.parent))
    try:
        out = write(tmp)
        if mode is not None:
            set_modes(tmp, mode)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if replace and final.is_dir():
        aside = final.with_name(f"{OLD_PREFIX}{final.name}-{os.getpid()}-{tmp.name.rsplit('-', 1)[-1]}")
        os.rename(final, aside)
        os.rename(tmp, final)
        shutil.rmtree(aside, ignore_errors=True)
    else:
        publish(tmp, final)
    return out


OLD_PREFIX = ".old-"


def set_modes(root: Path, mode: int) -> None:
    """Directories under `root` (itself included) get `mode`, files `mode & 0o666` (no execute bit)."""
    for d, _, files in os.walk(root):
        os.chmod(d, mode)
        for name in files:
            os.chmod(os.path.join(d, name), mode & 0o666)


def remove_stale(final: Path) -> list[Path]:
    """Delete the `.tmp-<name>-<pid>-*` / `.old-<name>-<pid>-*` dirs beside `final` whose process no longer runs."""
    import re

    removed = []
    for prefix in (TMP_PREFIX, OLD_PREFIX):
        # mkdtemp's random part has no "-": `.tmp-out-1-123-x` (a writer of `out-1`) never reads as pid 1 of `out`
        pattern = re.compile(re.escape(f"{prefix}{final.name}-") + r"(\d+)-[A-Za-z0-9_]+")
        for entry in final.parent.glob(f"{prefix}{final.name}-*"):
            match = pattern.fullmatch(entry.name)
            if match and entry.is_dir() and not _alive(int(match.group(1))):
                shutil.rmtree(entry, ignore_errors=True)
                removed.append(entry)
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)  # signal 0: only asks whether the process exists
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process
    return True


@contextlib.contextmanager
def terminate_cleanly():
    """While the block runs, SIGTERM (`kill`, `timeout`, a scheduler's stop) raises SystemExit in the main thread,
    so `write_dir_atomically`'s cleanup runs as it does on Ctrl-C; without it the process dies where it stands
    and leaves its temp dir. Elsewhere than the main thread nothing changes (signals go to the main thread)."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum, frame):
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


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
