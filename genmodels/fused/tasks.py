"""Fused groups as tasks of the shared training loop (`genmodels.loop.Trainer`).

    cfg = FusedConfig([VAEConfig(latent_dim=8), VAEConfig(dropout=0.3), VAEConfig(lr=3e-4)])
    trainer = Trainer.create("fused-vae", cfg, TrainConfig(epochs=3), data)
    history = trainer.fit()   # each metric is a list with one value per member

A fused task is its model's plain task (`genmodels.tasks`: the same step, validation and figures,
written once) over fused modules (`genmodels.fused.vae`, `genmodels.fused.gan`) whose tensors carry
a leading member dimension: every metric is a [K] tensor or a list of K floats, one per member,
and images are [K, N, ...]. What a group adds is below: its members' own optimizer coefficients
(`StackedAdam`), their own ends, and changing members between steps.

Divergence is per member and never syncs with the device: a member whose loss is NaN or infinite
is marked inactive in the `active` buffer on the spot; from then on its updates are masked out of
the optimizer step, its loss out of the sum, and its training metrics read 0. The other members'
computations never read its values, so their trajectories are exactly what they would have been.
When every member has diverged the metrics turn NaN and the loop stops with `TrainingDiverged`.

A group changes its members between steps: `keep_members` drops those that ended, `add_members`
appends fresh ones (a sweep refills the freed slots) while the others train on untouched.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from dataclasses import dataclass, fields

import torch
from torch import nn

from genmodels.data import ImageData, to_unit_interval
from genmodels.fused.gan import FusedDiscriminator, FusedGenerator
from genmodels.fused.layers import stacked
from genmodels.fused.optim import StackedAdam
from genmodels.fused.vae import FusedVAE
from genmodels.gan import Discriminator, GANConfig, Generator
from genmodels.tasks import (
    NUM_FIXED_SAMPLES,
    GANTask,
    VAETask,
    fixed_noise,
    generated_images,
    vae_targets,
    vae_test_targets,
)
from genmodels.vae import VAE, VAEConfig

# Fields members may differ in: the searched hyperparameters. Everything else fixes the network's
# shape or the data and must be the same for the whole group.
MEMBER_FIELDS = {"vae": {"latent_dim", "dropout", "lr"},
                 "gan": {"latent_dim", "lr_g", "lr_d", "beta1", "beta2", "dropout"}}
CONFIG_CLASSES = {"vae": VAEConfig, "gan": GANConfig}


@dataclass
class FusedConfig:
    """The members of one fused group, each a full model config (VAEConfig or GANConfig)."""

    members: list
    # The padded latent size L (default: the members' largest). A group keeps its L when its
    # largest member leaves (`keep_members` records it here), so its checkpoints rebuild.
    latent_width: int | None = None

    def __post_init__(self) -> None:
        if not self.members:
            raise ValueError("a fused group needs at least one member")
        self.members = [CONFIG_CLASSES[self.model](**m) if isinstance(m, dict) else m
                        for m in self.members]
        model = self.model
        if not all(isinstance(m, CONFIG_CLASSES[model]) for m in self.members):
            raise ValueError("all members of a fused group must be configs of the same model")
        shared = [f.name for f in fields(CONFIG_CLASSES[model]) if f.name not in MEMBER_FIELDS[model]]
        for name in shared:
            values = {getattr(m, name) for m in self.members}
            if len(values) > 1:
                raise ValueError(f"members of a fused group must share {name!r} (it fixes the "
                                 f"network or the data), got {sorted(values)}")
        largest = max(m.latent_dim for m in self.members)
        if self.latent_width is not None and self.latent_width < largest:
            raise ValueError(f"latent_width {self.latent_width} is smaller than the members' "
                             f"largest latent_dim {largest}")

    @property
    def model(self) -> str:
        first = self.members[0]
        if isinstance(first, dict):  # before __post_init__ converted it: VAE configs have 'lr'
            return "vae" if "lr" in first else "gan"
        return "vae" if isinstance(first, VAEConfig) else "gan"

    def __len__(self) -> int:
        return len(self.members)


def build_members(build, cfgs: list, seed: int) -> list:
    """Each member's standalone module, initialised exactly as a standalone run with `seed` would
    (`Trainer.create` seeds, then the task builds its model)."""
    members = []
    for cfg in cfgs:
        torch.manual_seed(seed)
        members.append(build(cfg))
    return members


def preserved_rng(device: torch.device) -> AbstractContextManager:
    """The global random state (the CPU's, and the device's on CUDA) restored on exit: members
    built for a running group (`build_members` seeds) leave the group's own draws, its noise and
    dropout masks, where they were instead of rewinding them to the seed's start."""
    cuda = [device.index if device.index is not None else torch.cuda.current_device()] \
        if device.type == "cuda" else []
    return torch.random.fork_rng(devices=cuda)


class MemberStatus(nn.Module):
    """Which members still train, as buffers, so checkpoints carry them with the weights."""

    def __init__(self, num_members: int):
        super().__init__()
        self.register_buffer("active", torch.ones(num_members, dtype=torch.bool))
        self.register_buffer("diverged_step", torch.full((num_members,), -1, dtype=torch.long))
        self.register_buffer("steps", torch.zeros((), dtype=torch.long))  # optimizer steps so far

    def mark(self, loss: torch.Tensor) -> torch.Tensor:
        """Deactivate members whose loss is not finite (no device sync); returns the new mask."""
        finite = torch.isfinite(loss)
        newly = self.active & ~finite
        self.diverged_step.copy_(torch.where(newly, self.steps, self.diverged_step))
        self.active &= finite
        return self.active

    def report(self, metrics: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Inactive members read 0; NaN for everyone once no member is left (the loop stops)."""
        nan = torch.full((), float("nan"), device=self.active.device)
        alive = self.active.any()
        return {k: torch.where(alive, torch.where(self.active, v.float(), 0.0), nan)
                for k, v in metrics.items()}

    def as_list(self) -> list[dict]:
        """Per member: still training, and the step at which it diverged (-1: never)."""
        return [{"active": bool(a), "diverged_step": int(s)}
                for a, s in zip(self.active.tolist(), self.diverged_step.tolist())]


def regroup(module: nn.Module, change) -> None:
    """Replace every stacked parameter and buffer of `module` (member dimension first) by
    `change(name, tensor)`: an index keeps some members, a concatenation appends new ones. 0-dim
    buffers (step counters) are the group's and stay. Submodules that derive something from their
    tensors (`members_changed`) are told."""
    for prefix, sub in module.named_modules():
        for name, param in sub.named_parameters(recurse=False):
            new = change(f"{prefix}.{name}".lstrip("."), param.detach())
            setattr(sub, name, nn.Parameter(new, param.requires_grad))
        for name, buffer in sub.named_buffers(recurse=False):
            if buffer.dim() > 0:
                setattr(sub, name, change(f"{prefix}.{name}".lstrip("."), buffer))
        if hasattr(sub, "members_changed"):
            sub.members_changed()


def keep_module_members(module: nn.Module, index: torch.Tensor) -> None:
    """Keep the members `index` of every stacked tensor in `module`."""
    regroup(module, lambda name, tensor: tensor[index])


def add_module_members(module: nn.Module, new: nn.Module) -> None:
    """Append the members of `new` (a module of the same class and shapes, built for the new
    members alone) to every stacked tensor in `module`, after its own."""
    if [type(m) for m in module.modules()] != [type(m) for m in new.modules()]:
        raise ValueError(f"cannot add the members of a {type(new).__name__} to a {type(module).__name__}")
    added = {**dict(new.named_parameters()), **dict(new.named_buffers())}
    regroup(module, lambda name, tensor: torch.cat([tensor, added[name].detach().to(tensor)]))


class GroupMembers:
    """Changing a group's members between steps: members that ended (stopped early, diverged)
    leave and stop costing compute; fresh ones take their slots.

    A task provides `build_modules` (its modules for some members alone, keyed as `modules`),
    `adam_settings` (their optimizers' coefficients, keyed as `optimizers`), `optimized` and
    FIXED_NOISE (the attribute holding every member's fixed noise [K, NUM_FIXED_SAMPLES, L])."""

    FIXED_NOISE: str

    def update(self, x: torch.Tensor, *noise) -> dict[str, torch.Tensor]:
        """The plain task's step for every active member (the group's step count first: a member
        that diverges in it records it)."""
        self.status.steps += 1
        return super().update(x, *noise)

    def descend(self, optimizer: StackedAdam, loss: torch.Tensor, inputs: list | None = None) -> None:
        """Every active member's step down its own loss (`loss` [K]). A member whose loss is not
        finite is marked inactive on the spot (no device sync), out of the sum and of the step.
        The sum of the members' means: each member's gradient is its standalone gradient."""
        active = self.status.mark(loss.detach())
        optimizer.zero_grad()
        torch.where(active, loss, 0.0).sum().backward(inputs=inputs)
        optimizer.step(active)

    def reported(self, metrics: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return self.status.report(metrics)

    def test(self) -> dict:
        raise NotImplementedError("a fused group's members are measured on the test split one by "
                                  "one, as the models they export (sweeps/held_out.py)")

    @property
    def latent_width(self) -> int:
        """L, the padded latent size: the members' largest, or the width the group kept."""
        return self.cfg.latent_width or max(m.latent_dim for m in self.cfg.members)

    def build_optimizers(self, members: list) -> None:
        """One StackedAdam per optimized module, as `optimizers` and as its own attribute."""
        settings = self.adam_settings(members)
        self.optimizers = {}
        for optimizer_name, module in self.optimized():
            self.set_optimizer(optimizer_name, StackedAdam(module.parameters(), *settings[optimizer_name]))

    def set_optimizer(self, optimizer_name: str, optimizer: StackedAdam) -> None:
        # A new object, never one changed in place: a GraphedStep re-captures when they change.
        self.optimizers[optimizer_name] = optimizer
        setattr(self, optimizer_name, optimizer)

    def padded_fixed_noise(self, members: list, seed: int) -> torch.Tensor:
        """The members' fixed noise (each its standalone run's from `seed`), padded to [K', N, L]."""
        codes = [fixed_noise(seed, m.latent_dim, self.device) for m in members]
        return stacked(codes, (NUM_FIXED_SAMPLES, self.latent_width))

    def keep_members(self, keep: list[int]) -> None:
        """Keep only the members `keep` (indices into the current members), in that order. The
        kept members continue exactly where they were; from then on the group draws its noise
        and dropout masks for fewer members, so their random streams differ from an unshrunk
        group's (a valid run, not the same run)."""
        index = torch.tensor(keep, device=self.device)
        # The padding stays as wide as it was (the members' noise keeps its shape)
        self.cfg.latent_width = self.latent_width
        for module in self.modules.values():
            keep_module_members(module, index)
        for optimizer_name, module in self.optimized():
            kept = self.optimizers[optimizer_name].keep_members(index, module.parameters())
            self.set_optimizer(optimizer_name, kept)
        self.cfg.members[:] = [self.cfg.members[k] for k in keep]
        self.num_members = len(keep)
        setattr(self, self.FIXED_NOISE, getattr(self, self.FIXED_NOISE)[index])

    def add_members(self, cfgs: list[VAEConfig | GANConfig], seed: int) -> None:
        """Append fresh members, one per config of `cfgs`, in order: indices num_members to
        num_members + len(cfgs) - 1. The members already there train on untouched (weights,
        BatchNorm statistics, Adam moments and step counts).

        Each new member starts exactly as its standalone model trained from `seed` would: its
        weights drawn as `build_members(build, [cfg], seed)` draws them (the constructor's
        build), fresh BatchNorm statistics, its own dropout p, lr and betas, zero Adam moments and
        its own Adam step count from 0, active (diverged_step -1; should it diverge, the step
        recorded is the group's count, as for everyone), and its standalone fixed noise
        `fixed_noise(seed, latent_dim)`, padded.
        The global random state is left as it was (`preserved_rng`); as after `keep_members`, the
        group then draws its noise and dropout masks for more members, so the old members' random
        streams differ from an ungrown group's.

        The new members must share the group's shared fields (those outside MEMBER_FIELDS), and
        each latent_dim must be at most the group's padded latent width (a group never changes
        it): ValueError otherwise, before anything changed. The width is recorded in
        cfg.latent_width and `cfg.members` extended, so a checkpoint rebuilds the grown group
        from `FusedConfig(members, latent_width=...)` (a task built from its train seed: the
        fixed noise is not in the checkpoint, so pass that seed here to keep a resume's sample
        grids the same)."""
        if not cfgs:
            return
        new = self.checked_new_members(cfgs)
        with preserved_rng(self.device):
            modules = self.build_modules(new, seed, self.latent_width)
        for name, module in self.modules.items():
            add_module_members(module, modules[name])
        settings = self.adam_settings(new)
        for optimizer_name, module in self.optimized():
            lr, betas = settings[optimizer_name]
            grown = self.optimizers[optimizer_name].add_members(module.parameters(), lr, betas)
            self.set_optimizer(optimizer_name, grown)
        fixed = torch.cat([getattr(self, self.FIXED_NOISE), self.padded_fixed_noise(new, seed)])
        setattr(self, self.FIXED_NOISE, fixed)
        self.cfg.latent_width = self.latent_width
        self.cfg.members.extend(new)
        self.num_members = len(self.cfg.members)

    def checked_new_members(self, cfgs: list) -> list:
        """`cfgs` as configs (dicts converted), once they fit the group: FusedConfig's checks of
        the whole member list (same model, shared fields), and the latent width."""
        width = self.latent_width
        new = FusedConfig([*self.cfg.members, *cfgs]).members[self.num_members:]
        too_wide = max(m.latent_dim for m in new)
        if too_wide > width:
            raise ValueError(
                f"a new member's latent_dim {too_wide} is larger than the group's padded latent width "
                f"{width}: a group keeps its width (its checkpoints rebuild with "
                f"FusedConfig(latent_width={width})); add the member to a group of width >= "
                f"{too_wide}, or build the groups with latent_width set to the largest latent_dim "
                f"searched")
        return new


class FusedVAETask(GroupMembers, VAETask):
    """VAETask's step, validation and figures, for every member at once."""

    name = "fused-vae"
    FIXED_NOISE = "fixed_z"

    def __init__(self, cfg: FusedConfig, data: ImageData, device: torch.device, train_cfg,
                 autocast, scorer=None):
        self.cfg, self.num_members = cfg, len(cfg)
        self.data, self.device, self.autocast = data, device, autocast
        self.binarize = cfg.members[0].binarize
        self.modules = self.build_modules(cfg.members, train_cfg.seed, cfg.latent_width)
        self.model, self.status = self.modules["model"], self.modules["members"]
        self.build_optimizers(cfg.members)
        self.fixed_z = self.padded_fixed_noise(cfg.members, train_cfg.seed)
        self._train_loss = self._loss  # eager (on a GPU the whole step is one CUDA graph)
        # As the standalone task's: the same images, the same fixed binarization.
        self.test_targets = vae_test_targets(data, self.binarize, device)
        self.val_targets = vae_targets(data.val_images, self.binarize, device)

    def build_modules(self, members: list[VAEConfig], seed: int,
                      latent_width: int | None) -> dict[str, nn.Module]:
        """The modules of a group of `members` alone, each as its standalone VAE starts from `seed`."""
        standalone = build_members(VAE.from_config, members, seed)
        model = FusedVAE(standalone, [m.dropout for m in members], latent_width).to(self.device)
        return {"model": model, "members": MemberStatus(len(members)).to(self.device)}

    @staticmethod
    def adam_settings(members: list[VAEConfig]) -> dict[str, tuple]:
        """Each optimizer's (lr, betas) for `members`: torch.optim.Adam's default betas, as VAETask."""
        return {"optimizer": ([m.lr for m in members], ([0.9] * len(members), [0.999] * len(members)))}

    def optimized(self):
        return [("optimizer", self.model)]

    def binarized(self, x: torch.Tensor) -> torch.Tensor:
        # Each member draws its own binarization of the shared images, as its standalone run would.
        return torch.bernoulli(x.expand(self.num_members, *x.shape))


class FusedGANTask(GroupMembers, GANTask):
    """GANTask's step and figures for every member at once; the real batch is shared, each member
    draws its own noise."""

    name = "fused-gan"
    FIXED_NOISE = "fixed_h"
    memory_format = torch.contiguous_format  # on CUDA the member convolutions go channels-last

    def __init__(self, cfg: FusedConfig, data: ImageData, device: torch.device, train_cfg,
                 autocast, scorer=None):
        self.cfg, self.num_members = cfg, len(cfg)
        self.data, self.device, self.autocast = data, device, autocast
        # Scored against the validation split every evaluation (as the standalone task).
        self.val_scorer = scorer.with_reference(to_unit_interval(data.val_images)) if (
            scorer is not None and len(data.val_images)) else None
        self.eval_samples = train_cfg.eval_samples
        self.modules = self.build_modules(cfg.members, train_cfg.seed, cfg.latent_width)
        self.generator, self.discriminator = self.modules["generator"], self.modules["discriminator"]
        self.status = self.modules["members"]
        self.build_optimizers(cfg.members)
        self.fixed_h = self.padded_fixed_noise(cfg.members, train_cfg.seed)
        # Eager (on a GPU the whole step is one CUDA graph).
        self._generate, self._d_loss, self._g_loss = (self.generator, self._discriminator_loss,
                                                      self._generator_loss)

    def build_modules(self, members: list[GANConfig], seed: int,
                      latent_width: int | None) -> dict[str, nn.Module]:
        """The modules of a group of `members` alone, each as its standalone GAN starts from `seed`."""
        # A standalone GANTask builds G then D right after seeding: the same order here.
        pairs = build_members(lambda m: (Generator(m.latent_dim), Discriminator(m.dropout)), members, seed)
        generator = FusedGenerator([g for g, _ in pairs], latent_width)
        discriminator = FusedDiscriminator([d for _, d in pairs], [m.dropout for m in members])
        return {"generator": generator.to(self.device), "discriminator": discriminator.to(self.device),
                "members": MemberStatus(len(members)).to(self.device)}

    @staticmethod
    def adam_settings(members: list[GANConfig]) -> dict[str, tuple]:
        """Each optimizer's (lr, betas) for `members`: G's and D's own lr, the same betas."""
        betas = ([m.beta1 for m in members], [m.beta2 for m in members])
        return {"opt_g": ([m.lr_g for m in members], betas), "opt_d": ([m.lr_d for m in members], betas)}

    def optimized(self):
        return [("opt_g", self.generator), ("opt_d", self.discriminator)]

    def noise(self, n: int) -> torch.Tensor:
        return torch.randn(self.num_members, n, self.generator.latent_dim, device=self.device)

    def evaluate(self, epoch: int, last: bool) -> dict[str, list[float]]:
        """Every member's validation scores, its samples scored in one classifier pass for the
        whole group. Every member gets the same noise (each uses its own leading coordinates)."""
        if self.val_scorer is None:
            return {}
        images = generated_images(lambda h: self.generate(h.expand(self.num_members, -1, -1)),
                                  self.generator.latent_dim, self.eval_samples, self.device, dim=1)
        per_member = self.val_scorer.score_groups(images, value_range=(0.0, 1.0))
        return {f"val_{key}": [m[key] for m in per_member] for key in per_member[0]}


FUSED_TASKS = {"fused-vae": (FusedConfig, FusedVAETask), "fused-gan": (FusedConfig, FusedGANTask)}
