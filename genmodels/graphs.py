"""CUDA graphs for the training step: the whole step (forwards, backwards, optimizer steps, the
noise it draws) captured once and replayed for every batch.

These models are small: a VAE or GAN step is hundreds of short kernels, and on a GPU the time goes
to launching them from Python, not to running them (docs/benchmarks.md: the VAE at 1% of the H200's
peak). A replayed graph launches them all at once. Unlike `torch.compile(mode="reduce-overhead")`
nothing is recompiled: the same eager kernels run, so there is no compilation cost per trial.

    step = GraphedStep(task)       # on a CUDA device
    metrics = step(batch)          # same result as task.train_step(batch)

What capture needs, and how it is met:
- Static shapes: the loop drops the last partial batch, so every batch of a run has one shape.
  The batch is copied into a fixed input tensor before each replay; the returned metrics are the
  graph's fixed output tensors, valid until the next call (the loop adds them up at once).
- No host syncs inside the step: the optimizers keep their step counts on the device
  (`capturable` Adam; `StackedAdam` always does), and divergence is checked between steps.
- Random numbers: CUDA's generator is graph-aware; each replay draws fresh noise and dropout
  masks, from the same stream an eager run draws from.
- Anything that replaces the tensors a graph holds (loading a checkpoint, shrinking a fused group,
  which builds new optimizers) needs a new capture: `Trainer` drops its GraphedStep on a load, and
  the step re-captures by itself when the task's optimizers are not the ones it captured.
"""

from __future__ import annotations

import torch

# Eager steps on a side stream before the capture (PyTorch's recipe for whole-network capture):
# cuBLAS/cuDNN handles, workspaces and the optimizers' state are created outside the graph.
# They are real training steps on real batches, like every other call.
WARMUP_STEPS = 3


def set_capturable(optimizers, capturable: bool, device: torch.device) -> None:
    """torch.optim optimizers: keep the step count on the device (capturable=True, what a graph
    needs) or on the host (the default, which a CPU resume of a GPU checkpoint needs)."""
    for optimizer in optimizers:
        if not isinstance(optimizer, torch.optim.Optimizer):
            continue  # StackedAdam: its step count is a device tensor already
        for group in optimizer.param_groups:
            if "capturable" in group:
                group["capturable"] = capturable
        for state in optimizer.state.values():
            step = state.get("step")
            if isinstance(step, torch.Tensor):
                state["step"] = step.to(device if capturable else "cpu", torch.float32)


class GraphedStep:
    """`task.train_step` as a CUDA graph: WARMUP_STEPS eager steps, then capture and replay."""

    def __init__(self, task):
        if task.device.type != "cuda":
            raise ValueError(f"CUDA graphs need a CUDA device, not {task.device}")
        self.task = task
        self._reset()

    def _reset(self) -> None:
        self.graph: torch.cuda.CUDAGraph | None = None
        self.eager_steps = 0
        self.optimizers = list(self.task.optimizers.values())
        set_capturable(self.optimizers, True, self.task.device)

    def __call__(self, batch: torch.Tensor) -> dict[str, torch.Tensor]:
        if list(self.task.optimizers.values()) != self.optimizers or (
                self.graph is not None and batch.shape != self.batch.shape):
            self._reset()  # a shrunk group (new optimizers and parameters), or a new batch size
        if self.eager_steps < WARMUP_STEPS:
            self.eager_steps += 1
            return self._side_stream_step(batch)
        if self.graph is None:
            self._capture(batch)
        self.batch.copy_(batch)
        self.graph.replay()
        return self.outputs

    def _side_stream_step(self, batch: torch.Tensor) -> dict[str, torch.Tensor]:
        stream = torch.cuda.Stream(self.task.device)
        stream.wait_stream(torch.cuda.current_stream(self.task.device))
        with torch.cuda.stream(stream):
            outputs = self.task.train_step(batch)
        torch.cuda.current_stream(self.task.device).wait_stream(stream)
        return outputs

    def _capture(self, batch: torch.Tensor) -> None:
        """Record one step; nothing runs until the first replay (the caller's, right after)."""
        self.batch = batch.clone()
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.outputs = self.task.train_step(self.batch)
