"""The download stage: fetch or locate a dataset's raw files and put them in ``data/raw/<dataset>``.

The dataset's source does the work (:meth:`DatasetBase.fetch
<digitlab.data.sources.base.DatasetBase.fetch>`): a downloaded file goes
through the per-user cache (:func:`~digitlab.data.fetch.fetch_verified`,
verified against its sha256) and is hard-linked (or copied) into
``data/raw``, so a second run, or another project, reuses it without a
request. ``source.json`` records what the directory holds (see
:mod:`digitlab.data.raw`); preprocess reads only that directory, except for
an image folder, which it reads in place (the user's files are never copied,
moved or changed).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from digitlab.data.fetch import DownloadError
from digitlab.data.raw import SOURCE_FILE, Fetched, write_source
from digitlab.data.sources import SOURCES, DatasetBase, DatasetSettings
from digitlab.errors import DigitlabError
from digitlab.io import replace_directory

log = logging.getLogger(__name__)


def download_dataset(dataset: DatasetBase, raw_dir: Path, cache: Path, root: Path) -> dict[str, Any]:
    """Fill ``raw_dir`` with the dataset's raw files and ``source.json``; return that record.

    ``dataset`` is validated settings (its ``check()`` passed); ``cache`` is
    the download cache (:func:`cache_dir`), ``root`` the project root.
    ``raw_dir`` is replaced whole only once everything is in place.
    """

    def build(directory: Path) -> dict[str, Any]:
        fetched = dataset.fetch(directory, cache=cache, root=root)
        fetched = fetched if isinstance(fetched, Fetched) else Fetched(fetched)
        return write_source(directory, dataset.name, dataset.source, fetched.files, fetched.about)

    try:
        record = replace_directory(raw_dir, build)
    except DownloadError as error:
        raise DigitlabError(f"{error} {offline_hint(dataset.name, root)}") from error
    total = sum(f["bytes"] for f in record["files"])
    log.info("wrote %s: %d file(s), %.1f MB, and %s", raw_dir, len(record["files"]), total / 1e6, SOURCE_FILE)
    return record


def offline_datasets(root: Path) -> list[str]:
    """The datasets of ``root/conf/dataset/`` that work without the internet, each with its condition if it has one."""
    import yaml
    from pydantic import TypeAdapter, ValidationError

    adapter: TypeAdapter[DatasetBase] = TypeAdapter(DatasetSettings)
    found = []
    for path in sorted((root / "conf" / "dataset").glob("*.yaml")):
        try:
            note = adapter.validate_python(yaml.safe_load(path.read_text(encoding="utf-8"))).offline_note()
        except (OSError, yaml.YAMLError, ValidationError):
            continue
        if note is not None:
            found.append(f"{path.stem} {note}".strip())
    return found


def offline_hint(dataset: str, root: Path) -> str:
    """What to do without internet access: the datasets that need none, or a reachable mirror."""
    names = "; ".join(offline_datasets(root)) or "one of source " + ", ".join(name for name, cls in SOURCES.items() if cls.offline)
    return (
        f"Without internet access use a dataset that needs none ({names}), or point dataset.url "
        f"at a reachable mirror (e.g. `dvc exp run -S dataset.url=...`) for {dataset!r}"
    )
