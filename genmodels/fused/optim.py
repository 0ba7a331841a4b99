"""Adam over stacked parameters, with each member's own learning rate and betas.

`torch.optim.Adam` takes one scalar lr per parameter group; a fused group needs K of them on every
stacked tensor. `StackedAdam` applies, member by member, exactly the arithmetic of
`torch.optim.Adam` (Kingma & Ba 2015, Algorithm 1; no weight decay, no amsgrad):

    m = beta1 * m + (1 - beta1) * g            v = beta2 * v + (1 - beta2) * g^2
    p = p - lr / (1 - beta1^t) * m / (sqrt(v) / sqrt(1 - beta2^t) + eps)

Speed: the tiny models have dozens of small tensors, and one Adam step over each of them would be
a dozen kernel launches per tensor. So the optimizer moves every parameter (and its gradient) into
one flat buffer, each parameter a contiguous view of it, and steps the whole buffer at once: about
fifteen launches per step whatever the number of tensors. Each element's member is known from a
fixed index, which gathers the per-member coefficients.

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
        first = self.params[0]
        device, dtype = first.device, first.dtype
        self.lr = torch.tensor(lr, dtype=torch.float64, device=device)
        self.beta1 = torch.tensor(betas[0], dtype=torch.float64, device=device)
        self.beta2 = torch.tensor(betas[1], dtype=torch.float64, device=device)
        if not (len(self.lr) == len(self.beta1) == len(self.beta2) == first.shape[0]):
            raise ValueError("StackedAdam needs one lr, beta1 and beta2 per member")
        self.eps = eps
        # The step count lives on the device: a step never reads it back to the host, so the
        # whole step can be captured in a CUDA graph (genmodels.graphs) and replayed.
        self.steps = torch.zeros((), dtype=torch.float64, device=device)
        # One flat buffer for the weights and one for the gradients; parameters become views.
        sizes = [p.numel() for p in self.params]
        self.flat = torch.cat([p.detach().reshape(-1) for p in self.params])
        self.flat_grad = torch.zeros_like(self.flat)
        self.views = []
        for p, chunk, grad in zip(self.params, self.flat.split(sizes), self.flat_grad.split(sizes)):
            p.data = chunk.view_as(p)
            p.grad = grad.view_as(p)  # backward accumulates into it in place
            self.views.append((p.shape, p.shape[0]))
        self.member = torch.cat([torch.arange(p.shape[0], device=device).repeat_interleave(p[0].numel())
                                 for p in self.params])  # element -> its member
        self.exp_avg = torch.zeros_like(self.flat)
        self.exp_avg_sq = torch.zeros_like(self.flat)
        # Coefficients computed in float64 and rounded once, as Adam's Python floats are.
        self.one_minus_beta1 = (1 - self.beta1).to(dtype)[self.member]
        self.beta2_flat = self.beta2.to(dtype)[self.member]
        self.one_minus_beta2 = (1 - self.beta2).to(dtype)[self.member]
        self.sizes = sizes

    def zero_grad(self) -> None:
        self.flat_grad.zero_()

    @torch.no_grad()
    def step(self, active: torch.Tensor | None = None) -> None:
        """One Adam step for every member (only the `active` ones [K] bool, when given)."""
        self.steps += 1
        dtype = self.flat.dtype
        step_size = (self.lr / (1 - self.beta1 ** self.steps)).to(dtype)[self.member]
        correction2_sqrt = (1 - self.beta2 ** self.steps).sqrt().to(dtype)[self.member]
        g, m, v = self.flat_grad, self.exp_avg, self.exp_avg_sq
        new_m = torch.lerp(m, g, self.one_minus_beta1)  # Adam's m.lerp_(g, 1 - beta1)
        new_v = v * self.beta2_flat + self.one_minus_beta2 * g * g
        denom = new_v.sqrt() / correction2_sqrt + self.eps
        new_p = self.flat - step_size * new_m / denom
        if active is None:
            m.copy_(new_m), v.copy_(new_v), self.flat.copy_(new_p)
        else:
            keep = active[self.member]
            m.copy_(torch.where(keep, new_m, m))
            v.copy_(torch.where(keep, new_v, v))
            self.flat.copy_(torch.where(keep, new_p, self.flat))

    def _per_param(self, flat: torch.Tensor) -> list[torch.Tensor]:
        return [chunk.view(shape) for chunk, (shape, _) in zip(flat.split(self.sizes), self.views)]

    def keep_members(self, index: torch.Tensor, params: Iterable[torch.nn.Parameter]) -> StackedAdam:
        """A new optimizer over `params` (the module's after `keep_module_members`) with the
        members `index` of this one: their coefficients and moments, nothing of the others."""
        kept = StackedAdam(params, self.lr[index].tolist(),
                           (self.beta1[index].tolist(), self.beta2[index].tolist()), self.eps)
        kept.steps.copy_(self.steps)
        for mine, theirs in ((self.exp_avg, kept.exp_avg), (self.exp_avg_sq, kept.exp_avg_sq)):
            torch.cat([t[index].reshape(-1) for t in self._per_param(mine)], out=theirs)
        return kept

    def state_dict(self) -> dict:
        return {"steps": int(self.steps.item()),
                "exp_avg": [t.clone() for t in self._per_param(self.exp_avg)],
                "exp_avg_sq": [t.clone() for t in self._per_param(self.exp_avg_sq)],
                "lr": self.lr.tolist(), "beta1": self.beta1.tolist(), "beta2": self.beta2.tolist(),
                "eps": self.eps}

    def load_state_dict(self, state: dict) -> None:
        if len(state["exp_avg"]) != len(self.params):
            raise ValueError("optimizer state is for another set of parameters")
        self.steps.fill_(state["steps"])
        for mine, saved in zip(self._per_param(self.exp_avg) + self._per_param(self.exp_avg_sq),
                               state["exp_avg"] + state["exp_avg_sq"]):
            mine.copy_(saved)
