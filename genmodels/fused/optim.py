"""Adam over stacked parameters, with each member's own learning rate and betas.

`torch.optim.Adam` takes one scalar lr per parameter group; a fused group needs K of them on every
stacked tensor. `StackedAdam` applies, member by member, exactly the arithmetic of
`torch.optim.Adam` (Kingma & Ba 2015, Algorithm 1; no weight decay, no amsgrad):

    m = beta1 * m + (1 - beta1) * g            v = beta2 * v + (1 - beta2) * g^2
    p = p - lr / (1 - beta1^t) * m / (sqrt(v) / sqrt(1 - beta2^t) + eps)

Speed: the tiny models have dozens of small tensors, and one Adam step over each of them would be
a dozen kernel launches per tensor. So the optimizer moves every parameter (and its gradient) into
one buffer of shape [K, N], member k's row holding all N of its numbers, and steps that buffer: on
a GPU all of it at once (about fifteen launches per step whatever the number of tensors), on a CPU
in cache-sized blocks of columns. Each parameter [K, ...] is a strided view of some columns (member
k's slice of it stays contiguous), so every per-member coefficient is a [K, 1] column that
broadcasts over the rows: no per-element index.

`step(active)` leaves inactive members' parameters *and* moments untouched (`torch.where`, so a
NaN gradient of a diverged member never leaks into its state or anyone else's). With every member
active it updates in place, as `torch.optim.Adam` does; a GPU step always takes the masked path,
since asking whether all are active would wait for the device (and cannot be captured in a graph).
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable

import torch

ADAM_EPS = 1e-8  # torch.optim.Adam's default

# The gradients are strided views of the gradient buffer, laid out like their parameters on
# purpose; autograd's contract wants them contiguous and would warn once per process.
warnings.filterwarnings("ignore", message="grad and param do not obey the gradient layout contract")


# On a CPU the step runs over blocks of columns, each buffer's block about this size, so that the
# dozen passes of one block stay in cache instead of streaming whole buffers (16 VAE members make
# 80 MB per buffer) from memory a dozen times. Measured on a 2-core EPYC (bench/RESULTS.md): 1 MiB
# blocks made a fused VAE step 1.5x faster than whole buffers; 256 KiB and 2 MiB were slower.
CPU_BLOCK_BYTES = 1 << 20


def column_blocks(flat: torch.Tensor) -> list[slice]:
    """The column ranges one step goes through: the whole buffer at once on a GPU (fewest
    launches, and what a CUDA graph captures), cache-sized blocks on a CPU."""
    if flat.device.type != "cpu":
        return [slice(None)]
    columns = max(1, CPU_BLOCK_BYTES // (flat.element_size() * flat.shape[0]))
    return [slice(start, start + columns) for start in range(0, flat.shape[1], columns)]


class StackedAdam:
    def __init__(self, params: Iterable[torch.nn.Parameter], lr: list[float],
                 betas: tuple[list[float], list[float]], eps: float = ADAM_EPS):
        self.params = list(params)
        first = self.params[0]
        device = first.device
        self.lr = torch.tensor(lr, dtype=torch.float64, device=device)
        self.beta1 = torch.tensor(betas[0], dtype=torch.float64, device=device)
        self.beta2 = torch.tensor(betas[1], dtype=torch.float64, device=device)
        num_members = first.shape[0]
        if not (len(self.lr) == len(self.beta1) == len(self.beta2) == num_members):
            raise ValueError("StackedAdam needs one lr, beta1 and beta2 per member")
        self.eps = eps
        # The step count lives on the device: a step never reads it back to the host, so the
        # whole step can be captured in a CUDA graph (genmodels.graphs) and replayed.
        self.steps = torch.zeros((), dtype=torch.float64, device=device)
        # One [K, N] buffer for the weights and one for the gradients; parameters become views.
        self.sizes = [p[0].numel() for p in self.params]
        self.flat = torch.cat([p.detach().reshape(num_members, -1) for p in self.params], dim=1)
        self.flat_grad = torch.zeros_like(self.flat)
        for p, weight, grad in zip(self.params, self._per_param(self.flat), self._per_param(self.flat_grad)):
            p.data = weight
            p.grad = grad  # backward accumulates into it in place
        self.exp_avg = torch.zeros_like(self.flat)
        self.exp_avg_sq = torch.zeros_like(self.flat)
        # Coefficients computed in float64 and rounded once, as Adam's Python floats are.
        self.one_minus_beta1 = self._column(1 - self.beta1)
        self.beta2_column = self._column(self.beta2)
        self.one_minus_beta2 = self._column(1 - self.beta2)
        self.column_blocks = column_blocks(self.flat)

    def _column(self, per_member: torch.Tensor) -> torch.Tensor:
        """A [K] float64 coefficient as a [K, 1] column of the buffer's dtype."""
        return per_member.to(self.flat.dtype).unsqueeze(1)

    def _per_param(self, flat: torch.Tensor) -> list[torch.Tensor]:
        """The [K, N] buffer `flat` cut into views shaped like the parameters."""
        return [chunk.view(p.shape) for chunk, p in zip(flat.split(self.sizes, dim=1), self.params)]

    def zero_grad(self) -> None:
        self.flat_grad.zero_()

    @torch.no_grad()
    def step(self, active: torch.Tensor | None = None) -> None:
        """One Adam step for every member (only the `active` ones [K] bool, when given)."""
        if active is not None and self.flat.device.type == "cpu" and bool(active.all()):
            active = None  # nothing to freeze, and on a CPU asking costs no device sync
        self.steps += 1
        step_size = self._column(self.lr / (1 - self.beta1 ** self.steps))
        correction2_sqrt = self._column((1 - self.beta2 ** self.steps).sqrt())
        keep = None if active is None else active.unsqueeze(1)
        for columns in self.column_blocks:
            g, m, v, p = (t[:, columns] for t in (self.flat_grad, self.exp_avg, self.exp_avg_sq, self.flat))
            if keep is None:
                self._update(g, m, v, p, step_size, correction2_sqrt)
            else:  # out of place, so that a frozen member's old state is kept
                new = [m.clone(), v.clone(), p.clone()]
                self._update(g, *new, step_size, correction2_sqrt)
                for old, value in zip((m, v, p), new):
                    torch.where(keep, value, old, out=old)

    def _update(self, g: torch.Tensor, m: torch.Tensor, v: torch.Tensor, p: torch.Tensor,
                step_size: torch.Tensor, correction2_sqrt: torch.Tensor) -> None:
        """Adam's in-place update of the moments m, v and weights p from gradients g."""
        m.lerp_(g, self.one_minus_beta1)
        v.mul_(self.beta2_column).addcmul_(self.one_minus_beta2 * g, g)  # Adam's (1 - beta2) * g * g
        denom = v.sqrt().div_(correction2_sqrt).add_(self.eps)
        p.sub_(torch.div(m, denom, out=denom).mul_(step_size))  # Adam's addcdiv_(m, denom, -step_size)

    def keep_members(self, index: torch.Tensor, params: Iterable[torch.nn.Parameter]) -> StackedAdam:
        """A new optimizer over `params` (the module's after `keep_module_members`) with the
        members `index` of this one: their coefficients and moments, nothing of the others."""
        kept = StackedAdam(params, self.lr[index].tolist(),
                           (self.beta1[index].tolist(), self.beta2[index].tolist()), self.eps)
        kept.steps.copy_(self.steps)
        kept.exp_avg.copy_(self.exp_avg[index])
        kept.exp_avg_sq.copy_(self.exp_avg_sq[index])
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
