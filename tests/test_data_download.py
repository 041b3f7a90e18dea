"""The download code against a real HTTP server on 127.0.0.1 serving upstream-format files."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
from tests.data_helpers import (
    FileServer,
    cifar_tarball_bytes,
    closed_port_url,
    files_under,
    idx_bytes,
    keras_npz_bytes,
    labelled_images,
    sha256,
)

from digitlab.data.download import download_dataset
from digitlab.data.fetch import cache_dir, fetch_verified
from digitlab.data.prepared import load_meta, load_split
from digitlab.data.preprocess import prepare_dataset
from digitlab.data.sources import DatasetBase, parse_dataset
from digitlab.errors import ConfigError, DigitlabError

ROOT = Path(__file__).resolve().parents[1]
NPZ = keras_npz_bytes()


def mnist_config(url: str, checksum: str = sha256(NPZ), **extra: object) -> DatasetBase:
    return parse_dataset({
        "name": "mnist",
        "source": "keras_npz",
        "url": url,
        "sha256": checksum,
        "image_shape": [28, 28, 1],
        "validation_size": 10,
        "test_size": None,
        "split_seed": 0,
        "download_retries": 1,
        "download_timeout_s": 5,
        **extra,
    })


def test_good_file_is_verified_cached_and_reused_without_a_request(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    with FileServer({"mnist.npz": NPZ}) as server:
        url = server.url + "mnist.npz"
        first = fetch_verified(url, sha256(NPZ), dataset="mnist", cache=cache, retries=0)
        assert first == cache / "mnist" / "mnist.npz"
        assert first.read_bytes() == NPZ
        assert server.requests["mnist.npz"] == 1

        again = fetch_verified(url, sha256(NPZ), dataset="mnist", cache=cache, retries=0)
        assert again == first
        assert server.requests["mnist.npz"] == 1, "a verified cached file must not be downloaded again"
        assert files_under(cache) == [first]


def test_damaged_cached_copy_is_downloaded_again(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    (cache / "mnist").mkdir(parents=True)
    (cache / "mnist" / "mnist.npz").write_bytes(NPZ[:100])
    with FileServer({"mnist.npz": NPZ}) as server:
        path = fetch_verified(server.url + "mnist.npz", sha256(NPZ), dataset="mnist", cache=cache, retries=0)
        assert server.requests["mnist.npz"] == 1
    assert path.read_bytes() == NPZ


def test_download_stage_fills_raw_from_cache_and_preprocess_uses_official_test(tmp_path: Path) -> None:
    cache, raw, prepared = tmp_path / "cache", tmp_path / "data" / "raw", tmp_path / "data" / "prepared"
    with FileServer({"mnist.npz": NPZ}) as server:
        config = mnist_config(server.url + "mnist.npz")
        record = download_dataset(config, raw, cache, tmp_path)
        # A second project (another raw dir) reuses the cached download.
        download_dataset(config, tmp_path / "other" / "raw", cache, tmp_path)
        assert server.requests["mnist.npz"] == 1

    assert record["dataset"] == "mnist" and record["files"][0]["sha256"] == sha256(NPZ)
    assert json.loads((raw / "source.json").read_text()) == record
    assert (raw / "mnist.npz").read_bytes() == NPZ
    meta = prepare_dataset(config, raw, prepared)
    assert meta.counts["val"] and sum(meta.counts["val"].values()) == 10
    x_test, y_test = load_split(prepared, "test")
    with np.load(raw / "mnist.npz") as upstream:
        np.testing.assert_array_equal(x_test[..., 0], upstream["x_test"])  # the official test split, untouched
        np.testing.assert_array_equal(y_test, upstream["y_test"])
    assert load_meta(prepared).checksums.keys() == {"train.npz", "val.npz", "test.npz"}


def test_corrupt_file_is_a_checksum_error_and_nothing_is_kept(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    corrupt = NPZ[:-10] + b"0123456789"
    with FileServer({"mnist.npz": corrupt}) as server:
        url = server.url + "mnist.npz"
        with pytest.raises(DigitlabError) as error:
            fetch_verified(url, sha256(NPZ), dataset="mnist", cache=cache, retries=0)
    message = str(error.value)
    assert "checksum mismatch" in message and url in message
    assert sha256(NPZ) in message and sha256(corrupt) in message  # expected and actual
    assert files_under(cache) == []


def test_transfer_cut_off_halfway_is_retried_then_a_clear_error(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    with FileServer({"mnist.npz": NPZ}, cut_off=("mnist.npz",)) as server:
        url = server.url + "mnist.npz"
        with pytest.raises(DigitlabError) as error:
            fetch_verified(url, sha256(NPZ), dataset="mnist", cache=cache, retries=1)
        assert server.requests["mnist.npz"] == 2, "one retry after the broken transfer"
    assert "'mnist'" in str(error.value) and url in str(error.value)
    assert files_under(cache) == []


def test_404_is_a_clear_error_and_raw_dir_is_left_as_it_was(tmp_path: Path) -> None:
    raw = tmp_path / "data" / "raw"
    raw.mkdir(parents=True)
    (raw / "source.json").write_text("previous run")
    with FileServer({}) as server:
        url = server.url + "mnist.npz"
        with pytest.raises(DigitlabError) as error:
            download_dataset(mnist_config(url, download_retries=0), raw, tmp_path / "cache", tmp_path)
    assert "404" in str(error.value) and url in str(error.value)
    assert [p.name for p in (tmp_path / "data").iterdir()] == ["raw"], "no temporary directory left"
    assert (raw / "source.json").read_text() == "previous run"


def test_server_down_names_dataset_url_and_offline_datasets_within_seconds(tmp_path: Path) -> None:
    url = closed_port_url()
    started = time.monotonic()
    with pytest.raises(DigitlabError) as error:
        # The project root: its conf/dataset/ names the datasets that work offline.
        download_dataset(mnist_config(url), tmp_path / "raw", tmp_path / "cache", ROOT)
    assert time.monotonic() - started < 10
    message = str(error.value)
    assert "'mnist'" in message and url in message
    assert "mnist_5k" in message and "digits" in message and "mnist_1k" in message
    assert "fashion_mnist when /usr/share/datasets/fashion-mnist holds its files" in message
    assert "cifar10" not in message
    assert files_under(tmp_path) == []


def test_write_failure_halfway_leaves_nothing(tmp_path: Path) -> None:
    """A download whose writes fail (file size limit) after 20 kB: error, and no partial file."""
    payload = np.random.default_rng(0).bytes(200_000)
    cache = tmp_path / "cache"
    with FileServer({"big.bin": payload}) as server:
        script = textwrap.dedent(
            f"""
            import resource, sys
            from pathlib import Path
            from digitlab.data.fetch import fetch_verified
            from digitlab.errors import DigitlabError
            resource.setrlimit(resource.RLIMIT_FSIZE, (20_000, 20_000))
            try:
                fetch_verified({server.url + "big.bin"!r}, {sha256(payload)!r}, dataset="mnist", cache=Path({str(cache)!r}), retries=0)
            except DigitlabError as error:
                print(error)
                sys.exit(3)
            """
        )
        result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert result.returncode == 3, result.stderr
    assert "nothing was kept" in result.stdout and "File too large" in result.stdout
    assert files_under(cache) == []


def test_cifar_tarballs_download_and_prepare(tmp_path: Path) -> None:
    cifar10, cifar100 = cifar_tarball_bytes("cifar10"), cifar_tarball_bytes("cifar100", per_batch=40, n_test=200)
    files = {"cifar-10-python.tar.gz": cifar10, "cifar-100-python.tar.gz": cifar100}
    with FileServer(files) as server:
        config = {
            "name": "cifar10",
            "source": "cifar",
            "url": server.url + "cifar-10-python.tar.gz",
            "sha256": sha256(cifar10),
            "image_shape": [32, 32, 3],
            "validation_size": 20,
            "test_size": None,
            "split_seed": 0,
            "download_retries": 0,
        }
        download_dataset(parse_dataset(config), tmp_path / "raw10", tmp_path / "cache", tmp_path)
        coarse = {**config, "name": "cifar100", "url": server.url + "cifar-100-python.tar.gz", "sha256": sha256(cifar100), "label_mode": "coarse"}
        download_dataset(parse_dataset(coarse), tmp_path / "raw100", tmp_path / "cache", tmp_path)

    meta = prepare_dataset(parse_dataset(config), tmp_path / "raw10", tmp_path / "prepared10")
    assert meta.class_names[:3] == ["airplane", "automobile", "bird"] and meta.image_shape == (32, 32, 3)
    assert {s: sum(c.values()) for s, c in meta.counts.items()} == {"train": 80, "val": 20, "test": 20}
    x, _ = load_split(tmp_path / "prepared10", "train")
    assert x.shape[1:] == (32, 32, 3) and x.dtype == np.uint8

    meta = prepare_dataset(parse_dataset({**coarse, "validation_size": 40}), tmp_path / "raw100", tmp_path / "prepared100")
    assert meta.num_classes == 20 and meta.class_names[0] == "coarse0"
    with pytest.raises(ConfigError, match="dataset.label_mode='coarse'.*CIFAR-10 has one set of labels"):
        prepare_dataset(parse_dataset({**config, "label_mode": "coarse"}), tmp_path / "raw10", tmp_path / "prepared10")


def test_fashion_idx_from_local_dir_else_from_mirror(tmp_path: Path) -> None:
    arrays = {
        "train_images": labelled_images(40, (28, 28), 10)[0],
        "train_labels": labelled_images(40, (28, 28), 10)[1],
        "test_images": labelled_images(20, (28, 28), 10, seed=3)[0],
        "test_labels": labelled_images(20, (28, 28), 10, seed=3)[1],
    }
    names = {"train_images": "train-images-idx3-ubyte.gz", "train_labels": "train-labels-idx1-ubyte.gz", "test_images": "t10k-images-idx3-ubyte.gz", "test_labels": "t10k-labels-idx1-ubyte.gz"}
    blobs = {key: idx_bytes(array) for key, array in arrays.items()}
    local = tmp_path / "debian"
    local.mkdir()
    for key, blob in blobs.items():
        (local / names[key]).write_bytes(blob)
    with FileServer({names[k]: blobs[k] for k in blobs}) as server:
        config = parse_dataset({
            "name": "fashion_mnist",
            "source": "idx",
            "local_dir": str(local),
            "url": server.url,
            "files": {k: {"name": names[k], "sha256": sha256(blobs[k]), "local_sha256": sha256(blobs[k])} for k in blobs},
            "class_names": ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"],
            "image_shape": [28, 28, 1],
            "validation_size": 10,
            "test_size": None,
            "split_seed": 0,
            "download_retries": 0,
        })
        record = download_dataset(config, tmp_path / "raw", tmp_path / "cache", tmp_path)
        assert sum(server.requests.values()) == 0, "read from the local copy, not downloaded"
        assert {f["origin"] for f in record["files"]} == {str(local / n) for n in names.values()}

        (local / names["test_labels"]).write_bytes(b"not the packaged file")
        record = download_dataset(config, tmp_path / "raw", tmp_path / "cache", tmp_path)
        assert sum(server.requests.values()) == 4
        assert {f["origin"] for f in record["files"]} == {server.url + n for n in names.values()}

    meta = prepare_dataset(config, tmp_path / "raw", tmp_path / "prepared")
    assert meta.class_names[-1] == "Ankle boot"
    assert {s: sum(c.values()) for s, c in meta.counts.items()} == {"train": 30, "val": 10, "test": 20}


def test_cache_dir_setting_then_environment_then_home(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("DIGITLAB_CACHE_DIR", str(tmp_path / "env"))
    assert cache_dir(str(tmp_path / "conf")) == tmp_path / "conf"
    assert cache_dir("downloads", root=tmp_path) == tmp_path / "downloads"
    assert cache_dir(None) == tmp_path / "env"
    monkeypatch.delenv("DIGITLAB_CACHE_DIR")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache_dir(None) == tmp_path / "home" / ".cache" / "digitlab"
