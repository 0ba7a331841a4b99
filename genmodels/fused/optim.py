"""Adam over stacked parameters, with each member's own learning rate and betas.

`torch.optim.Adam` takes one scalar lr per parameter group; a fused group needs K of them on every
stacked tensor. `StackedAdam` runs, member by member, the kernel behind `torch.optim.Adam(fused=True)`
(`torch._fused_adam_`): Adam's arithmetic (Kingma & Ba 2015, Algorithm 1; no weight decay, no
amsgrad) in one pass over the weights, gradients and both moments,

    m = beta1 * m + (1 - beta1) * g            v = beta2 * v + (1 - beta2) * g^2
    p = p - lr / (1 - beta1^t) * m / (sqrt(v) / sqrt(1 - beta2^t) + eps)

with that member's lr and betas. Every parameter is stacked [K, ...], so member k's slice `p[k]`
of each parameter, gradient and moment is contiguous, and one call takes all of member k's slices:
K calls per step, whatever the number of tensors.

Speed (docs/benchmarks.md): on the CPU the fused kernel took 0.4x the time of the elementwise
version it replaced (a dozen passes over the buffers). On a GPU one call covers one member, about
20 thread blocks for a VAE, far too few to fill the device, so the K calls are spread over several
CUDA streams and run side by side (`genmodels.fused.streams`): on an H200 the step of a 64-member VAE
group took 0.75 ms on 16 streams against 2.54 ms on one, at the memory's bandwidth.

Each member has its own step count (`steps` [K], the t of the bias corrections): a member added to
a running group (`add_members`) starts from t = 0 as its standalone Adam would, while the others
count on.

`step(active)` leaves inactive members' parameters *and* moments untouched: their call gets the
kernel's `found_inf` flag (what `torch.amp.GradScaler` uses to skip a step), so the kernel returns
before reading the member's gradient, and a NaN of a diverged member never reaches its state or
anyone else's. The flag is a device tensor: the step never waits for the device, and it can be
captured in a CUDA graph (`genmodels.graphs`), streams included.
"""

from __future__ import annotations

from collections.abc import Iterable
from functools import partial

import torch

from genmodels.fused.streams import SIDE_STREAMS, SideStreams

ADAM_EPS = 1e-8  # torch.optim.Adam's default


class StackedAdam:
    def __init__(self, params: Iterable[torch.nn.Parameter], lr: list[float],
                 betas: tuple[list[float], list[float]], eps: float = ADAM_EPS,
                 streams: int = SIDE_STREAMS):
        self.params = list(params)
        self.lr, self.beta1, self.beta2 = list(lr), list(betas[0]), list(betas[1])
        num_members = self.params[0].shape[0]
        if not (len(self.lr) == len(self.beta1) == len(self.beta2) == num_members):
            raise ValueError("StackedAdam needs one lr, beta1 and beta2 per member")
        self.eps = eps
        device = self.params[0].device
        # Each member's step count lives on the device, as float32 (what the fused kernel reads):
        # a step never reads it back to the host, so the whole step can be captured in a CUDA graph.
        self.steps = torch.zeros(num_members, dtype=torch.float32, device=device)
        self.exp_avg = [torch.zeros_like(p) for p in self.params]
        self.exp_avg_sq = [torch.zeros_like(p) for p in self.params]
        # Member k's slices of the weights, moments and step count (a 0-dim view of `steps`; the
        # kernel takes one per tensor), in the lists one fused call takes (the gradients are new
        # tensors every step).
        self.members = [([p.data[k] for p in self.params], [m[k] for m in self.exp_avg],
                         [v[k] for v in self.exp_avg_sq], [self.steps[k]] * len(self.params))
                        for k in range(num_members)]
        self.stream_limit = streams  # what a grown or shrunk copy may use
        self.streams = SideStreams(device, min(streams, num_members))

    def zero_grad(self) -> None:
        """As torch.optim's default (set_to_none): backward then hands its gradients over instead
        of adding them into zeroed ones, a pass over every gradient saved (a fused VAE step 5-8%
        faster on an H200, docs/benchmarks.md)."""
        for p in self.params:
            p.grad = None

    @torch.no_grad()
    def step(self, active: torch.Tensor | None = None) -> None:
        """One Adam step for every member (only the `active` ones [K] bool, when given)."""
        self.steps += 1  # every member's: a frozen member never steps again, its count is moot
        skip = None if active is None else (~active).float()  # 1.0: the kernel leaves the member be
        grads = zip(*((torch.zeros_like(p) if p.grad is None else p.grad).unbind() for p in self.params))

        def member_step(k: int, member_grads: tuple[torch.Tensor, ...]) -> None:
            params, exp_avgs, exp_avg_sqs, steps = self.members[k]
            torch._fused_adam_(
                params, list(member_grads), exp_avgs, exp_avg_sqs, [], steps, lr=self.lr[k],
                beta1=self.beta1[k], beta2=self.beta2[k], weight_decay=0.0, eps=self.eps,
                amsgrad=False, maximize=False, found_inf=None if skip is None else skip[k])

        # No backward reads what the step is handed, so nothing outlives the join: no marks.
        jobs = [partial(member_step, k, g) for k, g in enumerate(grads)]
        self.streams.run(jobs, marked=[()] * len(jobs))

    @property
    def num_members(self) -> int:
        return len(self.lr)

    def keep_members(self, index: torch.Tensor, params: Iterable[torch.nn.Parameter]) -> StackedAdam:
        """A new optimizer over `params` (the module's after `keep_module_members`) with the
        members `index` of this one: their coefficients, moments and step counts, nothing of the
        others."""
        kept_members = index.tolist()
        kept = StackedAdam(params, [self.lr[k] for k in kept_members],
                           ([self.beta1[k] for k in kept_members], [self.beta2[k] for k in kept_members]),
                           self.eps, self.stream_limit)
        kept.steps.copy_(self.steps[index])
        for mine, theirs in zip(kept.exp_avg + kept.exp_avg_sq, self.exp_avg + self.exp_avg_sq):
            mine.copy_(theirs[index])
        return kept

    def add_members(self, params: Iterable[torch.nn.Parameter], lr: list[float],
                    betas: tuple[list[float], list[float]]) -> StackedAdam:
        """A new optimizer over `params` (the module's after `add_module_members`: this one's
        members first, then the new ones) with this one's members as they are (coefficients,
        moments, step counts) and new members of learning rates `lr` and `betas`, one each, that
        start as a fresh Adam does: zero moments, step count 0."""
        old = self.num_members
        grown = StackedAdam(params, [*self.lr, *lr], ([*self.beta1, *betas[0]], [*self.beta2, *betas[1]]),
                            self.eps, self.stream_limit)
        grown.steps[:old].copy_(self.steps)
        for mine, theirs in zip(grown.exp_avg + grown.exp_avg_sq, self.exp_avg + self.exp_avg_sq):
            mine[:old].copy_(theirs)
        return grown

    def state_dict(self) -> dict:
        return {"steps": self.steps.clone(),  # [K]: each member's count
                "exp_avg": [t.clone() for t in self.exp_avg],
                "exp_avg_sq": [t.clone() for t in self.exp_avg_sq],
                "lr": list(self.lr), "beta1": list(self.beta1), "beta2": list(self.beta2),
                "eps": self.eps}

    def load_state_dict(self, state: dict) -> None:
        """This optimizer's state from `state_dict()`."""
        if len(state["exp_avg"]) != len(self.params):
            raise ValueError("optimizer state is for another set of parameters")
        steps = state["steps"]
        if steps.shape != self.steps.shape:
            raise ValueError(f"optimizer state is for {len(steps)} members, not {self.num_members}")
        self.steps.copy_(steps)
        for mine, saved in zip(self.exp_avg + self.exp_avg_sq, state["exp_avg"] + state["exp_avg_sq"]):
            mine.copy_(saved)
