"""Writing files so that a reader never sees half of one: the one atomic-write helper.

Every output digitlab writes (JSON, CSV, npz arrays, PNG figures, Keras
models, whole stage directories) goes through :func:`atomic_path`: the writer
fills a uniquely named temporary file in the target's own folder, which is
then renamed over the target in one step. A kill at any moment leaves either
the old file or the new one, plus at most a hidden ``.NAME.*.tmp`` leftover
that is never mistaken for an output.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(path: Path | str, suffix: str | None = None) -> Iterator[Path]:
    """Yield a fresh temporary path beside ``path``; on success rename it over ``path``.

    ``suffix`` (default: ``path``'s own) matters to writers that pick the format
    from the file name (``.keras``, ``.npz``, ``.png``). On failure the temporary
    file is removed and ``path`` is left as it was.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_leftovers(path.parent, path.name)  # a killed writer's temporaries of this output
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=f".tmp{suffix if suffix is not None else path.suffix}")
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        # mkstemp makes the file private (0600); give it the mode a plain open() would.
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: Path | str, data: bytes) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def atomic_write_text(path: Path | str, text: str) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def atomic_write_json(path: Path | str, data: Any) -> Path:
    return atomic_write_text(path, json.dumps(data, indent=2) + "\n")


def read_json(path: Path | str) -> Any:
    return json.loads(Path(path).read_text(encoding="utf-8"))


def replace_directory(dest: Path, build: Callable[[Path], T]) -> T:
    """Fill a fresh temporary directory with ``build(tmp)``, then swap it in for ``dest``.

    A failure anywhere in ``build`` leaves ``dest`` as it was and no temporary
    directory behind, so a stage output directory is never half-written.
    """
    dest.parent.mkdir(parents=True, exist_ok=True)
    remove_leftovers(dest.parent, dest.name)  # a killed writer's temporaries of this output
    tmp = Path(tempfile.mkdtemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".tmp"))
    tmp.chmod(0o777 & ~_umask())  # mkdtemp makes it private; the output should read like any directory
    try:
        result = build(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = None
    if dest.exists():
        old = Path(tempfile.mkdtemp(dir=dest.parent, prefix=f".{dest.name}.old-", suffix=".tmp"))
        os.replace(dest, old / dest.name)
    os.replace(tmp, dest)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    return result


def remove_leftovers(directory: Path | str, name: str = "*") -> None:
    """Remove the temporaries a killed writer left in ``directory`` for output ``name`` (default: any).

    They are the hidden ``.NAME.*.tmp*`` files and folders :func:`atomic_path` and
    :func:`replace_directory` make; nothing else matches. Both call it before they
    write an output: one writer per output at a time (DVC runs one stage of a project
    at a time; a training holds its folder's lock), so no live writer owns them.
    """
    directory = Path(directory)
    if not directory.is_dir():
        return
    for leftover in directory.glob(f".{name}.*.tmp*"):
        if leftover.is_dir() and not leftover.is_symlink():
            shutil.rmtree(leftover, ignore_errors=True)
        else:
            leftover.unlink(missing_ok=True)
