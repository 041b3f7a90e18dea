"""Small files in the exact upstream formats, and a real HTTP server on 127.0.0.1 that serves them."""

from __future__ import annotations

import gzip
import hashlib
import io
import pickle
import socket
import struct
import tarfile
import threading
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def idx_bytes(array: np.ndarray) -> bytes:
    """An IDX file (uint8), gzipped as the MNIST / Fashion-MNIST files are."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(struct.pack(">I", d) for d in array.shape)
    return gzip.compress(header + array.tobytes(), mtime=0)


def labelled_images(n: int, shape: tuple[int, ...], classes: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``n`` distinct uint8 images (first pixels hold the index) and balanced labels."""
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 256, size=(n, *shape), dtype=np.uint8)
    flat = x.reshape(n, -1)
    flat[:, 0], flat[:, 1] = np.arange(n) // 256, np.arange(n) % 256
    y = np.arange(n) % classes
    return x, y


def keras_npz_bytes(n_train: int = 60, n_test: int = 20) -> bytes:
    """Keras' mnist.npz layout: x_train/y_train/x_test/y_test, uint8 28x28."""
    x_train, y_train = labelled_images(n_train, (28, 28), 10, seed=1)
    x_test, y_test = labelled_images(n_test, (28, 28), 10, seed=2)
    buffer = io.BytesIO()
    np.savez_compressed(buffer, x_train=x_train, y_train=y_train.astype(np.uint8), x_test=x_test, y_test=y_test.astype(np.uint8))
    return buffer.getvalue()


def _pickled(obj: dict) -> bytes:
    # Upstream batches are Python 2 pickles whose keys load as bytes.
    return pickle.dumps(obj, protocol=2)


def cifar_tarball_bytes(kind: str = "cifar10", per_batch: int = 20, n_test: int = 20) -> bytes:
    """A CIFAR python tarball: cifar-10-batches-py/ or cifar-100-python/ with pickled batches."""
    members: dict[str, bytes] = {}
    if kind == "cifar10":
        names = [b"airplane", b"automobile", b"bird", b"cat", b"deer", b"dog", b"frog", b"horse", b"ship", b"truck"]
        folder = "cifar-10-batches-py"
        for batch in range(1, 6):
            x, y = labelled_images(per_batch, (3072,), 10, seed=batch)
            members[f"{folder}/data_batch_{batch}"] = _pickled({b"batch_label": f"training batch {batch} of 5".encode(), b"labels": y.tolist(), b"data": x})
        x, y = labelled_images(n_test, (3072,), 10, seed=9)
        members[f"{folder}/test_batch"] = _pickled({b"batch_label": b"testing batch 1 of 1", b"labels": y.tolist(), b"data": x})
        members[f"{folder}/batches.meta"] = _pickled({b"label_names": names, b"num_cases_per_batch": per_batch, b"num_vis": 3072})
    else:
        folder = "cifar-100-python"
        fine = [f"fine{i}".encode() for i in range(100)]
        coarse = [f"coarse{i}".encode() for i in range(20)]
        for part, n, seed in (("train", per_batch * 5, 1), ("test", n_test, 2)):
            x, y = labelled_images(n, (3072,), 100, seed=seed)
            members[f"{folder}/{part}"] = _pickled({b"data": x, b"fine_labels": y.tolist(), b"coarse_labels": (y // 5).tolist()})
        members[f"{folder}/meta"] = _pickled({b"fine_label_names": fine, b"coarse_label_names": coarse})
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


class FileServer:
    """A real HTTP server on 127.0.0.1 (random free port) serving files from memory.

    ``cut_off`` names paths whose transfer is broken halfway: the server
    announces the full Content-Length, sends half the body and closes the
    connection. ``requests`` counts the GET requests per path.
    """

    def __init__(self, files: dict[str, bytes], cut_off: tuple[str, ...] = ()) -> None:
        self.files = dict(files)
        self.cut_off = set(cut_off)
        self.requests: Counter[str] = Counter()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
                path = self.path.lstrip("/")
                server.requests[path] += 1
                body = server.files.get(path)
                if body is None:
                    self.send_error(404, "Not Found")
                    return
                self.send_response(200)
                self.send_header("Content-Type", "application/octet-stream")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if path in server.cut_off:
                    self.wfile.write(body[: len(body) // 2])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:  # keep test output quiet
                pass

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._httpd.server_address[1]}/"
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)

    def __enter__(self) -> FileServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()


def closed_port_url(path: str = "mnist.npz") -> str:
    """The URL of a port on 127.0.0.1 where nothing listens (a server that is down)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/{path}"


def files_under(directory: Path) -> list[Path]:
    return sorted(p for p in Path(directory).rglob("*") if p.is_file()) if Path(directory).exists() else []
