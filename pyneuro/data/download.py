"""Checksummed, atomic downloads of the MNIST-family IDX files from a list of mirrors."""
from __future__ import annotations

import hashlib
import logging
import os
import re
import socket
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from .idx import DataError, atomic_writer

__all__ = ["DatasetFiles", "DATASETS", "download_file", "download_dataset", "resolve_mirrors"]

log = logging.getLogger("pyneuro.data")


@dataclass(frozen=True)
class DatasetFiles:
    """Where a dataset's four IDX files come from and how to verify them."""

    name: str
    md5: dict[str, str]  # file name -> md5 of the published .gz file
    mirrors: tuple[str, ...]
    mirrors_env: str  # environment variable that replaces ``mirrors``
    torchvision_name: str  # folder name in torchvision's ``root/<name>/raw`` layout


DATASETS = {
    "mnist": DatasetFiles(
        name="mnist",
        # torchvision's published checksums
        md5={
            "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
            "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
            "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
            "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
        },
        mirrors=(
            "https://ossci-datasets.s3.amazonaws.com/mnist/",
            "https://storage.googleapis.com/cvdf-datasets/mnist/",
        ),
        mirrors_env="PYNEURO_MNIST_MIRRORS",
        torchvision_name="MNIST",
    ),
    "fashion-mnist": DatasetFiles(
        name="fashion-mnist",
        md5={
            "train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
            "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
            "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
            "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310",
        },
        mirrors=(
            "https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/fashion/",
            "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
        ),
        mirrors_env="PYNEURO_FASHION_MNIST_MIRRORS",
        torchvision_name="FashionMNIST",
    ),
}

_CHUNK = 1 << 20


def resolve_mirrors(dataset: DatasetFiles, mirrors: Sequence[str] | str | None = None) -> list[str]:
    """Mirror base URLs to try, in order: the ``mirrors`` argument, else the dataset's environment
    variable (URLs separated by commas or whitespace), else the built-in list."""
    if mirrors is None:
        mirrors = os.environ.get(dataset.mirrors_env) or list(dataset.mirrors)
    if isinstance(mirrors, str):
        mirrors = re.split(r"[\s,]+", mirrors.strip())
    urls = [m if m.endswith("/") else m + "/" for m in mirrors if m]
    if not urls:
        raise ValueError(f"mirrors: no URL given (argument or ${dataset.mirrors_env})")
    return urls


def _file_digest(path: Path, algorithm: str) -> str:
    digest = hashlib.new(algorithm, usedforsecurity=False)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _timed_out(exc: BaseException) -> bool:
    reason = exc.reason if isinstance(exc, urllib.error.URLError) else exc
    return isinstance(reason, (TimeoutError, socket.timeout))


def _fetch(url: str, dest: Path, algorithm: str, expected: str, timeout: float) -> None:
    """Stream ``url`` into ``dest`` (see :func:`_fetch_once`); a server that stops answering for
    ``timeout`` seconds, before or during the transfer, is a DataError that says so."""
    try:
        _fetch_once(url, dest, algorithm, expected, timeout)
    except (urllib.error.URLError, OSError) as exc:
        if _timed_out(exc):
            raise DataError(f"timed out: no data from the server for {timeout:g} s "
                            "(a hung connection; the timeout argument sets the limit)") from None
        raise


def _fetch_once(url: str, dest: Path, algorithm: str, expected: str, timeout: float) -> None:
    """Stream ``url`` into a temporary file beside ``dest``, verify it, then rename it to ``dest``;
    on any failure (KeyboardInterrupt included) no file, partial or temporary, is left behind."""
    digest = hashlib.new(algorithm, usedforsecurity=False)
    received = 0
    with atomic_writer(dest) as out, urllib.request.urlopen(url, timeout=timeout) as response:
        declared = response.headers.get("Content-Length")
        for chunk in iter(lambda: response.read(_CHUNK), b""):
            out.write(chunk)
            digest.update(chunk)
            received += len(chunk)
        # Raising inside the block discards the temporary file.
        if declared is not None and received != int(declared):
            raise DataError(f"transfer ended after {received} of {declared} bytes")
        if digest.hexdigest() != expected:
            raise DataError(f"{algorithm} checksum {digest.hexdigest()} does not match the expected {expected}")


def download_file(
    urls: Sequence[str],
    dest: str | os.PathLike,
    *,
    md5: str | None = None,
    sha256: str | None = None,
    timeout: float = 60.0,
) -> Path:
    """Download the first of ``urls`` that succeeds and matches the checksum to ``dest``.

    Exactly one of ``md5`` / ``sha256`` is required: an unverified download is never kept.
    A mirror that fails (HTTP error, broken transfer, wrong checksum) is skipped for the next.

    Raises:
        DataError: every URL failed; the message lists each URL's failure.
    """
    if (md5 is None) == (sha256 is None):
        raise ValueError("download_file: give exactly one of md5 or sha256")
    algorithm, expected = ("md5", md5) if md5 is not None else ("sha256", sha256)
    expected = expected.lower()
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    failures = []
    for url in urls:
        log.info("downloading %s -> %s", url, dest)
        try:
            _fetch(url, dest, algorithm, expected, timeout)
            return dest
        except Exception as e:  # noqa: BLE001 -- any mirror failure means: try the next one
            failures.append(f"  {url}: {e}")
    raise DataError(f"{dest.name}: download failed from every mirror:\n" + "\n".join(failures))


def download_dataset(
    dataset: DatasetFiles,
    folder: str | os.PathLike,
    mirrors: Sequence[str] | str | None = None,
    *,
    timeout: float = 60.0,
) -> Path:
    """Make sure ``folder`` holds the dataset's four verified ``.gz`` files, downloading what is
    missing or fails its checksum. Returns ``folder``."""
    folder = Path(folder)
    bases = resolve_mirrors(dataset, mirrors)
    for name, md5 in dataset.md5.items():
        dest = folder / name
        if dest.is_file() and _file_digest(dest, "md5") == md5:
            continue
        download_file([base + name for base in bases], dest, md5=md5, timeout=timeout)
    return folder
