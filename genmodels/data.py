"""MNIST and Fashion-MNIST as uint8 tensors on the training device, with on-device batching.

torchvision owns the file format and the download; this module adds what a sweep needs around it:
- one place that decides where the data lives (`--data-dir`, else $GENSWEEP_DATA_DIR, else ./data),
- a clear error when the files are missing (offline) or corrupt, instead of a torchvision traceback,
- the whole split held as one tensor, batches drawn by a permutation: no DataLoader, no per-image
  Python in the training loop.

    from genmodels.data import load_dataset, iterate_batches
    data = load_dataset("mnist", "data", device="cpu")
"""

from __future__ import annotations

import gzip
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
import torchvision

from genmodels.names import DATA_DIR_ENV

DEFAULT_DATA_DIR = "data"
IMAGE_SIZE = 28
# The validation split: a fixed seeded share of the training images, held out from training in every
# run and every trial (so all trials are compared on the same images), for everything that chooses:
# per-epoch objectives, early stopping, the sweep's best trial. The test split is only reported.
DEFAULT_VAL_FRACTION = 0.1  # 1,000 of the 10k MNIST training images here, 6,000 of the full 60k
VALIDATION_SEED = 2025
NUM_CLASSES = 10

# Dataset name on the command line -> torchvision class. The class's folder under the data dir is
# its own name ("MNIST", "FashionMNIST"), the layout torchvision's download writes.
DATASETS = {
    "mnist": torchvision.datasets.MNIST,
    "fashion-mnist": torchvision.datasets.FashionMNIST,
}
RAW_FILES = [
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
]


class DataError(RuntimeError):
    """The data set is missing, unreadable or malformed; the message says what to do."""


@dataclass
class ImageData:
    """The splits of a data set as tensors: images uint8 [N, 28, 28], labels int64 [N].

    `val_images` / `val_labels` are empty until `hold_out` splits them off the training images.
    """

    name: str
    train_images: torch.Tensor
    train_labels: torch.Tensor
    test_images: torch.Tensor
    test_labels: torch.Tensor
    val_images: torch.Tensor | None = None
    val_labels: torch.Tensor | None = None

    def __post_init__(self) -> None:
        if self.val_images is None:
            self.val_images = self.train_images[:0]
            self.val_labels = self.train_labels[:0]

    @property
    def device(self) -> torch.device:
        return self.train_images.device

    def _tensors(self) -> tuple[torch.Tensor, ...]:
        return (self.train_images, self.train_labels, self.test_images, self.test_labels,
                self.val_images, self.val_labels)

    def to(self, device: torch.device | str) -> ImageData:
        return ImageData(self.name, *(t.to(device) for t in self._tensors()))

    def hold_out(self, fraction: float) -> ImageData:
        """Split the validation set off the training images: the first `fraction` of them in a
        permutation seeded by VALIDATION_SEED, the same whatever the run or the trial. The
        training images left keep their order (so `subset` takes the first N of them)."""
        if len(self.val_images):
            raise ValueError(f"{self.name} already has a validation split")
        if not 0 < fraction < 1:
            raise ValueError(f"val_fraction must be between 0 and 1 (exclusive), got {fraction!r}")
        n = len(self.train_images)
        n_val = round(n * fraction)
        if not 0 < n_val < n:
            raise ValueError(f"val_fraction={fraction} of {n} training images leaves "
                             f"{n_val} for validation and {n - n_val} for training; change it")
        order = torch.randperm(n, generator=torch.Generator().manual_seed(VALIDATION_SEED))
        val, train = order[:n_val].sort().values, order[n_val:].sort().values
        val, train = val.to(self.device), train.to(self.device)
        return ImageData(self.name, self.train_images[train], self.train_labels[train],
                         self.test_images, self.test_labels,
                         self.train_images[val], self.train_labels[val])

    def subset(self, train_subset: int | None) -> ImageData:
        """The first `train_subset` training images (the test and validation splits stay whole)."""
        if train_subset is None:
            return self
        if not 0 < train_subset <= len(self.train_images):
            held = f" (after holding out {len(self.val_images)} for validation)" if len(
                self.val_images) else ""
            raise ValueError(
                f"train_subset={train_subset} is out of range: {self.name} has "
                f"{len(self.train_images)} training images{held}; pass 1..{len(self.train_images)}"
            )
        return ImageData(self.name, self.train_images[:train_subset],
                         self.train_labels[:train_subset], self.test_images, self.test_labels,
                         self.val_images, self.val_labels)


def resolve_data_dir(data_dir: str | os.PathLike | None) -> Path:
    """The data folder: the argument if given, else $GENSWEEP_DATA_DIR, else ./data."""
    chosen = data_dir or os.environ.get(DATA_DIR_ENV) or DEFAULT_DATA_DIR
    return Path(chosen).expanduser().resolve()


def check_dataset_name(name: str) -> None:
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; choose one of {sorted(DATASETS)}")


def raw_folder(name: str, data_dir: str | os.PathLike | None) -> Path:
    return resolve_data_dir(data_dir) / DATASETS[name].__name__ / "raw"


def _unpack_gzipped(raw: Path) -> None:
    """Unpack `X.gz` next to a missing `X`, as torchvision's own download does after fetching."""
    for filename in RAW_FILES:
        packed, unpacked = raw / f"{filename}.gz", raw / filename
        if not unpacked.exists() and packed.exists():
            try:
                with gzip.open(packed, "rb") as src, open(unpacked, "wb") as dst:
                    shutil.copyfileobj(src, dst)
            except (OSError, EOFError) as err:
                unpacked.unlink(missing_ok=True)
                raise DataError(f"{packed} is corrupt ({err}); delete it and fetch it again") from err


def check_dataset_files(name: str, data_dir: str | os.PathLike | None) -> Path:
    """Fail early, before any training starts, if the files are not there (and say which)."""
    check_dataset_name(name)
    root = resolve_data_dir(data_dir)
    if root.exists() and not root.is_dir():
        raise DataError(f"the data folder {root} is a file, not a folder; point --data-dir / "
                        f"${DATA_DIR_ENV} at the folder that holds '{DATASETS[name].__name__}/raw'")
    raw = raw_folder(name, data_dir)
    if raw.is_dir():
        _unpack_gzipped(raw)
    missing = [f for f in RAW_FILES if not (raw / f).exists()]
    if missing:
        raise DataError(
            f"{name} is not in {raw}: missing {', '.join(missing)}. Put torchvision's files there "
            f"(or their .gz), point --data-dir / ${DATA_DIR_ENV} at the folder that holds "
            f"'{DATASETS[name].__name__}/raw', or run once with internet so torchvision downloads it."
        )
    return raw


def ensure_dataset_files(name: str, data_dir: str | os.PathLike | None,
                         download: bool = False) -> Path:
    """`check_dataset_files`, after letting torchvision fetch missing files when `download` (needs
    internet; a failure there is a DataError naming the folder and the files expected)."""
    check_dataset_name(name)
    if download:
        try:
            return check_dataset_files(name, data_dir)
        except DataError:
            root = resolve_data_dir(data_dir)
            try:
                DATASETS[name](root=str(root), train=True, download=True)
                DATASETS[name](root=str(root), train=False, download=True)
            except Exception as err:
                raise DataError(
                    f"{name} is not in {raw_folder(name, root)} and downloading it failed ({err}). "
                    f"Copy {', '.join(RAW_FILES)} there, or set --data-dir / ${DATA_DIR_ENV}."
                ) from err
    return check_dataset_files(name, data_dir)


def _read_split(name: str, root: Path, train: bool) -> tuple[torch.Tensor, torch.Tensor]:
    split = "train" if train else "test"
    try:
        ds = DATASETS[name](root=str(root), train=train, download=False)
        images, labels = ds.data, ds.targets
    except Exception as err:  # torchvision raises assorted errors on truncated IDX files
        raise DataError(
            f"could not read the {split} split of {name} under {root}: {err}. The files are "
            "probably truncated or corrupt; delete them and fetch them again."
        ) from err
    if (images.dtype != torch.uint8 or images.dim() != 3
            or images.shape[1:] != (IMAGE_SIZE, IMAGE_SIZE) or len(images) != len(labels)
            or len(images) == 0):
        raise DataError(
            f"the {split} split of {name} under {root} is malformed: images {tuple(images.shape)} "
            f"{images.dtype}, labels {tuple(labels.shape)}; expected uint8 [N, 28, 28] with N labels"
        )
    if labels.min() < 0 or labels.max() >= NUM_CLASSES:
        raise DataError(f"the {split} labels of {name} under {root} are outside 0..9: corrupt file")
    return images, labels.long()


def load_dataset(
    name: str,
    data_dir: str | os.PathLike | None = None,
    device: torch.device | str = "cpu",
    train_subset: int | None = None,
    download: bool = False,
) -> ImageData:
    """Read both splits once into uint8 tensors on `device`.

    With `download=True` and the files missing, torchvision fetches them (needs internet); any
    failure there becomes a DataError naming the folder and the files expected.
    """
    root = resolve_data_dir(data_dir)
    ensure_dataset_files(name, root, download)
    train_images, train_labels = _read_split(name, root, train=True)
    test_images, test_labels = _read_split(name, root, train=False)
    data = ImageData(name, train_images, train_labels, test_images, test_labels)
    return data.subset(train_subset).to(device)


def iterate_batches(
    images: torch.Tensor, batch_size: int, generator: torch.Generator, drop_last: bool = True
) -> Iterator[torch.Tensor]:
    """Yield shuffled batches of row indices into `images`, one permutation per epoch.

    The permutation is drawn on the CPU from `generator` (so a seed gives the same order on every
    device) and moved once to the data's device; indexing then happens there.
    """
    n = len(images)
    if batch_size > n and drop_last:
        raise ValueError(
            f"batch_size={batch_size} is larger than the {n} training images; lower --batch-size "
            "or raise --train-subset"
        )
    order = torch.randperm(n, generator=generator).to(images.device)
    stop = n - n % batch_size if drop_last else n
    yield from order[:stop].split(batch_size)


def to_unit_interval(images: torch.Tensor) -> torch.Tensor:
    """uint8 [N, 28, 28] -> float [N, 1, 28, 28] in [0, 1] (what ToTensor gives)."""
    return images.unsqueeze(1).float().div_(255.0)
