"""One training per output folder, and a clean folder after a killed one.

A training holds a lock on its output folder for as long as it runs: a lock
file outside the stage's outputs, ``<paths.checkpoints>/../locks/<sha1 of the
folder>.lock`` (an OS file lock, released by the kernel when the process dies,
however it dies), with a sidecar ``.holder.json`` naming the holder. A second
training into the same folder stops at once with one line naming it.

Under the lock, the hidden temporaries a killed writer left in the folder
(``.NAME.*.tmp*`` from :func:`digitlab.io.atomic_path` and
:func:`digitlab.io.replace_directory`) are removed: no other writer can own them.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

from digitlab.errors import DigitlabError
from digitlab.io import atomic_write_json, read_json, remove_leftovers


def lock_path(directory: Path, checkpoints: Path) -> Path:
    """The lock file of output folder ``directory`` (beside the checkpoints, never among the outputs)."""
    key = hashlib.sha1(str(Path(directory).resolve()).encode()).hexdigest()
    return Path(checkpoints).parent / "locks" / f"{key}.lock"


def _holder(path: Path) -> str:
    try:
        info = read_json(path)
        return f"pid {info['pid']} on {info['host']}, started {info['started']}"
    except (OSError, ValueError, KeyError, TypeError):
        return "a process that has not said who it is yet"


@contextlib.contextmanager
def hold_output_dir(directory: Path, checkpoints: Path) -> Iterator[None]:
    """Hold ``directory`` for one training, or fail at once naming the training that holds it."""
    from filelock import FileLock, Timeout

    path = lock_path(directory, checkpoints)
    holder = path.with_name(path.stem + ".holder.json")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        lock = FileLock(path, timeout=0)
        lock.acquire()
    except Timeout:
        raise DigitlabError(
            f"{directory} is in use by another training ({_holder(holder)}): "
            "wait for it to finish, stop it, or give this one another output_dir"
        ) from None
    except OSError as exc:
        raise DigitlabError(f"cannot create the lock file {path}: {exc.strerror or exc}") from exc
    try:
        started = time.strftime("%Y-%m-%d %H:%M:%S %z")
        atomic_write_json(holder, {"pid": os.getpid(), "host": socket.gethostname(), "started": started, "output_dir": str(directory)})
        yield
    finally:
        holder.unlink(missing_ok=True)
        lock.release()


def prepare_output_dir(directory: Path) -> None:
    """Create ``directory`` if need be, check that it takes files, and remove a killed writer's temporaries."""
    probe = Path(directory) / f".digitlab-write-check.{os.getpid()}.tmp"
    try:
        Path(directory).mkdir(parents=True, exist_ok=True)
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise DigitlabError(f"cannot write to the output folder {directory}: {exc.strerror or exc}; choose another output_dir or fix its permissions") from exc
    remove_leftovers(directory)
