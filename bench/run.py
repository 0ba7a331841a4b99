"""The one speed harness: our training loop against the common PyTorch pipeline, the device's peak,
the cost of every test metric and the share of a default run spent training.

    python bench/run.py --quick                                   # CPU here: about a minute
    python bench/run.py --device cuda --quick --json bench/gpu.json
    python bench/run.py --device cuda --variants fp32,bf16,channels-last,bf16+channels-last,compile

Imports torch, torchvision and genmodels only (no Ray, Optuna or MLflow), so it runs on a bare GPU
machine. Sections, in order (each in the table and under its key in --json):
- peak: FLOP/s of a large matrix product on the device (fp32, and bf16 on CUDA), measured here;
- train: images/s of our loop (uint8 split on the device, batches by permutation, `Trainer.train_step`)
  for each --variants entry, and of the common pipeline (torchvision dataset + ToTensor + DataLoader
  + the same `task.update` step), their ratio, and the achieved FLOP/s against the peak. FLOPs per
  image are counted from the layers (Linear, Conv2d, ConvTranspose2d; x3 for forward + backward);
- eval: seconds to score 10,000 GAN samples (generation + classifier scores) and for each VAE
  metric (the per-epoch val_elbo, the final test_elbo on the whole split, the default test_iwae
  and K = 100);
- share: a short default run (`Trainer.fit`, default TrainConfig) and the share of its wall time
  that was training: sum of train_seconds / wall time of create + fit (a sweep trial) and of
  create + fit + test (a default `genmodels.train` run).
Warm-up steps are never timed; on CUDA every clock read follows torch.cuda.synchronize.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader
from torchvision.transforms import ToTensor

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # `python bench/run.py` from a checkout, without installing

from genmodels.classifier import ScoringCNN, build_cache, cache_path, load_cache, scorer_from_cache  # noqa: E402
from genmodels.data import DATASETS, iterate_batches, load_dataset  # noqa: E402
from genmodels.device import PRECISIONS, resolve_device  # noqa: E402
from genmodels.gan import Discriminator, GANConfig, Generator  # noqa: E402
from genmodels.loop import TrainConfig, Trainer  # noqa: E402
from genmodels.scores import MIN_SAMPLES  # noqa: E402
from genmodels.tasks import elbo_means, iwae_mean  # noqa: E402
from genmodels.vae import VAE, VAEConfig  # noqa: E402

# Data: --data-dir, else $GENSWEEP_DATA_DIR, else ./data, else the small committed subset in
# tests/data (numbers from it say so in the report's data line).
DATA_CANDIDATES = tuple(Path(p) for p in (os.environ.get("GENSWEEP_DATA_DIR", "data"), "data",
                                            REPO / "tests" / "data"))
WARMUP_STEPS = 5  # not timed: allocator warm-up, cuDNN autotuning, compilation, graph capture
MATMUL_SIZE = {"cpu": 2048, "cuda": 8192}  # square matrices of the peak measurement
MATMUL_REPS = {"cpu": 5, "cuda": 50}
SCORED_SAMPLES = 10_000  # GAN samples scored in the eval section
IWAE_LITERATURE_K = 100
IWAE_QUICK_IMAGES = 200  # --quick: K = 100 on this many images (on all of them without --quick)
# Timed training steps per pipeline: (full, --quick), per model and device type.
STEPS = {("vae", "cpu"): (300, 60), ("gan", "cpu"): (30, 8),
         ("vae", "cuda"): (500, 150), ("gan", "cuda"): (300, 100)}
FLOP_LAYERS = (nn.Linear, nn.Conv2d, nn.ConvTranspose2d)


# ---- timing helpers ------------------------------------------------------------------------
def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device: torch.device) -> tuple[float, object]:
    """(seconds, result) of fn(), with the device synchronised before both clock reads."""
    sync(device)
    start = time.perf_counter()
    result = fn()
    sync(device)
    return time.perf_counter() - start, result


def time_steps(step, batches, steps: int, device: torch.device) -> float:
    """Seconds of `steps` calls of step(next(batches)) after WARMUP_STEPS untimed ones."""
    for _ in range(WARMUP_STEPS):
        step(next(batches))
    seconds, _ = timed(lambda: [step(next(batches)) for _ in range(steps)], device)
    return seconds


# ---- the device's peak ---------------------------------------------------------------------
def matmul_peak(device: torch.device, dtype: torch.dtype) -> float:
    """FLOP/s of an n x n matrix product (2 n^3 FLOPs), the best of the timed repetitions."""
    n, reps = MATMUL_SIZE[device.type], MATMUL_REPS[device.type]
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(2):
        a @ b
    seconds, _ = timed(lambda: [a @ b for _ in range(reps)], device)
    return 2 * n**3 * reps / seconds


# ---- FLOPs per image from the layers -------------------------------------------------------
def forward_flops(module: nn.Module, *inputs: torch.Tensor) -> int:
    """Multiply-adds x 2 of the Linear / Conv / ConvTranspose layers in one forward, per image."""
    total = 0

    def hook(layer, args, out):
        nonlocal total
        x = args[0]
        if isinstance(layer, nn.Linear):
            total += 2 * x.numel() // x.shape[-1] * layer.in_features * layer.out_features
        elif isinstance(layer, nn.Conv2d):  # each output element: C_in/groups x kh x kw MACs
            total += 2 * out.numel() * layer.weight[0].numel()
        else:  # ConvTranspose2d: each input element scatters into C_out/groups x kh x kw outputs
            total += 2 * x.numel() * layer.weight[0].numel()

    handles = [m.register_forward_hook(hook) for m in module.modules() if isinstance(m, FLOP_LAYERS)]
    try:
        with torch.no_grad():
            module.eval()(*inputs)
    finally:
        for h in handles:
            h.remove()
    return total // len(inputs[0])


def train_flops_per_image(model: str) -> int:
    """Training FLOPs per image: x3 for forward + backward. The VAE: one pass of encoder and
    decoder. The GAN per real image: D's step runs D on the real and on a generated image, G's
    step runs D on the generated image again and G once (with its backward): 3 x (3 D + G), less
    one D forward's worth: G's step computes no weight gradients for D (`GANTask.update`; 784.5
    MFLOP an image before, 711.3 since)."""
    if model == "vae":
        return 3 * forward_flops(VAE.from_config(VAEConfig()), torch.zeros(2, 1, 28, 28))
    cfg = GANConfig()
    d = forward_flops(Discriminator(), torch.zeros(2, 1, 28, 28))
    g = forward_flops(Generator(cfg.latent_dim), torch.zeros(2, cfg.latent_dim))
    return 3 * (3 * d + g) - d


# ---- training throughput -------------------------------------------------------------------
def parse_variant(variant: str, precision: str) -> dict:
    """'bf16+channels-last+compile' -> TrainConfig options; --precision is the default precision.
    Steps are eager unless 'graphs' is a part (TrainConfig's default is graphs on CUDA)."""
    options = {"precision": precision, "cuda_graphs": False}
    for part in filter(None, variant.split("+")):
        if part in PRECISIONS:
            options["precision"] = part
        elif part == "channels-last":
            options["channels_last"] = True
        elif part == "graphs":
            options["cuda_graphs"] = True
        elif part in ("compile", "reduce-overhead"):
            options["compile_mode"] = "default" if part == "compile" else part
        else:
            raise SystemExit(f"error: unknown variant part {part!r}; use fp32, tf32, bf16, "
                             "channels-last, graphs, compile, reduce-overhead joined by '+'")
    return options


def our_batches(trainer: Trainer):
    images = trainer.data.train_images
    while True:
        for index in iterate_batches(images, trainer.train_cfg.batch_size, trainer.batch_generator):
            yield images[index]


def common_batches(dataset_root: Path, dataset: str, batch_size: int, device: torch.device):
    """PyTorch's examples' pipeline: the torchvision dataset, ToTensor per image, a DataLoader
    (one worker and pinned memory on CUDA, in-process on the CPU), then a copy to the device."""
    data = DATASETS[dataset](str(dataset_root), train=True, transform=ToTensor())
    cuda = device.type == "cuda"
    loader = DataLoader(data, batch_size=batch_size, shuffle=True, drop_last=True,
                        num_workers=1 if cuda else 0, pin_memory=cuda,
                        persistent_workers=cuda)
    while True:
        for x, _ in loader:
            yield x.to(device, non_blocking=cuda)


def model_config(model: str):
    return VAEConfig() if model == "vae" else GANConfig()


def bench_training(model: str, args, data, device: torch.device, peak: dict) -> list[dict]:
    steps = args.steps or STEPS[(model, device.type)][args.quick]
    images = steps * args.batch_size
    flops = train_flops_per_image(model)
    rows, common_rate = [], None
    for variant in args.variants:
        options = parse_variant(variant, args.precision)
        cfg = TrainConfig(batch_size=args.batch_size, device=str(device), **options)
        trainer = Trainer.create(model, model_config(model), cfg, data)
        if common_rate is None:  # the common pipeline, once, with the first variant's step
            seconds = time_steps(trainer.task.update,
                                 common_batches(args.data_root, args.dataset, args.batch_size,
                                                device), steps, device)
            common_rate = images / seconds
        seconds = time_steps(trainer.train_step, our_batches(trainer), steps, device)
        rate = images / seconds
        dtype_peak = peak.get(options["precision"], peak["fp32"])
        rows.append({"model": model, "variant": variant, "steps": steps, "ours_img_s": rate,
                     "common_img_s": common_rate, "ratio": rate / common_rate,
                     "flops_per_image": flops, "achieved_tflop_s": rate * flops / 1e12,
                     "peak_fraction": rate * flops / dtype_peak})
    return rows


# ---- evaluation costs ----------------------------------------------------------------------
def gan_scorer(data, device: torch.device, cache_dir, _made: dict = {}):  # noqa: B006 (memo)
    """The cached scoring classifier if one exists for this data, else a randomly initialised one
    (its scores are meaningless; its cost is the same, which is all this section measures)."""
    if device not in _made:
        _made[device] = _make_scorer(data, device, cache_dir)
    return _made[device]


def _make_scorer(data, device: torch.device, cache_dir):
    path = cache_path(data, cache_dir)
    if path.exists():
        return scorer_from_cache(load_cache(path), device), f"cached classifier {path}"
    torch.manual_seed(0)
    model = ScoringCNN().to(device)
    cache = build_cache(model, data.to(device), test_accuracy=float("nan"))
    return scorer_from_cache(cache, device), "random classifier (timing only: no cached one)"


def bench_eval(args, data, device: torch.device) -> dict:
    out = {}
    if "gan" in args.models:
        scorer, which = gan_scorer(data, device, args.cache_dir)
        cfg = TrainConfig(device=str(device), precision=args.precision,
                          eval_samples=SCORED_SAMPLES)
        trainer = Trainer.create("gan", GANConfig(), cfg, data, scorer=scorer)
        trainer.task.eval_samples = 2 * MIN_SAMPLES  # warm-up: kernels, cuDNN choices
        trainer.task.evaluate(1, last=False)
        trainer.task.eval_samples = SCORED_SAMPLES
        seconds, _ = timed(lambda: trainer.task.evaluate(1, last=True), device)
        out["gan_score_10k_s"] = seconds  # a validation with 10,000 samples, as the final test
        out["gan_scorer"] = which
    if "vae" in args.models:
        cfg = TrainConfig(device=str(device), precision=args.precision)
        trainer = Trainer.create("vae", VAEConfig(), cfg, data)
        task = trainer.task
        model, autocast, test = task.model, task.autocast, task.test_targets
        elbo_means(model, test[:100], autocast)  # warm-up
        k_full = IWAE_LITERATURE_K
        iwae_images = IWAE_QUICK_IMAGES if args.quick else len(test)
        cases = {
            f"vae_val_elbo_{len(task.val_targets)}_s": lambda: task.evaluate(1, last=False),
            f"vae_test_elbo_{len(test)}_s": lambda: elbo_means(model, test, autocast),
            f"vae_test_iwae_k{cfg.iwae_samples}_{cfg.iwae_images}_s":
                lambda: iwae_mean(model, test[:cfg.iwae_images], cfg.iwae_samples, autocast),
            f"vae_test_iwae_k{k_full}_{iwae_images}_s":
                lambda: iwae_mean(model, test[:iwae_images], k_full, autocast),
        }
        for name, fn in cases.items():
            out[name], _ = timed(fn, device)
    return out


# ---- share of a default run spent training -------------------------------------------------
def bench_share(model: str, args, data, device: torch.device) -> dict:
    """A default run (TrainConfig defaults with the first --variants entry's options, for
    --share-epochs epochs) timed from Trainer.create to the end of fit (what a sweep trial runs:
    the test split is the driver's, after the sweep), then its test (what a default
    `genmodels.train` run adds); evaluation and samples included, the GAN scored as a default
    run is."""
    scorer = gan_scorer(data, device, args.cache_dir)[0] if model == "gan" else None
    cfg = TrainConfig(epochs=args.share_epochs, device=str(device),
                      **parse_variant(args.variants[0], args.precision))
    sync(device)
    start = time.perf_counter()
    trainer = Trainer.create(model, model_config(model), cfg, data, scorer=scorer)
    history = trainer.fit()
    sync(device)
    trial_wall = time.perf_counter() - start
    test_s, _ = timed(trainer.test, device)
    train = sum(m["train_seconds"] for m in history)
    return {"model": model, "variant": args.variants[0], "epochs": cfg.epochs,
            "train_images": len(trainer.data.train_images), "train_s": train,
            "trial_wall_s": trial_wall, "trial_share": train / trial_wall,
            "wall_s": trial_wall + test_s, "train_share": train / (trial_wall + test_s)}


# ---- report --------------------------------------------------------------------------------
def resolve_data_root(data_dir: str | None) -> Path:
    if data_dir:
        return Path(data_dir).expanduser().resolve()
    return next(p for p in DATA_CANDIDATES if p.is_dir())


def print_report(result: dict) -> None:
    d = result["device"]
    print(f"\ndevice {d['name']} ({d['type']}), torch {d['torch']}, {d['threads']} CPU threads, "
          f"data {result['data']}")
    print("peak (matmul): " + ", ".join(f"{k} {v / 1e12:.2f} TFLOP/s"
                                        for k, v in result["peak_flop_s"].items()))
    print(f"\n{'model':<6}{'variant':<28}{'steps':>6}{'ours img/s':>12}{'common img/s':>14}"
          f"{'ratio':>8}{'MFLOP/img':>11}{'TFLOP/s':>9}{'of peak':>9}")
    for r in result["train"]:
        print(f"{r['model']:<6}{r['variant']:<28}{r['steps']:>6}{r['ours_img_s']:>12,.0f}"
              f"{r['common_img_s']:>14,.0f}{r['ratio']:>7.2f}x{r['flops_per_image'] / 1e6:>11.1f}"
              f"{r['achieved_tflop_s']:>9.3f}{r['peak_fraction']:>8.1%}")
    if result["eval"]:
        print("\nevaluation (seconds):")
        for k, v in result["eval"].items():
            print(f"  {k:<32} {v:.2f}" if isinstance(v, float) else f"  {k:<32} {v}")
    if result["share"]:
        print("\nshare of a default run spent training:")
        for r in result["share"]:
            print(f"  {r['model']:<4} {r['variant']}, {r['epochs']} epoch(s) of "
                  f"{r['train_images']:>6} images: sweep trial (no test) {r['trial_share']:.1%} of "
                  f"{r['trial_wall_s']:.2f} s; with the test, train {r['train_s']:.2f} s of "
                  f"{r['wall_s']:.2f} s wall = {r['train_share']:.1%}")
    print(f"\ntotal {result['total_s']:.1f} s")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", choices=["vae", "gan", "both"], default="both")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--steps", type=int, default=None, help="timed steps per pipeline and variant")
    p.add_argument("--batch-size", type=int, default=TrainConfig.batch_size)
    p.add_argument("--precision", choices=list(PRECISIONS), default="fp32",
                   help="precision of the common pipeline, evaluation and variants without one")
    p.add_argument("--variants", default=None,
                   help="comma-separated variants of our loop, parts joined by '+': fp32, tf32, bf16, "
                        "channels-last, graphs (CUDA graphs), compile, reduce-overhead "
                        "(default: our loop as a default run trains: --precision, and graphs on CUDA)")
    p.add_argument("--dataset", choices=sorted(DATASETS), default="mnist")
    p.add_argument("--data-dir", default=None,
                   help="torchvision layout (default $GENSWEEP_DATA_DIR, else ./data, else tests/data)")
    p.add_argument("--cache-dir", default=None, help="scoring classifier cache (else random)")
    p.add_argument("--json", default=None, help="write the results to this file")
    p.add_argument("--quick", action="store_true",
                   help="fewer steps; K=100 IWAE on 200 images; no GAN share run on the CPU")
    p.add_argument("--share-epochs", type=int, default=1,
                   help="epochs of the share section's default run (a sweep trial's default: 10)")
    p.add_argument("--skip", default="", help="comma-separated sections to skip: train,eval,share")
    args = p.parse_args(argv)
    args.models = ["vae", "gan"] if args.model == "both" else [args.model]
    args.data_root = resolve_data_root(args.data_dir)
    skip = set(filter(None, args.skip.split(",")))

    start = time.perf_counter()
    device = resolve_device(args.device)
    # Without --variants, our loop as a default run trains it (TrainConfig: CUDA graphs on a GPU),
    # so the share section measures the default run too.
    args.variants = (args.variants or ("graphs" if device.type == "cuda" else args.precision)).split(",")
    data = load_dataset(args.dataset, args.data_root, device=device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor()
    peak = {"fp32": matmul_peak(device, torch.float32)}
    if device.type == "cuda":
        peak["bf16"] = matmul_peak(device, torch.bfloat16)
    result = {"device": {"type": device.type, "name": name or platform.machine(),
                         "torch": torch.__version__, "threads": torch.get_num_threads()},
              "data": f"{args.dataset} {len(data.train_images)} train / {len(data.test_images)} "
                      f"test from {args.data_root}",
              "args": {k: v for k, v in vars(args).items() if k != "data_root"},
              "peak_flop_s": peak, "train": [], "eval": {}, "share": []}
    for model in args.models:
        if "train" not in skip:
            rows = bench_training(model, args, data, device, peak)
            result["train"] += rows
            for r in rows:  # as they come: a run cut short still leaves its numbers
                print(f"train {model} {r['variant']}: ours {r['ours_img_s']:,.0f} img/s, common "
                      f"{r['common_img_s']:,.0f} img/s, {r['ratio']:.2f}x "
                      f"({time.perf_counter() - start:.0f} s)", flush=True)
    if "eval" not in skip:
        result["eval"] = bench_eval(args, data, device)
        print(f"eval: {result['eval']} ({time.perf_counter() - start:.0f} s)", flush=True)
    if "share" not in skip:
        # One GAN epoch on a 2-core CPU is a minute or more: --quick leaves it out there.
        models = [m for m in args.models
                  if not (m == "gan" and device.type == "cpu" and args.quick)]
        result["share"] = [bench_share(m, args, data, device) for m in models]
    result["total_s"] = time.perf_counter() - start
    print_report(result)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2, default=str))
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
