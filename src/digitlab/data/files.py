"""File helpers of the data stages: hashes, links, file records and paths."""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path
from typing import Any


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


def file_record(path: Path, origin: str, sha256: str | None = None) -> dict[str, Any]:
    """What ``source.json`` says about one raw file: name, sha256, size and where it came from."""
    return {"name": path.name, "sha256": sha256 or sha256_file(path), "bytes": path.stat().st_size, "origin": origin}


def resolve_path(path: str | Path, root: Path) -> Path:
    """``path`` with ``~`` expanded; a relative path is relative to the project ``root``."""
    path = Path(path).expanduser()
    return path if path.is_absolute() else root / path
