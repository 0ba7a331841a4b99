"""The seed report's figures as PNG files (torchvision's grids, matplotlib for the layouts).

- `save_sample_grid`: one epoch's samples from fixed noise (Figures 1 and 3, one panel),
- `save_samples_across_epochs`: those grids side by side, one per epoch (Figures 1 and 3),
- `save_real_vs_model`: a column of real images next to reconstructed or generated ones (Figures 2, 4).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; never needs a display (Ray workers, CI)
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from torchvision.utils import make_grid, save_image  # noqa: E402

GRID_PADDING = 2
MAX_EPOCH_PANELS = 10  # beyond this, show evenly spaced epochs (first and last always)
DPI = 120
COMPARISON_COLUMNS = 4  # real and model images as two 4 x 4 grids side by side


def grid_image(images: torch.Tensor, nrow: int = 8) -> torch.Tensor:
    """[N, 1, 28, 28] in [0, 1] (float) or 0..255 (uint8) -> one [3, H, W] float grid."""
    images = images.float() / 255 if images.dtype == torch.uint8 else images.float()
    return make_grid(images.cpu(), nrow=nrow, padding=GRID_PADDING, pad_value=1.0)


def save_sample_grid(images: torch.Tensor, path: str | os.PathLike, nrow: int = 8) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_image(grid_image(images, nrow), path)
    return path


def pick_epochs(num_epochs: int, limit: int = MAX_EPOCH_PANELS) -> list[int]:
    """Indices of at most `limit` evenly spread epochs, always the first and the last."""
    if num_epochs <= limit:
        return list(range(num_epochs))
    step = (num_epochs - 1) / (limit - 1)
    return sorted({round(i * step) for i in range(limit)})


def save_samples_across_epochs(grids: Sequence[torch.Tensor], epochs: Sequence[int],
                               path: str | os.PathLike, title: str = "") -> Path:
    """One panel per (chosen) epoch: the same fixed noise decoded as training goes on."""
    chosen = pick_epochs(len(grids))
    fig, axes = plt.subplots(1, len(chosen), figsize=(2.2 * len(chosen), 2.6), squeeze=False)
    for ax, i in zip(axes[0], chosen):
        ax.imshow(grid_image(grids[i]).permute(1, 2, 0).numpy())
        ax.set_title(f"epoch {epochs[i]}", fontsize=9)
        ax.axis("off")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return _save(fig, path)


def save_real_vs_model(real: torch.Tensor, model: torch.Tensor, path: str | os.PathLike,
                       model_label: str) -> Path:
    """Left: real images; right: the model's (reconstructions for the VAE, in the same order, or
    samples for the GAN)."""
    nrow = COMPARISON_COLUMNS
    fig, axes = plt.subplots(1, 2, figsize=(6.0, 3.3 * len(real) / nrow**2 + 0.5))
    for ax, images, label in zip(axes, (real, model), ("real", model_label)):
        ax.imshow(grid_image(images, nrow=nrow).permute(1, 2, 0).numpy())
        ax.set_title(label, fontsize=9)
        ax.axis("off")
    fig.tight_layout()
    return _save(fig, path)


def _save(fig: plt.Figure, path: str | os.PathLike) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return path


def save_run_figures(trainer, out_dir: str | os.PathLike) -> dict[str, Path]:
    """The end-of-run figures of a `Trainer`: samples across epochs and real vs. model."""
    real, fake = trainer.task.comparison_images()
    return save_figures(trainer.task.name, trainer.sample_history,
                        [m["epoch"] for m in trainer.history], real, fake, out_dir)


def save_figures(model: str, grids: list[torch.Tensor], epochs: list[int], real: torch.Tensor,
                 fake: torch.Tensor, out_dir: str | os.PathLike) -> dict[str, Path]:
    """A run's end-of-run figures (the seed report's): its fixed-noise `grids` of each of
    `epochs`, and `real` images beside the model's `fake` ones."""
    out_dir = Path(out_dir)
    label, filename = (("reconstructed", "real_vs_reconstructed.png") if model == "vae"
                       else ("generated", "real_vs_generated.png"))
    return {
        "samples_across_epochs": save_samples_across_epochs(
            grids, epochs, out_dir / "samples_across_epochs.png",
            title=f"{model.upper()} samples from fixed noise"),
        filename.removesuffix(".png"): save_real_vs_model(real, fake, out_dir / filename, label),
    }
