"""Data loading: the committed subsets load as tensors; missing, truncated and corrupt files fail
with errors that say what to do.

    pytest tests/test_data.py -q
"""

import shutil

import pytest
import torch

from genmodels.data import (
    DATA_DIR_ENV,
    DataError,
    check_dataset_files,
    iterate_batches,
    load_dataset,
    resolve_data_dir,
)


def test_loads_both_datasets_as_uint8_tensors(data_dir):
    mnist = load_dataset("mnist", data_dir)
    assert mnist.train_images.shape == (2000, 28, 28) and mnist.train_images.dtype == torch.uint8
    assert mnist.test_images.shape == (1000, 28, 28)
    assert mnist.train_labels.dtype == torch.int64
    assert set(mnist.train_labels.tolist()) == set(range(10))
    fashion = load_dataset("fashion-mnist", data_dir, train_subset=100)
    assert fashion.train_images.shape == (100, 28, 28) and fashion.test_images.shape[0] == 250


def test_data_dir_from_environment(data_dir, monkeypatch, tmp_path):
    assert resolve_data_dir(None) == tmp_path.resolve() / "data"  # ./data when nothing is set
    monkeypatch.setenv(DATA_DIR_ENV, str(data_dir))
    assert resolve_data_dir(None) == data_dir.resolve()
    assert len(load_dataset("mnist").train_images) == 2000
    assert resolve_data_dir("elsewhere") == tmp_path.resolve() / "elsewhere"  # the argument wins


def test_missing_data_names_folder_and_files(tmp_path):
    with pytest.raises(DataError) as err:
        check_dataset_files("mnist", tmp_path)
    message = str(err.value)
    assert str(tmp_path / "MNIST" / "raw") in message
    assert "train-images-idx3-ubyte" in message and "--data-dir" in message


def test_offline_download_becomes_a_clear_error(tmp_path, monkeypatch):
    import torchvision

    def no_network(*args, **kwargs):
        raise OSError("network is unreachable")

    # The real torchvision class, with its download step failing as it does offline.
    monkeypatch.setattr(torchvision.datasets.MNIST, "download", no_network)
    with pytest.raises(DataError, match="downloading it failed"):
        load_dataset("mnist", tmp_path, download=True)


def test_unknown_dataset_and_bad_subset(data_dir):
    with pytest.raises(ValueError, match="unknown dataset"):
        load_dataset("cifar", data_dir)
    with pytest.raises(ValueError, match="train_subset"):
        load_dataset("mnist", data_dir, train_subset=10**6)


def copy_mnist(data_dir, tmp_path):
    load_dataset("mnist", data_dir)  # unpack the .gz files once
    target = tmp_path / "data"
    shutil.copytree(data_dir / "MNIST", target / "MNIST")
    return target


def test_truncated_file_is_a_clear_error(data_dir, tmp_path):
    root = copy_mnist(data_dir, tmp_path)
    images = root / "MNIST" / "raw" / "train-images-idx3-ubyte"
    images.write_bytes(images.read_bytes()[:5000])
    with pytest.raises(DataError, match="truncated or corrupt"):
        load_dataset("mnist", root)


def test_corrupt_gzip_is_a_clear_error(data_dir, tmp_path):
    root = tmp_path / "data"
    shutil.copytree(data_dir / "MNIST", root / "MNIST")
    raw = root / "MNIST" / "raw"
    for unpacked in raw.glob("*-ubyte"):
        unpacked.unlink()
    (raw / "t10k-labels-idx1-ubyte.gz").write_bytes(b"not a gzip file")
    with pytest.raises(DataError, match="corrupt"):
        load_dataset("mnist", root)


def test_corrupt_labels_are_a_clear_error(data_dir, tmp_path):
    root = copy_mnist(data_dir, tmp_path)
    labels = root / "MNIST" / "raw" / "t10k-labels-idx1-ubyte"
    raw = bytearray(labels.read_bytes())
    raw[8] = 200  # a label that is no digit
    labels.write_bytes(bytes(raw))
    with pytest.raises(DataError, match="outside 0..9"):
        load_dataset("mnist", root)


def test_batches_are_a_seeded_permutation():
    images = torch.arange(10)
    first = list(iterate_batches(images, 3, torch.Generator().manual_seed(1)))
    again = list(iterate_batches(images, 3, torch.Generator().manual_seed(1)))
    assert [b.tolist() for b in first] == [b.tolist() for b in again]
    assert len(first) == 3  # the incomplete last batch is dropped
    seen = torch.cat(first)
    assert len(set(seen.tolist())) == 9
    with pytest.raises(ValueError, match="batch_size"):
        list(iterate_batches(images, 11, torch.Generator()))
