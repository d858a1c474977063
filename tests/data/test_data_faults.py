"""Data loading under faults: concurrent cache builds, a full disk, a hung download."""
from __future__ import annotations

import errno
import json
import os
import socket
import subprocess
import sys
import textwrap
import threading
import time

import numpy as np
import pytest

from pyneuro.data import DataError, download_file, load_mnist
from pyneuro.data import mnist as mnist_module

N_TRAIN, N_TEST = 60, 12


def test_two_processes_building_the_cache_at_once_both_succeed(tmp_path, fake_mnist, write_idx_set):
    a = fake_mnist(N_TRAIN, N_TEST)
    write_idx_set(tmp_path / "root", a)
    cache = tmp_path / "cache"
    # Both processes start loading at the same moment (each waits for the other's ready file) and
    # write slowly (a pause per file), so the two builds overlap for certain; without the lock one
    # removed the manifest the other had just written.
    child = textwrap.dedent(f"""
        import json, pathlib, sys, time
        import numpy as np
        real_save, saves = np.save, []
        def slow_save(*args, **kwargs):
            saves.append(1)
            time.sleep(0.05)
            return real_save(*args, **kwargs)
        np.save = slow_save
        from pyneuro.data import load_mnist
        barrier = pathlib.Path({str(tmp_path)!r})
        (barrier / f"ready-{{sys.argv[1]}}").touch()
        while len(list(barrier.glob("ready-*"))) < 2:
            time.sleep(0.005)
        out = {{"saves": 0}}
        for split in ("train", "val", "test"):
            images, labels = load_mnist({str(tmp_path / "root")!r}, split, cache_dir={str(cache)!r})
            out[split] = [int(images.sum()), labels.tolist()]
        out["saves"] = len(saves)
        print(json.dumps(out))
    """)
    procs = [subprocess.Popen([sys.executable, "-c", child, str(k)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for k in range(2)]
    results = [p.communicate(timeout=120) for p in procs]
    saves = 0
    for p, (out, err) in zip(procs, results):
        assert p.returncode == 0, err[-2000:]
        got = json.loads(out.strip().splitlines()[-1])
        saves += got["saves"]
        assert got["test"] == [int(a["test_images"].astype(np.int64).sum()), a["test_labels"].tolist()]
        assert got["train"][1] == a["train_labels"][:50].tolist() and got["val"][1] == a["train_labels"][50:].tolist()
    assert saves == 6, f"the cache was written {saves // 6} times: the second process did not wait for the first"
    # One complete cache, nothing half-written beside it.
    names = sorted(p.name for p in (cache / "mnist").iterdir())
    assert names == sorted([f"{s}-{k}.npy" for s in ("train", "val", "test") for k in ("images", "labels")]
                           + ["source.json"])
    images, labels = load_mnist(None, "test", cache_dir=cache, download=False)
    assert np.array_equal(images.numpy(), a["test_images"]) and np.array_equal(labels.numpy(), a["test_labels"])


def test_a_full_disk_while_writing_the_cache_is_a_clear_error_and_leaves_nothing(
        tmp_path, fake_mnist, write_idx_set, no_offline_copy, monkeypatch):
    a = fake_mnist(N_TRAIN, N_TEST)
    write_idx_set(tmp_path / "root", a)
    cache = tmp_path / "cache"
    real_save, calls = np.save, {"n": 0}

    def save_until_the_disk_is_full(file, array, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:  # two files made it, the third does not fit
            file.write(b"\x93NUMPY partial")
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_save(file, array, *args, **kwargs)

    monkeypatch.setattr(mnist_module.np, "save", save_until_the_disk_is_full)
    with pytest.raises(DataError, match=r"the disk is full .* data cache; nothing was left behind\): free some "
                                        r"space, or point PYNEURO_DATA_DIR"):
        load_mnist(tmp_path / "root", "train", cache_dir=cache)
    assert calls["n"] == 3
    assert list((cache / "mnist").iterdir()) == []  # neither the two complete files nor the partial one

    monkeypatch.setattr(mnist_module.np, "save", real_save)  # space again: the next load builds it
    images, _ = load_mnist(tmp_path / "root", "test", cache_dir=cache)
    assert np.array_equal(images.numpy(), a["test_images"])


@pytest.fixture
def hanging_server():
    """Accepts connections; ``mode`` "silent" never answers, "stall" sends headers and part of the
    body, then nothing more."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    state = {"mode": "silent", "conns": []}
    stop = threading.Event()

    def serve():
        listener.settimeout(0.05)
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except OSError:
                continue
            state["conns"].append(conn)
            if state["mode"] == "stall":
                conn.recv(4096)
                conn.sendall(b"HTTP/1.0 200 OK\r\nContent-Length: 100000\r\n\r\n" + b"x" * 1000)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield state, f"http://127.0.0.1:{listener.getsockname()[1]}/file.gz"
    finally:
        stop.set()
        thread.join(5)
        for conn in state["conns"]:
            conn.close()
        listener.close()


@pytest.mark.parametrize("mode", ["silent", "stall"])
def test_a_hung_download_times_out_with_a_clear_error(hanging_server, tmp_path, mode):
    state, url = hanging_server
    state["mode"] = mode
    t0 = time.perf_counter()
    with pytest.raises(DataError, match=r"(?s)file\.gz: download failed.*timed out: no data from the server for 0\.3 s"):
        download_file([url], tmp_path / "file.gz", md5="0" * 32, timeout=0.3)
    assert time.perf_counter() - t0 < 10
    assert list(tmp_path.iterdir()) == []  # no partial or temporary file
