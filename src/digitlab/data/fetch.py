"""Verified downloads: streamed into a per-user cache through pooch, checked against a sha256.

A download goes into a temporary file in the cache, is verified against the
configured sha256, retried on transient errors, and only then renamed into
place; a verified copy in the cache is used without a request.
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path
from urllib.parse import urlsplit

from digitlab.data.files import resolve_path, sha256_file
from digitlab.errors import DigitlabError

log = logging.getLogger(__name__)

CACHE_ENV = "DIGITLAB_CACHE_DIR"


class DownloadError(DigitlabError):
    """The server could not be reached or refused the file (what working offline would avoid)."""


def cache_dir(configured: str | Path | None = None, root: Path | None = None) -> Path:
    """Where verified downloads are kept: ``paths.cache``, else $DIGITLAB_CACHE_DIR, else ~/.cache/digitlab.

    A relative ``paths.cache`` is relative to the project ``root``.
    """
    if configured:
        return resolve_path(configured, root or Path.cwd())
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    return Path.home() / ".cache" / "digitlab"


def url_filename(url: str) -> str:
    """The file name a URL serves (the last part of its path)."""
    return Path(urlsplit(url).path).name


def fetch_verified(url: str, sha256: str, *, dataset: str, cache: Path, retries: int = 3, timeout_s: float = 60) -> Path:
    """Download ``url`` into ``cache/<dataset>/`` unless a verified copy is there; return its path.

    Raises :class:`DownloadError` naming the dataset and URL when the server
    can't be reached, answers with an error or cuts the transfer off, and
    :class:`DigitlabError` when it sends a file whose sha256 differs or the
    file can't be written; no partial or unverified file is left behind.
    """
    import pooch
    import requests

    filename = url_filename(url)
    target = cache / dataset
    store = pooch.create(path=target, base_url="", registry={filename: f"sha256:{sha256}"}, urls={filename: url}, retry_if_failed=retries)
    cached = target / filename
    if cached.is_file() and sha256_file(cached) == sha256:
        log.info("using the verified copy of %s in %s (no download)", filename, cached)
        return cached
    downloader = pooch.HTTPDownloader(progressbar=True, timeout=timeout_s)
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
        raise DownloadError(f"cannot download dataset {dataset!r} from {url}: the server answered {exc}.") from exc
    except requests.exceptions.RequestException as exc:
        raise DownloadError(
            f"cannot download dataset {dataset!r} from {url} after {retries + 1} attempt(s) ({type(exc).__name__}: {exc}); "
            f"no verified copy is cached in {target}."
        ) from exc
    except OSError as exc:
        raise DigitlabError(f"writing the download of dataset {dataset!r} from {url} into {target} failed: {exc}; nothing was kept") from exc
