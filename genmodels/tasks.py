"""What each model brings to the shared training loop: its networks, one optimizer step, its test
metrics and its pictures. The loop itself (`genmodels.loop`) knows nothing model-specific.

A task holds:
- `modules` / `optimizers`: name -> object, saved and restored by name in checkpoints,
- `train_step(batch)`: one update on a uint8 batch, returning detached scalar tensors
  (`update(x)` is the same step on float images, for pipelines that already made them),
- `evaluate(epoch, last)`: validation metrics as floats (every `eval_every` epochs, and at the end):
  what a sweep chooses by (`val_elbo`, `val_fcd`, ...),
- `test()`: the test metrics, once, after training (`test_elbo`, `test_iwae`, `test_fcd`, ...),
- `sample_images()`: images in [0, 1] from fixed noise (the seed's Figures 1 and 3),
- `comparison_images()`: real next to reconstructed / generated (Figures 2 and 4).
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager

import torch

from genmodels.data import ImageData, to_unit_interval
from genmodels.device import maybe_compile, memory_format
from genmodels.gan import (
    Discriminator,
    GANConfig,
    Generator,
    discriminator_loss,
    generator_loss,
    to_unit_range,
)
from genmodels.vae import VAE, VAEConfig, elbo_terms, iwae_bound

NUM_FIXED_SAMPLES = 64  # an 8 x 8 grid per epoch
NUM_COMPARISON = 16  # rows of the real-vs-model figures
EVAL_BATCH = 1000  # test images per forward pass during evaluation
TEST_BINARIZATION_SEED = 1234  # one fixed binarized test set, shared by every run and epoch
# The VAE's evaluation subset: a seeded permutation of the test split, the same in every run, so
# trials are compared on the same images (a random subset, not the first N: the two halves of
# MNIST's t10k were written by different people and differ in difficulty).
TEST_SUBSET_SEED = 2024
SCORE_NOISE_SEED = 4321  # the same noise for the scored samples every epoch and in every run
IWAE_BATCH_SAMPLES = 20_000  # images x K importance samples per IWAE forward pass

Autocast = Callable[[], AbstractContextManager]


def fixed_noise(seed: int, latent_dim: int, device: torch.device) -> torch.Tensor:
    """The same noise every epoch, so the per-epoch grids show one set of samples improving."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(NUM_FIXED_SAMPLES, latent_dim, generator=generator).to(device)


def seeded_test_subset(images: torch.Tensor, n: int) -> torch.Tensor:
    """The first `n` images of the test split in a fixed seeded order (all if n >= its size)."""
    order = torch.randperm(len(images), generator=torch.Generator().manual_seed(TEST_SUBSET_SEED))
    return images[order[:n].to(images.device)]


def vae_targets(images: torch.Tensor, binarize: bool, device: torch.device) -> torch.Tensor:
    """The VAE's evaluation targets: pixels in [0, 1], or one fixed binarization shared by every
    run (`images`: uint8, the test or the validation split)."""
    x = to_unit_interval(images)
    if not binarize:
        return x
    generator = torch.Generator().manual_seed(TEST_BINARIZATION_SEED)
    return torch.bernoulli(x.cpu(), generator=generator).to(device)


def vae_test_targets(data: ImageData, binarize: bool, device: torch.device) -> torch.Tensor:
    return vae_targets(data.test_images, binarize, device)


@torch.no_grad()
def elbo_means(model: VAE, targets: torch.Tensor, autocast: Autocast) -> dict[str, float]:
    """Mean ELBO, reconstruction and KL terms over `targets` (nats per image), dropout off:
    floats, or lists of K for a fused group."""
    model.eval()
    totals = {"elbo": 0.0, "recon": 0.0, "kl": 0.0}
    for x in targets.split(EVAL_BATCH):
        with autocast():
            terms = elbo_terms(model, x)
        for key in totals:  # one read from the device at the end, not one per batch
            totals[key] = totals[key] + terms[key].sum(dim=-1).double()
    return {key: (value / len(targets)).tolist() for key, value in totals.items()}


@torch.no_grad()
def iwae_mean(model: VAE, targets: torch.Tensor, k: int, autocast: Autocast) -> float:
    """Mean IWAE bound on log p(x) over `targets`, K importance samples each."""
    model.eval()
    total = 0.0
    for x in targets.split(max(1, IWAE_BATCH_SAMPLES // k)):
        with autocast():
            total += iwae_bound(model, x, k).sum().item()
    return total / len(targets)


def vae_test_metrics(model: VAE, test_targets: torch.Tensor, train_cfg,
                     autocast: Autocast) -> dict[str, float]:
    """The VAE's test numbers, reported once after training: test_elbo / test_recon / test_kl on
    `train_cfg.test_images` images of the test split (a fixed seeded subset; all of it by default)
    and test_iwae (K = `iwae_samples`, 0: skipped) on the first `iwae_images` of them."""
    targets = seeded_test_subset(test_targets, train_cfg.test_images)
    metrics = {f"test_{k}": v for k, v in elbo_means(model, targets, autocast).items()}
    if train_cfg.iwae_samples > 0:
        metrics["test_iwae"] = iwae_mean(model, targets[:train_cfg.iwae_images],
                                         train_cfg.iwae_samples, autocast)
    return metrics


def generated_images(generate: Callable[[torch.Tensor], torch.Tensor], latent_dim: int,
                     count: int, device: torch.device, dim: int = 0) -> torch.Tensor:
    """`count` images from the scoring noise (SCORE_NOISE_SEED: the same in every run), generated
    a batch at a time and joined along `dim` (1 for a fused group's [K, N, ...] images)."""
    generator = torch.Generator().manual_seed(SCORE_NOISE_SEED)
    images = []
    for n in torch.arange(count).split(EVAL_BATCH):
        h = torch.randn(len(n), latent_dim, generator=generator).to(device)
        images.append(generate(h))
    return torch.cat(images, dim=dim)


def gan_test_metrics(generate: Callable[[torch.Tensor], torch.Tensor], latent_dim: int,
                     scorer, train_cfg, device: torch.device) -> dict[str, float]:
    """The GAN's test numbers, reported once after training: the scores of `test_samples`
    generated images against the real test split's statistics (the scorer's own reference)."""
    images = generated_images(generate, latent_dim, train_cfg.test_samples, device)
    return {f"test_{k}": v for k, v in scorer.score(images, value_range=(0.0, 1.0)).items()}


class Task:
    """What every task shares, the fused groups' too (`genmodels.fused.tasks` overrides `descend`
    and `reported` to step and report each member on its own)."""

    def train_step(self, batch: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.update(to_unit_interval(batch))

    def descend(self, optimizer, loss: torch.Tensor, inputs: list | None = None) -> None:
        """One step of `optimizer` down the gradient of `loss` (with respect to `inputs` alone,
        when given)."""
        optimizer.zero_grad(set_to_none=True)
        loss.backward(inputs=inputs)
        optimizer.step()

    def reported(self, metrics: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """A step's metrics as the loop gets them."""
        return metrics


class VAEFigures:
    """The figures' images of a task with a `model` that encodes and samples (a VAE, or a fused
    group of them: its images then carry a leading member dimension), `fixed_z` and
    `test_targets`."""

    @torch.no_grad()
    def sample_images(self) -> torch.Tensor:
        self.model.eval()
        return self.model.sample(self.fixed_z).float()

    @torch.no_grad()
    def comparison_images(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Test digits and their reconstructions (the posterior mean, decoded)."""
        self.model.eval()
        real = self.test_targets[:NUM_COMPARISON]
        mu, _ = self.model.encode(real)
        return real, self.model.sample(mu).float()


class VAETask(Task, VAEFigures):
    name = "vae"
    sampler = "model"  # the module that draws samples: what a trained model is, after training

    @staticmethod
    def build_sampler(cfg: VAEConfig) -> VAE:
        return VAE.from_config(cfg)

    def __init__(self, cfg: VAEConfig, data: ImageData, device: torch.device, train_cfg,
                 autocast: Autocast, scorer=None):
        self.cfg, self.data, self.device, self.autocast = cfg, data, device, autocast
        self.binarize = cfg.binarize
        self.model = self.build_sampler(cfg).to(device)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=cfg.lr)
        self.modules = {"model": self.model}
        self.optimizers = {"optimizer": self.optimizer}
        self.fixed_z = fixed_noise(train_cfg.seed, cfg.latent_dim, device)
        # The whole loss in one compiled graph (one output, one backward); eval stays eager.
        self._train_loss = maybe_compile(self._loss, train_cfg.compile_mode)
        self.test_targets = vae_test_targets(data, cfg.binarize, device)
        self.val_targets = vae_targets(data.val_images, cfg.binarize, device)
        self.train_cfg = train_cfg

    def binarized(self, x: torch.Tensor) -> torch.Tensor:
        return torch.bernoulli(x)  # dynamic binarization: a fresh draw every time

    def _loss(self, x: torch.Tensor, eps: torch.Tensor | None = None) -> torch.Tensor:
        if self.binarize:
            x = self.binarized(x)
        with self.autocast():  # the negative ELBO, nats per image
            return -elbo_terms(self.model, x, eps)["elbo"].mean(dim=-1)

    def update(self, x: torch.Tensor, eps: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """One optimizer step on float images [N, 1, 28, 28] in [0, 1] (`eps`: the
        reparameterization noise, drawn unless given, e.g. to replay a fused member's)."""
        self.model.train()
        loss = self._train_loss(x, eps)
        self.descend(self.optimizer, loss)
        return self.reported({"train_loss": loss.detach()})

    def evaluate(self, epoch: int, last: bool) -> dict[str, float]:
        """val_elbo, val_recon and val_kl: per-image means over the validation split, dropout off."""
        if not len(self.val_targets):
            return {}  # no validation split (a bare task, e.g. in a benchmark)
        return {f"val_{k}": v for k, v in elbo_means(self.model, self.val_targets,
                                                      self.autocast).items()}

    def test(self) -> dict[str, float]:
        """The test metrics, once after training (`vae_test_metrics`)."""
        return vae_test_metrics(self.model, self.test_targets, self.train_cfg, self.autocast)



class GANTask(Task):
    name = "gan"
    sampler = "generator"

    @staticmethod
    def build_sampler(cfg: GANConfig) -> Generator:
        return Generator(cfg.latent_dim)

    def __init__(self, cfg: GANConfig, data: ImageData, device: torch.device, train_cfg,
                 autocast: Autocast, scorer=None):
        self.cfg, self.data, self.device, self.autocast = cfg, data, device, autocast
        # Classifier-based scores of generated images (None: skip them): against the validation
        # split's statistics every evaluation, against the test split's (the scorer's) once at the end.
        self.scorer = scorer
        self.val_scorer = scorer.with_reference(to_unit_interval(data.val_images)) if (
            scorer is not None and len(data.val_images)) else None
        self.eval_samples, self.train_cfg = train_cfg.eval_samples, train_cfg
        self.memory_format = memory_format(train_cfg.channels_last)
        self.generator = self.build_sampler(cfg).to(device, memory_format=self.memory_format)
        self.discriminator = Discriminator(cfg.dropout).to(device,
                                                           memory_format=self.memory_format)
        betas = (cfg.beta1, cfg.beta2)
        self.opt_g = torch.optim.Adam(self.generator.parameters(), lr=cfg.lr_g, betas=betas)
        self.opt_d = torch.optim.Adam(self.discriminator.parameters(), lr=cfg.lr_d, betas=betas)
        self.modules = {"generator": self.generator, "discriminator": self.discriminator}
        self.optimizers = {"opt_g": self.opt_g, "opt_d": self.opt_d}
        self.fixed_h = fixed_noise(train_cfg.seed, cfg.latent_dim, device)
        # Compiled: G's forward, and each step's D forwards plus loss. Not one graph for the whole
        # step: G's output is backpropagated twice (through D's step, detached, and G's own), and a
        # graph with several outputs has one backward.
        mode = train_cfg.compile_mode
        self._generate = maybe_compile(self.generator, mode)
        self._d_loss = maybe_compile(self._discriminator_loss, mode)
        self._g_loss = maybe_compile(self._generator_loss, mode)

    def _discriminator_loss(self, real: torch.Tensor, fake: torch.Tensor):
        with self.autocast():
            real_logits = self.discriminator(real)
            fake_logits = self.discriminator(fake)
            loss = discriminator_loss(real_logits, fake_logits)
        return loss, real_logits.detach(), fake_logits.detach()

    def _generator_loss(self, fake: torch.Tensor) -> torch.Tensor:
        with self.autocast():
            return generator_loss(self.discriminator(fake))

    def noise(self, n: int) -> torch.Tensor:
        return torch.randn(n, self.cfg.latent_dim, device=self.device)

    def update(self, x: torch.Tensor, h: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """One D step and one G step on float images [N, 1, 28, 28] in [0, 1]; the noise `h` is
        drawn here unless given (e.g. to replay a fused member's noise)."""
        real = (x * 2 - 1).contiguous(memory_format=self.memory_format)  # [-1, 1]: G's tanh range
        if h is None:
            h = self.noise(len(real))
        self.generator.train()
        self.discriminator.train()

        # (1) update D: maximize log D(x) + log(1 - D(G(h)))
        with self.autocast():
            fake = self._generate(h)
        loss_d, real_logits, fake_logits = self._d_loss(real, fake.detach())
        self.descend(self.opt_d, loss_d)

        # (2) update G: maximize log D(G(h)) against the freshly updated D. Only G's gradients:
        # D's weight gradients on the way would be thrown away (the next D step clears them
        # first); `inputs` makes autograd skip them, a sixth of a G step's time on the CPU.
        loss_g = self._g_loss(fake)
        self.descend(self.opt_g, loss_g, inputs=list(self.generator.parameters()))

        return self.reported({
            "loss_d": loss_d.detach(),
            "loss_g": loss_g.detach(),
            "d_real": torch.sigmoid(real_logits.float()).mean(dim=-1),  # D(x)
            "d_fake": torch.sigmoid(fake_logits.float()).mean(dim=-1),  # D(G(h)) before (1)
        })


    def evaluate(self, epoch: int, last: bool) -> dict[str, float]:
        """Classifier-based scores of `eval_samples` images from fixed noise against the
        validation split (when scoring is on): val_fcd, val_inception_score, ..."""
        if self.val_scorer is None:
            return {}  # the training means the loop already has are the GAN's only numbers
        images = generated_images(self.generate, self.cfg.latent_dim, self.eval_samples, self.device)
        scores = self.val_scorer.score(images, value_range=(0.0, 1.0))
        return {f"val_{k}": v for k, v in scores.items()}

    def test(self) -> dict[str, float]:
        """The test scores, once after training (`gan_test_metrics`; none without a scorer)."""
        if self.scorer is None:
            return {}
        return gan_test_metrics(self.generate, self.cfg.latent_dim, self.scorer, self.train_cfg,
                                self.device)

    @torch.no_grad()
    def generate(self, h: torch.Tensor) -> torch.Tensor:
        """Images in [0, 1] from noise h (G in eval mode: BatchNorm uses running statistics)."""
        self.generator.eval()
        with self.autocast():
            return to_unit_range(self.generator(h))

    def sample_images(self) -> torch.Tensor:
        return self.generate(self.fixed_h)

    def comparison_images(self) -> tuple[torch.Tensor, torch.Tensor]:
        real = to_unit_interval(self.data.test_images[:NUM_COMPARISON])
        return real, self.generate(self.fixed_h[..., :NUM_COMPARISON, :])  # [K, ...] for a group


# model name -> (its config class, its task class)
TASKS = {"vae": (VAEConfig, VAETask), "gan": (GANConfig, GANTask)}
