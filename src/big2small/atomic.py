"""Putting a finished output at its path in one step, and cleaning up after writers that were killed.

A writer builds its output under a temporary sibling name, `.NAME.tmp-PID-RANDOM` (PID: the writer's
process id, RANDOM: 8 hex digits), and then renames it to NAME:

- a new output is renamed into place without replacing anything (renameat2 RENAME_NOREPLACE);
- an existing directory is replaced by swapping the two names in one system call (Linux renameat2
  RENAME_EXCHANGE), so that a kill at any moment leaves either the old or the new output whole at
  the path; the old one, now under the temporary name, is then deleted. Where the swap is not
  available (another OS, a filesystem without it), the old one is first renamed aside to
  `.NAME.old-PID-RANDOM`: a kill between the two renames leaves nothing at the path, and the next
  writer to that directory puts the old one back;
- a file is replaced by one rename (atomic on POSIX).

The next writer to a directory deletes the temporaries there whose writer process is gone (only
names of this pattern, only stale ones: a live writer's are left alone).
"""

from __future__ import annotations

import ctypes
import errno
import os
import re
import secrets
import shutil
from collections.abc import Callable
from pathlib import Path

_AT_FDCWD = -100
_RENAME_NOREPLACE = 1
_RENAME_EXCHANGE = 2
_TEMPORARY = re.compile(r"^\.(?P<name>.+)\.(?P<kind>tmp|old)-(?P<pid>[0-9]+)-[0-9a-f]{8}$")


def temporary_path(path: Path, kind: str = "tmp") -> Path:
    """A fresh sibling name for `path` that marks this process as its writer (kind: tmp or old)."""
    return path.with_name(f".{path.name}.{kind}-{os.getpid()}-{secrets.token_hex(4)}")


def is_temporary(path: Path) -> bool:
    """Whether `path` is named as a writer's temporary (never an output)."""
    return _TEMPORARY.match(path.name) is not None


def remove_stale(directory: Path) -> None:
    """Delete the temporaries in `directory` whose writer process is gone; put an output renamed
    aside by a writer killed mid-replacement back at its path when nothing took its place."""
    try:
        entries = list(directory.iterdir())
    except OSError:
        return
    for entry in entries:
        match = _TEMPORARY.match(entry.name)
        if match is None or _process_alive(int(match["pid"])):
            continue
        target = directory / match["name"]
        if match["kind"] == "old" and not os.path.lexists(target):
            os.rename(entry, target)
        else:
            _remove(entry)


def publish(tmp: Path, path: Path, *, replace: bool) -> None:
    """Rename the finished `tmp` to `path`. Without `replace`, refuse (FileExistsError) when
    something is there; with it, replace what is there (see the module docstring)."""
    if not (replace and os.path.lexists(path)):
        if not _renameat2(tmp, path, _RENAME_NOREPLACE):
            if os.path.lexists(path):
                raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), str(path))
            os.rename(tmp, path)
    elif not tmp.is_dir():
        os.replace(tmp, path)
    elif _renameat2(tmp, path, _RENAME_EXCHANGE):
        _remove(tmp)  # the old output, now under the temporary name
    else:
        old = temporary_path(path, "old")
        os.rename(path, old)
        os.rename(tmp, path)
        _remove(old)
    _sync_directory(path.parent)


def write_file(path: Path, write: Callable[[Path], object]) -> None:
    """`write(tmp)` to a temporary sibling of `path`, then put it at `path` in one step (replacing
    what is there): a reader sees the old file or the new one whole, never a part."""
    tmp = temporary_path(path)
    try:
        write(tmp)
        publish(tmp, path, replace=True)
    finally:
        tmp.unlink(missing_ok=True)


def write_failure(path: Path, exc: OSError) -> str:
    """One line for a write to `path` that failed: "cannot write PATH: the disk is full" (ENOSPC),
    or the system's reason."""
    reason = "the disk is full" if exc.errno == errno.ENOSPC else (exc.strerror or str(exc))
    return f"cannot write {path}: {reason}"


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def _process_alive(pid: int) -> bool:
    if pid == os.getpid() or os.name == "nt":  # on Windows os.kill(pid, 0) would terminate the process
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return True  # exists under another user (or is not a pid we can ask about): leave it
    return True


def _libc_renameat2():
    try:
        return ctypes.CDLL(None, use_errno=True).renameat2  # glibc >= 2.28
    except (AttributeError, OSError, TypeError):  # another libc or OS
        return None


_RENAMEAT2 = _libc_renameat2()


def _renameat2(src: Path, dst: Path, flags: int) -> bool:
    """renameat2(src, dst, flags): True when done, False when this system or filesystem cannot do
    it (the caller falls back); other failures raise OSError."""
    if _RENAMEAT2 is None:
        return False
    if _RENAMEAT2(_AT_FDCWD, os.fsencode(src), _AT_FDCWD, os.fsencode(dst), flags) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP, errno.ENOTSUP):
        return False
    raise OSError(err, os.strerror(err), str(src), None, str(dst))


def _sync_directory(directory: Path) -> None:
    """Make a rename in `directory` durable (where directories can be opened for it)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
