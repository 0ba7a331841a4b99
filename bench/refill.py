"""A fused group in an ASHA sweep: its freed slots refilled, against a group that only shrinks.

    python bench/refill.py                                   # CPU: K = 4, 16 configurations
    python bench/refill.py --device cuda --members 16 --configs 64 --epochs 8   # a GPU

Both schedules train the same configurations (drawn at random from the sweep's VAE search space,
seeded) with the same early stopping (ASHA as a fused sweep runs it per member,
`trainables/rungs.py`: grace 1 epoch, the better half kept at each rung), one group at a time, each
member its own --epochs, every epoch a full pass over the training split plus the validation ELBO
that ASHA judges by:

- shrink (`--no-refill`): groups of K, one after another; a member that ends leaves its group;
- refill (the default): groups of K; a member that ends hands its slot to the next configuration,
  which starts from its standalone weights (`FusedTask.add_members`).

It prints, for each, the wall time to train every configuration, the member-epochs trained, the
member-epochs per hour and the mean number of members in a step, and the ratio of the two. This is
where refilling pays: on a GPU a fused step costs about the same for 4 members as for 16
(bench/RESULTS.md), so a group that only shrank runs nearly empty for most of a sweep; on a CPU the
step's cost follows the members, and the two should be close.

Imports torch, numpy, yaml and genmodels only: it runs where Ray, Optuna and MLflow are absent.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout, installed or not

from bench.bench_fused import DEFAULT_DATA, TEST_DATA  # noqa: E402
from genmodels.data import load_dataset  # noqa: E402
from genmodels.device import setup_device  # noqa: E402
from genmodels.fused.tasks import FusedConfig  # noqa: E402
from genmodels.loop import TrainConfig, Trainer  # noqa: E402
from genmodels.vae import VAEConfig  # noqa: E402
from sweeps.search_space import SPACES, Range  # noqa: E402
from trainables.rungs import AshaRungs  # noqa: E402

ASHA_GRACE, ASHA_REDUCTION = 1, 2  # a sweep's defaults (sweeps/options.py, sweeps/tuner.py)
SEED = 0


def draw(space: dict[str, Range], rng: np.random.Generator) -> dict:
    """One configuration of `space`, at random (what TPE's start-up trials do)."""
    values = {}
    for name, r in space.items():
        low, high = (math.log(r.low), math.log(r.high)) if r.log else (r.low, r.high)
        value = rng.uniform(low, high)
        value = math.exp(value) if r.log else value
        values[name] = int(round(value)) if r.integer else float(value)
    return values


@dataclass
class Schedule:
    name: str
    seconds: float = 0.0
    member_epochs: int = 0
    group_epochs: int = 0
    ended: int = 0

    @property
    def members_a_step(self) -> float:
        """Members in the group's average step (members change only between epochs)."""
        return self.member_epochs / self.group_epochs

    def row(self) -> str:
        per_hour = self.member_epochs / self.seconds * 3600
        return (f"{self.name:<8} {self.seconds:8.1f} s  {self.member_epochs:5d} member-epochs  "
                f"{per_hour:12,.0f} member-epochs/h  {self.members_a_step:5.2f} members a step  "
                f"{self.ended} configurations")


def run(refill: bool, configs: list[VAEConfig], k: int, epochs: int, data, train_cfg: TrainConfig,
        width: int) -> Schedule:
    """Every configuration through groups of `k`, one group at a time; see the module's doc."""
    schedule = Schedule("refill" if refill else "shrink")
    rungs = AshaRungs(ASHA_GRACE, ASHA_REDUCTION, epochs, "max")
    queue = list(enumerate(configs))
    start = time.perf_counter()
    while queue:
        first, queue = queue[:k], queue[k:]
        members = [name for name, _ in first]  # position in the group -> configuration number
        joined = {name: 0 for name in members}  # the group epoch each one joined after
        fused = FusedConfig([cfg for _, cfg in first], latent_width=width if refill else None)
        trainer = Trainer.create("fused-vae", fused, train_cfg, data)
        while members:
            report = trainer.run_epoch()
            schedule.group_epochs += 1
            schedule.member_epochs += len(members)
            keep = []
            for index, (name, value) in enumerate(zip(members, report.metrics["val_elbo"])):
                own = report.epoch - joined[name]
                if own < epochs and not rungs.should_stop(str(name), own, value):
                    keep.append(index)
            schedule.ended += len(members) - len(keep)
            new, queue = (queue[:len(members) - len(keep)], queue[len(members) - len(keep):]) \
                if refill else ([], queue)
            if new:
                trainer.task.add_members([cfg for _, cfg in new], train_cfg.seed)
                keep += range(len(members), len(members) + len(new))
                members += [name for name, _ in new]
                joined.update({name: report.epoch for name, _ in new})
            if keep and len(keep) < len(members):
                trainer.task.keep_members(keep)
            members = [members[i] for i in keep]
    if trainer.device.type == "cuda":
        torch.cuda.synchronize()
    schedule.seconds = time.perf_counter() - start
    return schedule


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--members", type=int, default=4, help="K, a group's size")
    p.add_argument("--configs", type=int, default=16, help="configurations in the sweep")
    p.add_argument("--epochs", type=int, default=4, help="each configuration's --epochs")
    p.add_argument("--train-subset", type=int, default=2048, help="0: every training image")
    p.add_argument("--data-dir", default=None, help="default ../shared/data, else tests/data")
    args = p.parse_args(argv)

    device = setup_device(args.device, "fp32", None)
    # Trainer.create holds the validation split out and takes the subset, as a trial's does
    data = load_dataset("mnist", args.data_dir or (DEFAULT_DATA if DEFAULT_DATA.exists() else TEST_DATA))
    rng = np.random.default_rng(SEED)
    space = SPACES["vae"]
    configs = [VAEConfig(**draw(space, rng)) for _ in range(args.configs)]
    # members end by the schedule, never by the trainer's epoch count
    train_cfg = TrainConfig(device=args.device, seed=SEED, epochs=10**6,
                            train_subset=args.train_subset or None)
    width = int(space["latent_dim"].high)  # a refilling sweep pads every group to the space's largest
    print(f"VAE on {device}: {args.configs} configurations x {args.epochs} epochs, groups of "
          f"{args.members}, ASHA grace {ASHA_GRACE} halving, "
          f"{f'the first {args.train_subset}' if args.train_subset else 'all'} training images")
    rows = [run(refill, configs, args.members, args.epochs, data, train_cfg, width)
            for refill in (False, True)]
    for row in rows:
        print(row.row())
    shrink, refill = rows
    print(f"refill / shrink: {shrink.seconds / refill.seconds:.2f}x the configurations per hour, "
          f"{refill.member_epochs / refill.seconds / (shrink.member_epochs / shrink.seconds):.2f}x "
          "the member-epochs per hour")
    # Where a group's step costs the same whatever its members (the fused VAE on an H200, K = 4
    # to 16: bench/RESULTS.md), member-epochs per hour follow the members in a step.
    print(f"where a step costs the same for any number of members: refill / shrink = "
          f"{refill.members_a_step / shrink.members_a_step:.2f}x the member-epochs per hour")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
