"""Does a step replayed from a CUDA graph train the same model as the eager step? (CUDA only.)

    python bench/check_graphs.py --data-dir .gpu/data

For the VAE, the GAN and fused groups of both (three members with different latent sizes, dropout
and learning rates), a fused VAE group that drops a member halfway (the graphed step must be
captured again, on the shrunk group's new optimizer), and a fused GAN whose members' convolutions
run one after another on one stream ("per-member" layout), and one whose members each run their
whole network as their own chain of calls ("members" layout; the eager runs of both must equal
the fused GAN's in its default layout on CUDA, the same convolutions side by side on CUDA streams,
the members one over its first steps: `OTHER_LAYOUTS`), two trainers are built from the same seed:
one eager, one with `cuda_graphs=True`. Both train STEPS steps on the same batches. The CUDA
random-number generator is graph-aware, so the graphed run draws the same noise and dropout masks
as the eager one. cuDNN is made deterministic and kept out of TF32 here: otherwise two *eager* runs
already differ by ~1e-3 (TF32 convolutions, nondeterministic algorithms), which a GAN's dynamics
grow to order one in 20 steps (measured: the first run of this script). One more difference is
arithmetic: a graph needs torch.optim.Adam's `capturable` mode, which computes the bias corrections
on the device in another order than the default mode, a rounding-level change a GAN also grows
(1e-2 in 20 steps, measured: the second run). So the reference is an eager run with capturable Adam
too, and the per-step losses should agree to fp32 rounding. Printed per model: the largest relative
difference of the losses, graphed against that eager run, against a default eager run, and the
noise floor of two default eager runs; then, per model, a graphed run resumed halfway from its
checkpoint against the run straight through. Exits 1 if graphed differs from capturable eager,
resumed from straight, or another layout from the default one, by more than TOLERANCE. Imports torch
and genmodels only.
"""

from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout

from genmodels.data import iterate_batches, load_dataset  # noqa: E402
from genmodels.fused.tasks import FusedConfig  # noqa: E402
from genmodels.gan import GANConfig  # noqa: E402
from genmodels.graphs import set_capturable  # noqa: E402
from genmodels.loop import TrainConfig, Trainer  # noqa: E402
from genmodels.vae import VAEConfig  # noqa: E402

STEPS = 20  # 3 eager warm-up steps, the capture, then 16 replays
RESUME_AT = 10  # the step at whose start a run is stopped and resumed from its checkpoint
SHRINK_AT = 10  # "fused-vae, shrunk": the step before which member 1 leaves the group
TOLERANCE = 1e-3  # relative, per-step losses: fp32 rounding that Adam's updates grow over 20 steps
REPO = Path(__file__).resolve().parents[1]


def model_configs() -> dict:
    vaes = [VAEConfig(latent_dim=d, dropout=p, lr=lr)
            for d, p, lr in ((20, 0.0, 1e-3), (8, 0.2, 3e-3), (32, 0.1, 5e-4))]
    gans = [GANConfig(latent_dim=d, dropout=p, lr_g=lr, lr_d=2e-4)
            for d, p, lr in ((100, 0.0, 2e-4), (64, 0.3, 5e-4), (32, 0.1, 1e-4))]
    return {"vae": vaes[0], "gan": gans[0],
            "fused-vae": FusedConfig(vaes), "fused-gan": FusedConfig(gans),
            "fused-vae, shrunk": FusedConfig(vaes),
            "fused-gan, one stream": FusedConfig(gans, conv_layout="per-member"),
            "fused-gan, members": FusedConfig(gans, conv_layout="members")}


# Cases that train their base model in another layout: their eager runs must equal the base's,
# over the steps given. "one stream" makes the very same calls: every step. "members" computes
# BatchNorm per member instead of over the K * C stacked channels, the same sums reduced in another
# order, and a GAN grows rounding differences to 1e-2 in 20 steps (the module docstring): the
# steps before that growth.
OTHER_LAYOUTS = {"fused-gan, one stream": ("the same calls side by side on streams", STEPS),
                 "fused-gan, members": ("each member's network stacked layer by layer", 3)}


def base_model(name: str) -> str:
    """The model a case trains: "fused-vae, shrunk" is a fused VAE whose group shrinks."""
    return name.split(",")[0]


def step_metrics(trainer: Trainer, batch: torch.Tensor) -> torch.Tensor:
    """One training step's metrics as one flat tensor, copied out of the graph's output buffers."""
    return torch.stack([v.float().reshape(-1) for v in trainer.train_step(batch).values()]).clone()


def losses(model: str, cfg, data, graphs: bool, capturable: bool = False
           ) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Per-step metric tensors and the final weights of STEPS steps from seed 0 (`capturable`:
    an eager run with the graphed run's Adam arithmetic)."""
    train_cfg = TrainConfig(device="cuda", seed=0, cuda_graphs=graphs)
    # A copy: shrinking a group rewrites its config's member list (so checkpoints record it).
    trainer = Trainer.create(base_model(model), copy.deepcopy(cfg), train_cfg, data)
    set_capturable(trainer.task.optimizers.values(), capturable, trainer.device)
    images = trainer.data.train_images
    batches = iterate_batches(images, train_cfg.batch_size, torch.Generator().manual_seed(0))
    history = []
    for step, index in zip(range(STEPS), batches):
        if model.endswith("shrunk") and step == SHRINK_AT:  # members 0 and 2 carry on: a re-capture
            trainer.task.keep_members([0, 2])
        history.append(step_metrics(trainer, images[index]))
    weights = [p.detach().clone() for m in trainer.task.modules.values() for p in m.parameters()]
    return history, weights


def resumed(model: str, cfg, data) -> float:
    """The largest relative difference of the per-step losses after step RESUME_AT: a graphed run
    straight through against one resumed at RESUME_AT from its checkpoint (the trainer's state
    dict, copied as a file would hold it: models, optimizers, every RNG state). Both replay graphs
    from the same RNG stream, so this should be 0."""
    train_cfg = TrainConfig(device="cuda", seed=0, cuda_graphs=True)
    straight = Trainer.create(model, cfg, train_cfg, data)
    images = straight.data.train_images
    batches = [images[index] for _, index in zip(range(STEPS), iterate_batches(
        images, train_cfg.batch_size, torch.Generator().manual_seed(0)))]
    for batch in batches[:RESUME_AT]:
        straight.train_step(batch)
    checkpoint = copy.deepcopy(straight.state_dict())

    def rest(trainer: Trainer) -> list[torch.Tensor]:
        return [step_metrics(trainer, batch) for batch in batches[RESUME_AT:]]

    want = rest(straight)
    again = Trainer.create(model, cfg, train_cfg, data)
    again.load_state_dict(checkpoint)
    return max(relative(g, w) for g, w in zip(rest(again), want))


def relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-12)).item()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-dir", default=str(REPO / "tests" / "data"))
    args = p.parse_args(argv)
    if not torch.cuda.is_available():
        print("check_graphs: no CUDA device here, nothing to check (CUDA graphs are CUDA only)")
        return 0
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False
    torch.backends.cudnn.allow_tf32 = False
    data = load_dataset("mnist", args.data_dir)
    worst = 0.0
    eager_runs = {}
    for model, cfg in model_configs().items():
        eager, eager_weights = losses(model, cfg, data, graphs=False, capturable=True)
        eager_runs[model] = eager
        default, _ = losses(model, cfg, data, graphs=False)
        again, _ = losses(model, cfg, data, graphs=False)
        graphed, graphed_weights = losses(model, cfg, data, graphs=True)
        per_step = [relative(g, e) for g, e in zip(graphed, eager)]
        weights = max(relative(g, e) for g, e in zip(graphed_weights, eager_weights))
        worst = max(worst, max(per_step))
        print(f"{model:<21} losses, max rel. difference: graphed vs eager {max(per_step):.2e} "
              f"(steps 1-3 eager {max(per_step[:3]):.2e}, replays {max(per_step[4:]):.2e}), "
              f"weights after {STEPS} steps {weights:.2e}; graphed vs default-Adam eager "
              f"{max(relative(g, d) for g, d in zip(graphed, default)):.2e}; eager vs eager "
              f"{max(relative(a, d) for a, d in zip(again, default)):.2e}", flush=True)
        if model in OTHER_LAYOUTS:
            what, compared = OTHER_LAYOUTS[model]
            apart = [relative(s, o) for s, o in zip(eager, eager_runs[base_model(model)])]
            worst = max(worst, max(apart[:compared]))
            print(f"{model:<21} eager, against {base_model(model)} eager ({what}): losses, max rel. "
                  f"difference {max(apart[:compared]):.2e} over steps 1-{compared} (all {STEPS} "
                  f"steps: {max(apart):.2e})", flush=True)
    for model, cfg in model_configs().items():
        if "," not in model:
            difference = resumed(model, cfg, data)
            worst = max(worst, difference)
            print(f"{model:<21} resumed at step {RESUME_AT} from its checkpoint, graphed: losses of "
                  f"steps {RESUME_AT + 1}-{STEPS}, max rel. difference to the run straight through "
                  f"{difference:.2e}", flush=True)
    ok = worst <= TOLERANCE
    print(f"check_graphs: {'OK' if ok else 'FAILED'} (worst {worst:.2e}, tolerance {TOLERANCE:.0e})")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
