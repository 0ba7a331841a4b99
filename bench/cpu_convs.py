"""The GAN's convolutions on a CPU: oneDNN (torch's F.conv2d / F.conv_transpose2d) against
`genmodels.convs`, layer by layer and for a whole training step, side by side in one process.

    python bench/cpu_convs.py                      # MNIST from ../shared/data, else tests/data
    python bench/cpu_convs.py --steps 4 --members 2

Imports torch and genmodels only.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout, installed or not

import genmodels.convs as convs  # noqa: E402
import genmodels.fused.layers as fused_layers  # noqa: E402
from bench.bench_fused import BATCH, build_task, training_data  # noqa: E402
from genmodels.gan import Discriminator, Generator  # noqa: E402

CHOICES = {
    "oneDNN": (lambda x, w, b=None, stride=1, padding=0, groups=1:
               F.conv2d(x, w, b, stride, padding, groups=groups),
               lambda x, w, b=None, stride=1, padding=0, output_padding=0, groups=1:
               F.conv_transpose2d(x, w, b, stride, padding, output_padding, groups)),
    "genmodels.convs": (convs.conv2d, convs.conv_transpose2d),
}


def use(choice: str) -> None:
    """Route the GAN's layers (standalone and fused) through one way of computing convolutions."""
    conv2d, conv_transpose2d = CHOICES[choice]
    convs.conv2d, convs.conv_transpose2d = conv2d, conv_transpose2d
    fused_layers.conv2d, fused_layers.conv_transpose2d = conv2d, conv_transpose2d


def seconds(fn, repeats: int) -> float:
    fn()  # warm-up
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - start) / repeats


def layer_inputs() -> list[tuple[str, torch.nn.Module, tuple[int, ...]]]:
    """Every convolution of D and G with the input shape it sees at the training batch size."""
    d, g = Discriminator(), Generator()
    d_convs = [m for m in d.features if isinstance(m, torch.nn.Conv2d)]
    g_convs = [m for m in g.deconv if isinstance(m, torch.nn.ConvTranspose2d)]
    d_inputs = [(1, 28), (64, 14), (128, 7), (256, 4)]  # (channels, size) into each (Table 3)
    g_inputs = [(512, 1), (256, 3), (128, 7), (64, 14)]  # Table 4
    rows = []
    for prefix, layers, inputs in (("D conv", d_convs, d_inputs), ("G deconv", g_convs, g_inputs)):
        for i, (layer, (channels, size)) in enumerate(zip(layers, inputs)):
            rows.append((f"{prefix} {i + 1}", layer, (BATCH, channels, size, size)))
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=4, help="timed GAN training steps per row")
    p.add_argument("--members", type=int, default=2, help="fused group size of the fused row (0: none)")
    p.add_argument("--data-dir", default=None)
    args = p.parse_args(argv)
    torch.manual_seed(0)
    print(f"CPU, {torch.get_num_threads()} threads; batch {BATCH}; forward + backward, ms")
    for name, layer, shape in layer_inputs():
        x = torch.randn(shape, requires_grad=True)

        def step(layer=layer, x=x):
            y = layer(x)
            y.backward(torch.ones_like(y))

        times = []
        for choice in CHOICES:
            use(choice)
            times.append(seconds(step, 5) * 1000)
        print(f"{name:<11} input {str(shape[1:]):<15} oneDNN {times[0]:7.1f}   genmodels.convs "
              f"{times[1]:7.1f}   {times[0] / times[1]:5.2f}x", flush=True)

    data = training_data(args.data_dir, torch.device("cpu"))
    batch = data.train_images[:BATCH]
    for k in [None] + ([args.members] if args.members else []):
        times = []
        for choice in CHOICES:
            use(choice)
            task = build_task("gan", k, data, torch.device("cpu"))
            times.append(seconds(lambda task=task: task.train_step(batch), args.steps))
        label = "GAN step" if k is None else f"fused K={k}"
        print(f"{label:<11} training step, s   oneDNN {times[0]:7.2f}   genmodels.convs {times[1]:7.2f}"
              f"   {times[0] / times[1]:5.2f}x", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
