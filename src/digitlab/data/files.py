"""File helpers of the data stages: hashes, links, and directories replaced whole."""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")


def sha256_file(path: Path | str, chunk_size: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(chunk_size), b""):
            digest.update(chunk)
    return digest.hexdigest()


def link_or_copy(source: Path, dest: Path) -> str:
    """Hard-link ``source`` to ``dest`` (no second copy on disk), else copy it.

    Returns how it was placed: ``"hardlink"`` or ``"copy"``.
    """
    dest.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(source, dest)
        return "hardlink"
    except OSError:  # another file system, or links not allowed there
        shutil.copy2(source, dest)
        return "copy"


def replace_directory(dest: Path, build: Callable[[Path], T]) -> T:
    """Fill a fresh temporary directory with ``build(tmp)``, then swap it in for ``dest``.

    A failure anywhere in ``build`` leaves ``dest`` as it was and no temporary
    directory behind, so a stage output is never half-written.
    """
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".tmp"))
    umask = os.umask(0)
    os.umask(umask)
    tmp.chmod(0o777 & ~umask)  # mkdtemp makes it private; the output should read like any directory
    try:
        result = build(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = None
    if dest.exists():
        old = dest.with_name(f".{dest.name}.old-{os.getpid()}")
        dest.rename(old)
    tmp.rename(dest)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    return result
