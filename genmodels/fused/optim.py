"""Adam over stacked parameters, with each member's own learning rate and betas.

`torch.optim.Adam` takes one scalar lr per parameter group; a fused group needs K of them on every
stacked tensor. `StackedAdam` keeps the per-member coefficients as [K, 1, ...] tensors that
broadcast over a parameter's member dimension and applies, member by member, exactly the arithmetic
of `torch.optim.Adam` (Kingma & Ba 2015, Algorithm 1; no weight decay, no amsgrad):

    m = beta1 * m + (1 - beta1) * g            v = beta2 * v + (1 - beta2) * g^2
    p = p - lr / (1 - beta1^t) * m / (sqrt(v) / sqrt(1 - beta2^t) + eps)

`step(active)` leaves inactive members' parameters *and* moments untouched (`torch.where`, so a
NaN gradient of a diverged member never leaks into its state or anyone else's).
"""

from __future__ import annotations

from collections.abc import Iterable

import torch

ADAM_EPS = 1e-8  # torch.optim.Adam's default


class StackedAdam:
    def __init__(self, params: Iterable[torch.nn.Parameter], lr: list[float],
                 betas: tuple[list[float], list[float]], eps: float = ADAM_EPS):
        self.params = list(params)
        device = self.params[0].device
        self.lr = torch.tensor(lr, dtype=torch.float64, device=device)
        self.beta1 = torch.tensor(betas[0], dtype=torch.float64, device=device)
        self.beta2 = torch.tensor(betas[1], dtype=torch.float64, device=device)
        if not (len(self.lr) == len(self.beta1) == len(self.beta2) == self.params[0].shape[0]):
            raise ValueError("StackedAdam needs one lr, beta1 and beta2 per member")
        self.eps = eps
        self.steps = 0
        self.exp_avg = [torch.zeros_like(p) for p in self.params]
        self.exp_avg_sq = [torch.zeros_like(p) for p in self.params]

    def zero_grad(self, set_to_none: bool = True) -> None:
        for p in self.params:
            p.grad = None

    def _per_member(self, values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """[K] coefficients shaped [K, 1, ...] to broadcast over `like`, in its dtype."""
        return values.to(like.dtype).view(-1, *[1] * (like.dim() - 1))

    @torch.no_grad()
    def step(self, active: torch.Tensor | None = None) -> None:
        """One Adam step for every member (only the `active` ones [K] bool, when given)."""
        self.steps += 1
        # Bias corrections in float64, as torch.optim.Adam computes them from Python floats.
        correction1 = 1 - self.beta1 ** self.steps
        correction2_sqrt = (1 - self.beta2 ** self.steps).sqrt()
        step_size = self.lr / correction1
        for p, m, v in zip(self.params, self.exp_avg, self.exp_avg_sq):
            if p.grad is None:
                continue
            g = p.grad
            # Coefficients computed in float64 and rounded once, as Adam's Python floats are.
            new_m = torch.lerp(m, g, self._per_member(1 - self.beta1, p))  # Adam's m.lerp_(g, 1 - beta1)
            new_v = v * self._per_member(self.beta2, p) + self._per_member(1 - self.beta2, p) * g * g
            denom = new_v.sqrt() / self._per_member(correction2_sqrt, p) + self.eps
            new_p = p - self._per_member(step_size, p) * new_m / denom
            if active is None:
                m.copy_(new_m), v.copy_(new_v), p.copy_(new_p)
            else:
                keep = active.view(-1, *[1] * (p.dim() - 1))
                m.copy_(torch.where(keep, new_m, m))
                v.copy_(torch.where(keep, new_v, v))
                p.copy_(torch.where(keep, new_p, p))

    def keep_members(self, index: torch.Tensor, params: Iterable[torch.nn.Parameter]) -> None:
        """Keep the members `index` (after `keep_members` of the module, whose new `params` these
        are, in the same order): their coefficients and moments, nothing of the others."""
        self.params = list(params)
        self.lr, self.beta1, self.beta2 = (t[index.to(t.device)] for t in (self.lr, self.beta1, self.beta2))
        self.exp_avg = [m[index] for m in self.exp_avg]
        self.exp_avg_sq = [v[index] for v in self.exp_avg_sq]

    def state_dict(self) -> dict:
        return {"steps": self.steps, "exp_avg": [t.clone() for t in self.exp_avg],
                "exp_avg_sq": [t.clone() for t in self.exp_avg_sq], "lr": self.lr.tolist(),
                "beta1": self.beta1.tolist(), "beta2": self.beta2.tolist(), "eps": self.eps}

    def load_state_dict(self, state: dict) -> None:
        if len(state["exp_avg"]) != len(self.params):
            raise ValueError("optimizer state is for another set of parameters")
        self.steps = state["steps"]
        for mine, saved in zip(self.exp_avg + self.exp_avg_sq, state["exp_avg"] + state["exp_avg_sq"]):
            mine.copy_(saved)
