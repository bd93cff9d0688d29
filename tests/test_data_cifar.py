"""CIFAR read by the project from torchvision's pickled layout (a fixture the test writes), the
restricted unpickler, the one-line error when nothing is found, and Fashion-MNIST as 3x32x32."""
import os
import pickle

import numpy as np
import pytest
import torch

from _cifar_fixture import CIFAR10_CLASSES, write_cifar10, write_cifar100
from trajgen import data as datasets


def test_cifar10_from_the_folder_or_its_parent(tmp_path):
    folder = write_cifar10(tmp_path, per_batch=20, n_test=30)
    raw = pickle.load(open(folder / "data_batch_2", "rb"), encoding="bytes")
    for root in (tmp_path, folder):
        ds = datasets.load("cifar10", root)
        assert ds.x_train.shape == (100, 3, 32, 32) and ds.x_train.dtype == torch.uint8
        assert ds.x_test.shape == (30, 3, 32, 32) and ds.y_train.dtype == torch.int64
        assert ds.classes == CIFAR10_CLASSES and ds.in_shape == (3, 32, 32)
        # batch 2's image 0 is training image 20, channel-major: red plane first
        img = raw[b"data"][0]
        assert np.array_equal(ds.x_train[20, 0].numpy().ravel(), img[:1024])
        assert np.array_equal(ds.x_train[20, 2].numpy().ravel(), img[2048:])
        assert ds.y_train[20].item() == raw[b"labels"][0]


def test_cifar100_uses_fine_labels(tmp_path):
    folder = write_cifar100(tmp_path, n_train=60, n_test=10)
    ds = datasets.load("cifar100", tmp_path)
    raw = pickle.load(open(folder / "train", "rb"), encoding="bytes")
    assert ds.x_train.shape == (60, 3, 32, 32) and len(ds.classes) == 100
    assert ds.y_train.tolist() == raw[b"fine_labels"]


def test_a_pickle_asking_for_anything_but_arrays_is_refused_unexecuted(tmp_path):
    folder = write_cifar10(tmp_path, per_batch=5, n_test=5)
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return os.system, (f"touch {marker}",)

    with open(folder / "data_batch_3", "wb") as f:
        pickle.dump({"data": Evil(), "labels": [0]}, f)
    with pytest.raises(datasets.DatasetError, match="posix.system is not allowed|os.system is not allowed"):
        datasets.load("cifar10", tmp_path)
    assert not marker.exists()


def test_malformed_batches_fail_in_one_line(tmp_path):
    folder = write_cifar10(tmp_path, per_batch=5, n_test=5)
    (folder / "test_batch").write_bytes(b"not a pickle at all")
    with pytest.raises(datasets.DatasetError, match="is not a CIFAR batch file"):
        datasets.load("cifar10", tmp_path)
    with open(folder / "test_batch", "wb") as f:
        pickle.dump({"data": np.zeros((2, 100), np.uint8), "labels": [0, 1]}, f)
    with pytest.raises(datasets.DatasetError, match=r"expected data \(N, 3072\)"):
        datasets.load("cifar10", tmp_path)


def test_missing_cifar_names_both_ways_to_get_it(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no data/cifar-10-batches-py from an earlier download
    with pytest.raises(datasets.DatasetError) as err:
        datasets.load("cifar10", tmp_path)
    message = str(err.value)
    assert "\n" not in message and "--data-root" in message and "--download" in message
    assert "cifar-10-batches-py" in message


def test_fashion_mnist_rgb_is_padded_and_repeated():
    grey, rgb = datasets.load("fashion-mnist"), datasets.load("fashion-mnist-rgb")
    assert rgb.x_train.shape == (60000, 3, 32, 32) and rgb.x_test.shape == (10000, 3, 32, 32)
    assert torch.equal(rgb.x_train[:50, 1, 2:30, 2:30], grey.x_train[:50, 0])
    assert torch.equal(rgb.x_train[:50, 0], rgb.x_train[:50, 2])
    assert rgb.x_train[:, :, :2].eq(0).all() and rgb.x_test[:, :, :, 30:].eq(0).all()
    assert torch.equal(rgb.y_train, grey.y_train) and rgb.classes == grey.classes
