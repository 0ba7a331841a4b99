"""Wall time of the whole `python -m genmodels.train vae` command against the common PyTorch way of
training the same model for the same epochs, each in a fresh process, one after the other.

    python bench/cli_vs_common.py --data-dir data                 # 2 Fashion-MNIST epochs
    python bench/cli_vs_common.py --data-dir data --dataset mnist --epochs 10

- ours: `python -m genmodels.train vae --dataset D --epochs E --no-progress` with default options
  (val_elbo on the validation split each epoch, test_elbo on the test split and test_iwae K=10 on
  1,000 of it at the end, figures and
  a checkpoint each epoch), timed from process start to exit;
- common: this file with --common: torchvision's dataset with ToTensor, a shuffling DataLoader
  (batch 128), the same VAE and loss (genmodels.vae), Adam, and the test ELBO over the whole test
  split after each epoch through a DataLoader, as PyTorch's VAE example does; no figures.
Both use every CPU torch sees by default. Imports torch, torchvision and genmodels only.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
BATCH = 128
TEST_BATCH = 1000


def common(dataset: str, data_dir: str, epochs: int) -> None:
    """The common pipeline (see the module docstring), printing the test ELBO of each epoch."""
    sys.path.insert(0, str(REPO))
    import torch
    from torch.utils.data import DataLoader
    from torchvision.transforms import ToTensor

    from genmodels.data import DATASETS
    from genmodels.vae import VAE, VAEConfig, elbo_terms

    torch.manual_seed(0)
    cls = DATASETS[dataset]
    train = DataLoader(cls(data_dir, train=True, transform=ToTensor()), batch_size=BATCH,
                       shuffle=True)
    test = DataLoader(cls(data_dir, train=False, transform=ToTensor()), batch_size=TEST_BATCH)
    cfg = VAEConfig()
    model = VAE.from_config(cfg)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    for epoch in range(1, epochs + 1):
        model.train()
        for x, _ in train:
            loss = -elbo_terms(model, x)["elbo"].mean()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        model.eval()
        total, n = 0.0, 0
        with torch.no_grad():
            for x, _ in test:
                total += elbo_terms(model, x)["elbo"].sum().item()
                n += len(x)
        print(f"epoch {epoch}: test_elbo {total / n:.2f}", flush=True)


def timed_run(cmd: list[str]) -> tuple[float, str]:
    start = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{done.stderr[-2000:]}")
    return seconds, done.stdout


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-dir", default=str(REPO.parent / "shared" / "data"))
    p.add_argument("--dataset", default="fashion-mnist")
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--common", action="store_true", help="run the common pipeline only")
    args = p.parse_args(argv)
    data_dir = str(Path(args.data_dir).resolve())
    if args.common:
        common(args.dataset, data_dir, args.epochs)
        return 0
    with tempfile.TemporaryDirectory() as out:
        ours, log = timed_run([sys.executable, "-m", "genmodels.train", "vae", "--dataset",
                               args.dataset, "--epochs", str(args.epochs), "--data-dir", data_dir,
                               "--out", out, "--no-progress"])
    last = [line for line in log.splitlines() if line.startswith("epoch")][-1]
    ref, ref_log = timed_run([sys.executable, __file__, "--common", "--dataset", args.dataset,
                              "--epochs", str(args.epochs), "--data-dir", data_dir])
    print(f"ours   (python -m genmodels.train vae, defaults): {ours:6.1f} s   {last[:120]}")
    print(f"common (torchvision + ToTensor + DataLoader):     {ref:6.1f} s   "
          f"{ref_log.splitlines()[-1]}")
    print(f"{args.dataset}, {args.epochs} epochs: ours takes {ours / ref:.2f}x the common "
          f"pipeline's wall time ({'at least as fast' if ours <= ref else 'slower'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
