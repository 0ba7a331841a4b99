"""Members' work side by side on a GPU: K small jobs spread over CUDA streams, then joined.

One member of a fused group is a small job for a GPU: its share of the optimizer step is about 20
thread blocks of the fused Adam kernel, and one member's convolution at batch 128 onto a 7 x 7 map
is a few dozen. Queued one after another on one stream, each leaves most of the device's 132 SMs
idle. On side streams, several members' kernels run at once (on an H200 the optimizer step of a
64-member VAE group took 0.75 ms on 16 streams against 2.54 ms on one, docs/benchmarks.md).

`SideStreams.run(jobs)` forks: every side stream first waits for everything queued on the current
stream, job i runs on side stream i mod S, and the current stream then waits for all of them. So
the results are those of running the jobs in order on one stream, and the pattern can be captured
in a CUDA graph (`genmodels.graphs`): a captured fork/join becomes parallel branches of the graph.
Autograd runs each job's backward on the stream its forward ran on, so the backward pass is spread
the same way. A tensor a job allocates on a side stream and the current stream consumes is safe to
free afterwards: the next work on any side stream is queued behind a new fork, i.e. behind that
consumer. On a CPU (or with fewer than two streams) the jobs just run in order.

The other direction needs care. A tensor made on the current stream and handed to a job (a
member's weights copied channels-last, its dropout mask, its slice of an input) is often saved for
the job's backward, which runs on the side stream with no fork before it. When autograd frees the
tensor after that backward is queued, PyTorch's caching allocator would hand its memory to the
next allocation on the current stream at once, while the side stream may not have read it yet.
A fused GAN whose members each ran their whole network on their own stream hit exactly this on
an H200 (two eager runs of the same seed differed by 0.74 relative in their losses). So `run`
marks every tensor a job is handed (through `functools.partial`, lists and tuples) as used on the job's stream
(`Tensor.record_stream`): the allocator then reuses its memory only once that stream has caught up
with the moment it was freed. Tensors a job makes for itself need no mark, and neither do those
only its forward reads (the join orders every later allocation after it): callers that know which
those are say so (`marked`), because under a CUDA graph a marked tensor's memory stays unused until
the capture ends.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from functools import partial

import torch

# Side streams per fork. 16 kept a few hundred of the optimizer's blocks in flight on an H200,
# enough to fill it (8 streams: 0.80 ms, 16: 0.75 ms for the step above).
SIDE_STREAMS = 16


class SideStreams:
    def __init__(self, device: torch.device, count: int = SIDE_STREAMS):
        self.device = torch.device(device)
        # torch.cuda.Stream() hands out streams from PyTorch's per-device pool (32 per priority),
        # so making them is cheap, and another SideStreams may get some of the same ones: safe,
        # since every fork waits for the current stream first.
        self.streams = ([torch.cuda.Stream(self.device) for _ in range(count)]
                        if self.device.type == "cuda" and count > 1 else [])

    def __len__(self) -> int:
        return len(self.streams)

    def run(self, jobs: Sequence[Callable[[], object]],
            marked: Sequence[Iterable[torch.Tensor]] | None = None) -> list:
        """Each job's result, in order; on a GPU the jobs run on the side streams, side by side.
        `marked[i]` are the tensors to mark as used on job i's stream (see the module's
        docstring): by default all it was handed (`handed_tensors`). A caller that knows better
        passes fewer, or none where no backward reads anything handed after the join: under a
        CUDA graph a marked tensor's memory is not reused until the capture ends."""
        if not self.streams:
            return [job() for job in jobs]
        main = torch.cuda.current_stream(self.device)
        for stream in self.streams:  # the side streams start after everything queued so far
            stream.wait_stream(main)
        results = []
        marked = [handed_tensors(job) for job in jobs] if marked is None else marked
        for i, (job, tensors) in enumerate(zip(jobs, marked, strict=True)):
            stream = self.streams[i % len(self.streams)]
            with torch.cuda.stream(stream):
                for tensor in tensors:
                    if tensor.is_cuda:
                        tensor.record_stream(stream)
                results.append(job())
        for stream in self.streams:  # and everything queued after waits for them
            main.wait_stream(stream)
        return results


def handed_tensors(job: object) -> Iterator[torch.Tensor]:
    """The tensors a job was handed: itself if it is one, else those bound in a `functools.partial`
    (its function, positional and keyword arguments) or held in a list or tuple, at any depth."""
    if isinstance(job, torch.Tensor):
        yield job
    elif isinstance(job, partial):
        for part in (job.func, *job.args, *job.keywords.values()):
            yield from handed_tensors(part)
    elif isinstance(job, (list, tuple)):
        for part in job:
            yield from handed_tensors(part)


def side_streams_on(current: SideStreams | None, device: torch.device) -> SideStreams:
    """`current`, or new side streams if there are none yet or they belong to another device (a
    module moved since): how a layer that runs members side by side keeps its streams."""
    if current is None or current.device != torch.device(device):
        return SideStreams(device)
    return current
