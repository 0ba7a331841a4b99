"""The scoring classifier: a compact CNN trained once per data set, cached, shared by every trial.

    python -m genmodels.classifier --dataset mnist --data-dir data

The cache file (`$GENSWEEP_CACHE_DIR` or ~/.cache/gensweep, named by data set and a hash of the
training data) holds the weights, the test accuracy and the real test set's feature statistics
(mean, covariance and a sample of features for precision/recall), so scoring a generator needs only
its images. A file lock makes concurrent callers (sweep drivers, trials) train it once.
"""

from __future__ import annotations

import argparse
import hashlib
import math
import os
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from filelock import FileLock
from torch import nn

from genmodels.data import DATASETS, ImageData, iterate_batches, load_dataset, to_unit_interval
from genmodels.device import resolve_device
from genmodels.files import atomic_write
from genmodels.names import CACHE_ENV
from genmodels.scores import (
    PR_MAX_SAMPLES,
    SCORE_BATCH,
    Scorer,
    classifier_outputs,
    feature_statistics,
)

CACHE_FORMAT = 1
FEATURE_DIM = 128  # penultimate layer: the space of fcd and precision/recall
EPOCHS = 8
BATCH = 128
LR = 1e-3
MAX_SHIFT = 2 / 28  # augmentation: random shifts of up to 2 pixels...
MAX_ROTATION = math.radians(10)  # ...and rotations of up to 10 degrees
SEED = 0


class ScoringCNN(nn.Module):
    """Two conv blocks (32, 64 channels) and a 128-unit feature layer: ~99% on full MNIST."""

    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
            nn.Conv2d(32, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
            nn.MaxPool2d(2),  # 14 x 14 x 32
            nn.Conv2d(32, 64, 3, padding=1), nn.BatchNorm2d(64), nn.ReLU(),
            nn.Conv2d(64, 64, 3, padding=1), nn.BatchNorm2d(64), nn.ReLU(),
            nn.MaxPool2d(2),  # 7 x 7 x 64
            nn.Flatten(),
            nn.Linear(7 * 7 * 64, FEATURE_DIM), nn.ReLU(),
        )
        self.head = nn.Sequential(nn.Dropout(0.3), nn.Linear(FEATURE_DIM, num_classes))

    def features_and_logits(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.features(x)
        return features, self.head(features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features_and_logits(x)[1]


def augment(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Random small rotations and shifts of a whole batch at once (one affine grid per image)."""
    n = len(x)
    angle = (torch.rand(n, generator=generator) * 2 - 1) * MAX_ROTATION
    shift = (torch.rand(n, 2, generator=generator) * 2 - 1) * MAX_SHIFT * 2  # grid spans [-1, 1]
    cos, sin = torch.cos(angle), torch.sin(angle)
    theta = torch.stack([torch.stack([cos, -sin, shift[:, 0]], 1),
                         torch.stack([sin, cos, shift[:, 1]], 1)], 1).to(x.device)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, align_corners=False, padding_mode="zeros")


def data_hash(data: ImageData) -> str:
    digest = hashlib.sha256()
    for tensor in (data.train_images, data.train_labels):
        digest.update(tensor.cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


def cache_path(data: ImageData, cache_dir: str | os.PathLike | None = None) -> Path:
    root = Path(cache_dir or os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "gensweep")
    return root.expanduser().resolve() / f"classifier-{data.name}-{data_hash(data)}.pt"


@torch.no_grad()
def accuracy(model: ScoringCNN, images: torch.Tensor, labels: torch.Tensor) -> float:
    model.eval()
    correct = 0
    for x, y in zip(images.split(SCORE_BATCH), labels.split(SCORE_BATCH)):
        correct += (model(to_unit_interval(x)).argmax(1) == y).sum().item()
    return correct / len(labels)


def train_classifier(data: ImageData, epochs: int = EPOCHS, device: str = "auto",
                     progress: bool = True) -> tuple[ScoringCNN, float]:
    """Train on the training split with augmentation; return the model and its test accuracy."""
    torch.manual_seed(SEED)
    target = resolve_device(device)
    data = data.to(target)
    model = ScoringCNN().to(target)
    optimizer = torch.optim.Adam(model.parameters(), lr=LR)
    steps = epochs * (len(data.train_images) // BATCH)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=LR * 3, total_steps=steps)
    generator = torch.Generator().manual_seed(SEED)
    for epoch in range(1, epochs + 1):
        model.train()
        start = time.perf_counter()
        for index in iterate_batches(data.train_images, BATCH, generator):
            x = augment(to_unit_interval(data.train_images[index]), generator)
            loss = F.cross_entropy(model(x), data.train_labels[index])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
        if progress:
            acc = accuracy(model, data.test_images, data.test_labels)
            print(f"classifier epoch {epoch}/{epochs}: test accuracy {acc:.4f} "
                  f"({time.perf_counter() - start:.1f}s)", flush=True)
    return model, accuracy(model, data.test_images, data.test_labels)


def build_cache(model: ScoringCNN, data: ImageData, test_accuracy: float) -> dict:
    """Everything a score needs besides the generated images."""
    device = next(model.parameters()).device
    features, _ = classifier_outputs(model, to_unit_interval(data.test_images), device)
    mu, sigma = feature_statistics(features)
    subset = torch.randperm(len(features), generator=torch.Generator().manual_seed(SEED))
    return {
        "format": CACHE_FORMAT,
        "dataset": data.name,
        "data_hash": data_hash(data),
        "state_dict": {k: v.cpu() for k, v in model.state_dict().items()},
        "test_accuracy": test_accuracy,
        "ref_mu": torch.from_numpy(mu),
        "ref_sigma": torch.from_numpy(sigma),
        "ref_features": features[subset[:PR_MAX_SAMPLES]].cpu(),
    }


def ensure_classifier(dataset: str, data: ImageData, cache_dir: str | os.PathLike | None = None,
                      epochs: int = EPOCHS, device: str = "auto", force: bool = False) -> Path:
    """The cached classifier's path, training it first (once, under a file lock) if missing."""
    if data.name != dataset:
        raise ValueError(f"data is {data.name!r}, not {dataset!r}")
    path = cache_path(data, cache_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(path) + ".lock"):
        if path.exists() and not force:
            return path
        print(f"training the scoring classifier for {dataset} (cached at {path})", flush=True)
        model, test_accuracy = train_classifier(data, epochs, device)
        cache = build_cache(model, data, test_accuracy)
        atomic_write(path, lambda tmp: torch.save(cache, tmp))
        print(f"scoring classifier test accuracy: {test_accuracy:.4f}", flush=True)
    return path


def load_cache(path: str | os.PathLike) -> dict:
    try:
        cache = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise
    except Exception as err:
        raise ValueError(f"scoring classifier {path} is unreadable ({err}); delete it to retrain") from err
    if cache.get("format") != CACHE_FORMAT:
        raise ValueError(f"scoring classifier {path} has format {cache.get('format')}, "
                         f"expected {CACHE_FORMAT}; delete it to retrain")
    return cache


def load_scorer(path: str | os.PathLike, device: torch.device | str = "cpu") -> Scorer:
    return scorer_from_cache(load_cache(path), device)


def scorer_from_cache(cache: dict, device: torch.device | str = "cpu") -> Scorer:
    """A Scorer from the cache's contents (what a sweep ships to its trials through Ray)."""
    model = ScoringCNN()
    model.load_state_dict(cache["state_dict"])
    return Scorer(model, cache["ref_mu"].numpy(), cache["ref_sigma"].numpy(),
                  cache["ref_features"], torch.device(device))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m genmodels.classifier", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="mnist", choices=sorted(DATASETS))
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--cache-dir", default=None, help=f"default: ${CACHE_ENV} or ~/.cache/gensweep")
    parser.add_argument("--epochs", type=int, default=EPOCHS)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--force", action="store_true", help="retrain even if cached")
    args = parser.parse_args(argv)
    data = load_dataset(args.dataset, args.data_dir)
    path = ensure_classifier(args.dataset, data, args.cache_dir, args.epochs, args.device, args.force)
    cache = load_cache(path)
    print(f"{args.dataset}: {len(data.train_images)} training images, "
          f"test accuracy {cache['test_accuracy']:.4f}; cached at {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
