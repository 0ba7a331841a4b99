"""The one training loop both models share, used by the command line and by Ray Tune alike.

    trainer = Trainer.create("vae", VAEConfig(), TrainConfig(epochs=10), data)
    trainer.fit(on_epoch=lambda report: print(report.metrics))

Each epoch: shuffle on the device, step through the batches, check the losses are finite, evaluate,
draw the fixed-noise samples, hand an `EpochReport` to the callback. `Trainer.save_checkpoint` and
`Trainer.resume` store and restore everything that makes the next epoch what it would have been:
weights, optimizer moments, the epoch, every random-number state and the history so far.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from tqdm.auto import tqdm

from genmodels.data import DEFAULT_VAL_FRACTION, ImageData, check_dataset_name, iterate_batches
from genmodels.device import PRECISIONS, autocast_factory, check_compile_mode, setup_device
from genmodels.files import atomic_write, write_json
from genmodels.fused.tasks import FUSED_TASKS
from genmodels.gan import to_unit_range
from genmodels.graphs import GraphedStep, set_capturable
from genmodels.names import MODEL_CONFIG_FILE, MODEL_WEIGHTS_FILE
from genmodels.scores import MIN_SAMPLES
from genmodels.tasks import TASKS, gan_test_metrics, vae_test_metrics, vae_test_targets

# Every task the loop trains: the two models, and fused groups of either (genmodels.fused).
ALL_TASKS = {**TASKS, **FUSED_TASKS}

CHECKPOINT_FORMAT = 1
DIVERGENCE_CHECK_EVERY = 50  # steps between finiteness checks (each one syncs with the device)
EVAL_SEED = 0  # evaluation draws its own noise, so it never changes the training trajectory
# Evaluation sizes. Every epoch (every `eval_every`) a run is measured on the validation split (all
# of it: `val_fraction` of the training images), which is what sweeps choose by; the test split is
# measured once, after training (`Trainer.test`). Defaults chosen so that a default run spends at least
# 90% of its wall time training (bench/run.py measures the share; docs/benchmarks.md has the numbers).
# The literature's IWAE (K = 100 on the whole test split) is --iwae-samples 100 --iwae-images 10000:
# 50-90 s on one CPU thread, more than ten MNIST epochs of training here.
DEFAULT_TEST_IMAGES = 10_000  # VAE: the final test_elbo's images (10,000: the whole test split)
DEFAULT_IWAE_SAMPLES = 10  # VAE: K of the final test_iwae
DEFAULT_IWAE_IMAGES = 1_000  # VAE: test_iwae images (the first of a fixed seeded test subset)
# GAN: generated images scored per validation. 10,000 took 11 s against a 45 s epoch of the 10k
# MNIST here (80% training); 2,000 (the precision/recall cap already) keeps it near 95%. Scores are
# compared between trials at the same count (fcd's bias grows as the count shrinks).
DEFAULT_EVAL_SAMPLES = 2_000
DEFAULT_TEST_SAMPLES = 10_000  # GAN: generated images scored once against the test split


class TrainingDiverged(RuntimeError):
    """A loss became NaN or infinite; training stopped instead of going on with garbage."""

    def __init__(self, epoch: int, step: int, metrics: dict[str, float]):
        self.epoch, self.step, self.metrics = epoch, step, metrics
        super().__init__(
            f"training diverged at epoch {epoch}, step {step}: non-finite loss {metrics}. "
            "Lower the learning rates or try another seed."
        )

    def __reduce__(self):
        # Ray pickles a trial's error to the driver; the default (cls, self.args) would call
        # __init__ with the message alone and fail, hiding this error behind a TypeError.
        return type(self), (self.epoch, self.step, self.metrics)


@dataclass
class TrainConfig:
    dataset: str = "mnist"  # mnist | fashion-mnist
    epochs: int = 10
    batch_size: int = 128
    train_subset: int | None = None  # train on the first N images only (quick runs)
    seed: int = 0
    device: str = "auto"  # auto (CUDA when present) | cpu | cuda | cuda:N
    precision: str = "fp32"  # fp32 | bf16 (autocast)
    num_threads: int | None = None  # torch CPU threads; None = every CPU this process may use
    channels_last: bool = False  # NHWC images and conv weights (GAN; no-op for the VAE's MLP)
    compile_mode: str = "off"  # torch.compile of the train step: off | default | reduce-overhead
    # Replay the whole train step as one CUDA graph (genmodels.graphs): 4-8x the images per second
    # of eager steps on an H200 (docs/benchmarks.md). No effect on the CPU, nor with compile_mode
    # reduce-overhead (which captures graphs of its own).
    cuda_graphs: bool = True
    eval_every: int = 1  # evaluate every N epochs (and always after the last)
    eval_samples: int = DEFAULT_EVAL_SAMPLES  # GAN: generated images scored per validation
    # The validation split: this share of the training images, a fixed seeded choice (the same in
    # every run; genmodels.data.VALIDATION_SEED), held out from training; per-epoch metrics use it.
    val_fraction: float = DEFAULT_VAL_FRACTION
    # The test split, once after training (Trainer.test): VAE test_elbo / test_recon / test_kl on
    # `test_images` images (a fixed seeded subset; >= the split's size: all of it) and test_iwae with
    # K = `iwae_samples` (0: skip) on the first `iwae_images` of them; GAN scores of `test_samples`.
    test_images: int = DEFAULT_TEST_IMAGES
    iwae_samples: int = DEFAULT_IWAE_SAMPLES
    iwae_images: int = DEFAULT_IWAE_IMAGES
    test_samples: int = DEFAULT_TEST_SAMPLES

    def __post_init__(self) -> None:
        check_dataset_name(self.dataset)
        if not isinstance(self.iwae_samples, int) or self.iwae_samples < 0:
            raise ValueError(f"iwae_samples must be 0 (off) or a positive integer, got {self.iwae_samples!r}")
        for name in ("test_images", "iwae_images"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer (a value at least the test "
                                 f"split's size uses all of it), got {value!r}")
        for name in ("eval_samples", "test_samples"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < MIN_SAMPLES:
                raise ValueError(f"{name} must be an integer >= {MIN_SAMPLES}, got {value!r}")
        if not isinstance(self.val_fraction, (int, float)) or not 0 < self.val_fraction < 1:
            raise ValueError(f"val_fraction must be between 0 and 1 (exclusive), got "
                             f"{self.val_fraction!r}")
        for name in ("epochs", "batch_size", "eval_every"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if self.train_subset is not None and (
            not isinstance(self.train_subset, int) or self.train_subset < 1
        ):
            raise ValueError(f"train_subset must be a positive integer, got {self.train_subset!r}")
        if self.num_threads is not None and self.num_threads < 1:
            raise ValueError(f"num_threads must be positive, got {self.num_threads!r}")
        check_compile_mode(self.compile_mode)
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {self.precision!r}")

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class EpochReport:
    """What the callback gets after each epoch."""

    epoch: int
    metrics: dict[str, float]  # training means, plus validation metrics on evaluation epochs
    samples: torch.Tensor  # [64, 1, 28, 28] in [0, 1], from the fixed noise
    trainer: Trainer = field(repr=False)

    @property
    def is_last(self) -> bool:
        return self.epoch == self.trainer.train_cfg.epochs


def _short(value: float | list[float]) -> str:
    """A progress-bar number, or the members' numbers of a fused group."""
    return f"{value:.3g}" if isinstance(value, float) else "/".join(f"{v:.3g}" for v in value)


def _rng_state(device: torch.device, batch_generator: torch.Generator) -> dict:
    state = {"torch": torch.get_rng_state(), "batches": batch_generator.get_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _set_rng_state(state: dict, device: torch.device, batch_generator: torch.Generator) -> None:
    torch.set_rng_state(state["torch"])
    batch_generator.set_state(state["batches"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


class Trainer:
    def __init__(self, task, model_cfg, train_cfg: TrainConfig, data: ImageData,
                 device: torch.device):
        self.task, self.model_cfg, self.train_cfg = task, model_cfg, train_cfg
        self.data, self.device = data, device
        self.batch_generator = torch.Generator().manual_seed(train_cfg.seed)
        self.epoch = 0  # epochs completed
        self.history: list[dict[str, float]] = []  # one metrics dict per completed epoch
        self.sample_history: list[torch.Tensor] = []  # uint8 sample grids, one per epoch
        self.graphed_step: GraphedStep | None = None  # made at the first step, when asked for

    @classmethod
    def create(cls, model: str, model_cfg, train_cfg: TrainConfig, data: ImageData,
               scorer=None) -> Trainer:
        """Seed, pick the device, move the data there and build the model's task.

        `scorer` (optional) computes classifier-based scores of generated images each evaluation.
        """
        if model not in ALL_TASKS:
            raise ValueError(f"unknown model {model!r}; choose one of {sorted(ALL_TASKS)}")
        cfg_class, task_class = ALL_TASKS[model]
        if not isinstance(model_cfg, cfg_class):
            raise TypeError(f"model {model!r} takes a {cfg_class.__name__}, got {model_cfg!r}")
        device = setup_device(train_cfg.device, train_cfg.precision, train_cfg.num_threads)
        torch.manual_seed(train_cfg.seed)
        data = data.hold_out(train_cfg.val_fraction).subset(train_cfg.train_subset).to(device)
        autocast = autocast_factory(device, train_cfg.precision)
        task = task_class(model_cfg, data, device, train_cfg, autocast, scorer=scorer)
        return cls(task, model_cfg, train_cfg, data, device)

    def describe(self) -> str:
        """The resolved run, printed at the start (model, data, device, every option)."""
        lines = [
            f"model      {self.task.name}: {self.model_cfg}",
            f"training   {self.train_cfg}",
            f"data       {self.data.name}: {len(self.data.train_images)} train / "
            f"{len(self.data.val_images)} validation / {len(self.data.test_images)} test images "
            f"on {self.device}",
            f"device     {self.device}, {self.train_cfg.precision}, "
            f"{torch.get_num_threads()} CPU threads, compile {self.train_cfg.compile_mode}, "
            f"channels-last {self.train_cfg.channels_last}, CUDA graphs {self.uses_cuda_graphs}",
        ]
        for name, module in self.task.modules.items():
            params = sum(p.numel() for p in module.parameters())
            lines.append(f"{name:<10} {params:,} parameters")
        return "\n".join(lines)

    # ---- one epoch -------------------------------------------------------------------------
    @property
    def uses_cuda_graphs(self) -> bool:
        return (self.train_cfg.cuda_graphs and self.device.type == "cuda"
                and self.train_cfg.compile_mode != "reduce-overhead")

    def train_step(self, batch: torch.Tensor) -> dict[str, torch.Tensor]:
        """One step of the task on `batch`, replayed from a CUDA graph when `cuda_graphs` is on and
        the device is CUDA. The returned tensors are valid until the next step."""
        if not self.uses_cuda_graphs:
            return self.task.train_step(batch)
        if self.graphed_step is None:
            self.graphed_step = GraphedStep(self.task)
        return self.graphed_step(batch)

    def _train_epoch(self, progress: bool) -> dict[str, float]:
        epoch = self.epoch + 1
        batches = list(iterate_batches(self.data.train_images, self.train_cfg.batch_size,
                                       self.batch_generator))
        bar = tqdm(batches, desc=f"epoch {epoch}/{self.train_cfg.epochs}", disable=not progress,
                   leave=False, unit="batch")
        sums: dict[str, torch.Tensor] = {}
        for step, index in enumerate(bar, start=1):
            out = self.train_step(self.data.train_images[index])
            for key, value in out.items():
                sums[key] = sums.get(key, 0) + value
            if step % DIVERGENCE_CHECK_EVERY == 0 or step == len(batches):
                # A float per metric, or a list of one per member for a fused group.
                means = {k: (v / step).tolist() for k, v in sums.items()}
                if not torch.isfinite(torch.tensor(list(means.values()))).all():
                    raise TrainingDiverged(epoch, step, means)
                bar.set_postfix({k: _short(v) for k, v in means.items()})
        bar.close()
        return means

    def run_epoch(self, progress: bool = False) -> EpochReport:
        start = time.perf_counter()
        metrics = self._train_epoch(progress)
        train_seconds = time.perf_counter() - start
        epoch = self.epoch + 1
        last = epoch == self.train_cfg.epochs
        if epoch % self.train_cfg.eval_every == 0 or last:
            # Own RNG stream: evaluating (or not) never shifts the training randomness.
            cuda = self.device.type == "cuda"
            devices = [self.device.index or torch.cuda.current_device()] if cuda else []
            with torch.random.fork_rng(devices=devices):
                torch.manual_seed(EVAL_SEED)
                metrics.update(self.task.evaluate(epoch, last))
        samples = self.task.sample_images()
        metrics = {"epoch": epoch, **metrics, "train_seconds": train_seconds,
                   "epoch_seconds": time.perf_counter() - start}
        self.epoch = epoch
        self.history.append(metrics)
        self.sample_history.append((samples * 255).round().to(torch.uint8).cpu())
        return EpochReport(epoch, metrics, samples, self)

    def fit(self, on_epoch: Callable[[EpochReport], None] | None = None,
            progress: bool = False) -> list[dict[str, float]]:
        """Train the remaining epochs; `on_epoch` sees each report (log, checkpoint, report)."""
        while self.epoch < self.train_cfg.epochs:
            report = self.run_epoch(progress)
            if on_epoch is not None:
                on_epoch(report)
        return self.history

    def test(self) -> dict[str, float]:
        """The test split's numbers, once, after training (never a per-epoch objective): VAE
        test_elbo, test_recon, test_kl, test_iwae; GAN test_fcd, test_inception_score, ..."""
        cuda = self.device.type == "cuda"
        devices = [self.device.index or torch.cuda.current_device()] if cuda else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(EVAL_SEED)
            return self.task.test()

    # ---- checkpoints -----------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {
            "format": CHECKPOINT_FORMAT,
            "model": self.task.name,
            "model_config": asdict(self.model_cfg),
            "train_config": asdict(self.train_cfg),
            "epoch": self.epoch,
            "modules": {k: m.state_dict() for k, m in self.task.modules.items()},
            "optimizers": {k: o.state_dict() for k, o in self.task.optimizers.items()},
            "rng": _rng_state(self.device, self.batch_generator),
            "history": self.history,
            "sample_history": self.sample_history,
        }

    def load_state_dict(self, state: dict) -> None:
        if state.get("format") != CHECKPOINT_FORMAT or state.get("model") != self.task.name:
            raise ValueError(
                f"checkpoint is for model {state.get('model')!r} (format {state.get('format')}), "
                f"not a {self.task.name!r} checkpoint of format {CHECKPOINT_FORMAT}"
            )
        for key, module in self.task.modules.items():
            module.load_state_dict(state["modules"][key])
        for key, optimizer in self.task.optimizers.items():
            optimizer.load_state_dict(state["optimizers"][key])
        # A checkpoint of a graphed run holds capturable optimizers: back to the default here, and
        # a new capture (the loaded state tensors are not the ones a graph recorded) if on.
        set_capturable(self.task.optimizers.values(), False, self.device)
        self.graphed_step = None
        _set_rng_state(state["rng"], self.device, self.batch_generator)
        self.epoch = state["epoch"]
        self.history = list(state["history"])
        self.sample_history = list(state["sample_history"])

    def save_checkpoint(self, path: str | os.PathLike) -> Path:
        """Write atomically (temp file + rename): a crash mid-write never leaves a torn file."""
        state = self.state_dict()
        return atomic_write(path, lambda tmp: torch.save(state, tmp))

    def resume(self, path: str | os.PathLike) -> None:
        state = torch.load(path, map_location=self.device, weights_only=True)
        # RNG states must stay CPU byte tensors whatever map_location did.
        state["rng"] = {k: v.cpu() for k, v in state["rng"].items()}
        self.load_state_dict(state)


def load_checkpoint_configs(path: str | os.PathLike) -> tuple[str, dict, dict]:
    """(model name, model config dict, train config dict) stored in a checkpoint."""
    state = torch.load(path, map_location="cpu", weights_only=True)
    return state["model"], state["model_config"], state["train_config"]


def export_model(checkpoint: str | os.PathLike, folder: str | os.PathLike) -> Path:
    """The trained sampling network of `checkpoint` (the VAE, or the GAN's generator) as two plain
    files in `folder`: `weights.pt`, its state_dict (tensors only: `torch.load(...,
    weights_only=True)` reads it, no pickled code), and `model.json`, what rebuilds it.
    `load_model(folder)` reads them back."""
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    _, task_class = TASKS[state["model"]]
    return write_model(folder, state["model"], state["model_config"],
                       state["modules"][task_class.sampler])


def write_model(folder: str | os.PathLike, model: str, model_config: dict, weights: dict) -> Path:
    """`weights` (a sampling network's state_dict) and what rebuilds it, as `export_model` writes."""
    folder = Path(folder)
    atomic_write(folder / MODEL_WEIGHTS_FILE, lambda tmp: torch.save(weights, tmp))
    write_json(folder / MODEL_CONFIG_FILE, {"format": CHECKPOINT_FORMAT, "model": model,
                                            "model_config": model_config})
    return folder


def saved_model(path: str | os.PathLike, device: str | torch.device = "cpu"):
    """(model name, its config, the network in eval mode) from a `checkpoint.pt` or a folder that
    `export_model` wrote (`load_model` without the config)."""
    path = Path(path)
    if path.is_dir():
        saved = json.loads((path / MODEL_CONFIG_FILE).read_text())
        weights = torch.load(path / MODEL_WEIGHTS_FILE, map_location=device, weights_only=True)
    else:
        saved = torch.load(path, map_location=device, weights_only=True)
        weights = saved["modules"][TASKS[saved["model"]][1].sampler]
    if saved.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path} has format {saved.get('format')}, not {CHECKPOINT_FORMAT}")
    cfg_class, task_class = TASKS[saved["model"]]
    cfg = cfg_class(**saved["model_config"])
    network = task_class.build_sampler(cfg)
    network.load_state_dict(weights)
    return saved["model"], cfg, network.to(device).eval()


def evaluate_on_test_split(path: str | os.PathLike, data: ImageData, train_cfg: TrainConfig,
                     scorer=None, device: str | torch.device = "cpu") -> dict[str, float]:
    """The test split's numbers of a saved model (what `Trainer.test` gives at the end of a run):
    how a sweep measures the trials it chose, once, after choosing them on the validation split.
    `scorer` (the GAN's; its reference is the test split) None: a GAN gets no numbers."""
    model, cfg, network = saved_model(path, device)
    device = torch.device(device)
    autocast = autocast_factory(device, train_cfg.precision)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(EVAL_SEED)
        if model == "vae":
            targets = vae_test_targets(data.to(device), cfg.binarize, device)
            return vae_test_metrics(network, targets, train_cfg, autocast)
        if scorer is None:
            return {}

        @torch.no_grad()
        def generate(h: torch.Tensor) -> torch.Tensor:
            with autocast():
                return to_unit_range(network(h))

        return gan_test_metrics(generate, cfg.latent_dim, scorer, train_cfg, device)


def load_model(path: str | os.PathLike, device: str | torch.device = "cpu") -> torch.nn.Module:
    """A trained sampling network in eval mode, from a `checkpoint.pt` or a folder written by
    `export_model` (e.g. the `best_model` artifacts a sweep logs to MLflow):

        from genmodels.loop import load_model
        vae = load_model("runs/vae/checkpoint.pt")
        images = vae.sample(torch.randn(64, vae.latent_dim))          # [64, 1, 28, 28] in [0, 1]
        generator = load_model(mlflow.artifacts.download_artifacts(run_id=..., artifact_path="best_model"))
        images = to_unit_range(generator(torch.randn(64, generator.latent_dim)))  # from genmodels.gan
    """
    return saved_model(path, device)[2]
