"""What each model brings to the shared training loop: its networks, one optimizer step, its test
metrics and its pictures. The loop itself (`genmodels.training`) knows nothing model-specific.

A task holds:
- `modules` / `optimizers`: name -> object, saved and restored by name in checkpoints,
- `train_step(batch)`: one update on a uint8 batch, returning detached scalar tensors
  (`update(x)` is the same step on float images, for pipelines that already made them),
- `evaluate(epoch, last)`: test metrics as floats (only every `eval_every` epochs, and at the end),
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


def test_subset(images: torch.Tensor, n: int) -> torch.Tensor:
    """The first `n` images of the test split in a fixed seeded order (all if n >= its size)."""
    order = torch.randperm(len(images), generator=torch.Generator().manual_seed(TEST_SUBSET_SEED))
    return images[order[:n].to(images.device)]


def vae_test_targets(data: ImageData, binarize: bool, device: torch.device) -> torch.Tensor:
    """The VAE's test targets: pixels in [0, 1], or one fixed binarization shared by every run."""
    x = to_unit_interval(data.test_images)
    if not binarize:
        return x
    generator = torch.Generator().manual_seed(TEST_BINARIZATION_SEED)
    return torch.bernoulli(x.cpu(), generator=generator).to(device)


class VAETask:
    name = "vae"
    sampler = "model"  # the module that draws samples: what a trained model is, after training

    @staticmethod
    def build_sampler(cfg: VAEConfig) -> VAE:
        return VAE.from_config(cfg)

    def __init__(self, cfg: VAEConfig, data: ImageData, device: torch.device, train_cfg,
                 autocast: Autocast, scorer=None):
        self.cfg, self.data, self.device, self.autocast = cfg, data, device, autocast
        self.iwae_samples, self.iwae_images = train_cfg.iwae_samples, train_cfg.iwae_images
        self.model = self.build_sampler(cfg).to(device)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=cfg.lr)
        self.modules = {"model": self.model}
        self.optimizers = {"optimizer": self.optimizer}
        self.fixed_z = fixed_noise(train_cfg.seed, cfg.latent_dim, device)
        # The whole loss in one compiled graph (one output, one backward); eval stays eager.
        self._train_loss = maybe_compile(self._loss, train_cfg.compile_mode)
        self.test_targets = vae_test_targets(data, cfg.binarize, device)
        self.eval_targets = test_subset(self.test_targets, train_cfg.test_images)

    def train_step(self, batch: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.update(to_unit_interval(batch))

    def _loss(self, x: torch.Tensor, eps: torch.Tensor | None = None) -> torch.Tensor:
        if self.cfg.binarize:
            x = torch.bernoulli(x)  # dynamic binarization: a fresh draw every time
        with self.autocast():
            return -elbo_terms(self.model, x, eps)["elbo"].mean()  # negative ELBO, nats per image

    def update(self, x: torch.Tensor, eps: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """One optimizer step on float images [N, 1, 28, 28] in [0, 1] (`eps`: the
        reparameterization noise, drawn unless given, e.g. to replay a fused member's)."""
        self.model.train()
        loss = self._train_loss(x, eps)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return {"train_loss": loss.detach()}

    @torch.no_grad()
    def evaluate(self, epoch: int, last: bool) -> dict[str, float]:
        """Mean ELBO and its terms over the evaluation subset (`test_images`), dropout off; on the
        last epoch also test_iwae (K = `iwae_samples` on the subset's first `iwae_images`)."""
        metrics = self.test_elbo(self.eval_targets)
        if last and self.iwae_samples > 0:
            metrics["test_iwae"] = self.test_iwae(self.iwae_samples,
                                                  self.eval_targets[:self.iwae_images])
        return metrics

    @torch.no_grad()
    def test_elbo(self, targets: torch.Tensor) -> dict[str, float]:
        """test_elbo, test_recon and test_kl: per-image means over `targets` (nats)."""
        self.model.eval()
        totals = {"elbo": 0.0, "recon": 0.0, "kl": 0.0}
        for x in targets.split(EVAL_BATCH):
            with self.autocast():
                terms = elbo_terms(self.model, x)
            for key in totals:
                totals[key] += terms[key].sum().item()
        return {f"test_{key}": value / len(targets) for key, value in totals.items()}

    @torch.no_grad()
    def test_iwae(self, k: int, targets: torch.Tensor | None = None) -> float:
        """Mean IWAE bound on log p(x) over `targets` (default: the whole test split), K importance
        samples each."""
        self.model.eval()
        targets = self.test_targets if targets is None else targets
        total = 0.0
        for x in targets.split(max(1, IWAE_BATCH_SAMPLES // k)):
            with self.autocast():
                total += iwae_bound(self.model, x, k).sum().item()
        return total / len(targets)

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


class GANTask:
    name = "gan"
    sampler = "generator"

    @staticmethod
    def build_sampler(cfg: GANConfig) -> Generator:
        return Generator(cfg.latent_dim)

    def __init__(self, cfg: GANConfig, data: ImageData, device: torch.device, train_cfg,
                 autocast: Autocast, scorer=None):
        self.cfg, self.data, self.device, self.autocast = cfg, data, device, autocast
        self.scorer = scorer  # classifier-based scores of generated images (None: skip them)
        self.eval_samples = train_cfg.eval_samples
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

    def train_step(self, batch: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.update(to_unit_interval(batch))

    def update(self, x: torch.Tensor, h: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """One D step and one G step on float images [N, 1, 28, 28] in [0, 1]; the noise `h` is
        drawn here unless given (e.g. to replay a fused member's noise)."""
        real = (x * 2 - 1).contiguous(memory_format=self.memory_format)  # [-1, 1]: G's tanh range
        if h is None:
            h = torch.randn(len(real), self.cfg.latent_dim, device=self.device)
        self.generator.train()
        self.discriminator.train()

        # (1) update D: maximize log D(x) + log(1 - D(G(h)))
        with self.autocast():
            fake = self._generate(h)
        loss_d, real_logits, fake_logits = self._d_loss(real, fake.detach())
        self.opt_d.zero_grad(set_to_none=True)
        loss_d.backward()
        self.opt_d.step()

        # (2) update G: maximize log D(G(h)) against the freshly updated D
        loss_g = self._g_loss(fake)
        self.opt_g.zero_grad(set_to_none=True)
        loss_g.backward()
        self.opt_g.step()

        return {
            "loss_d": loss_d.detach(),
            "loss_g": loss_g.detach(),
            "d_real": torch.sigmoid(real_logits.float()).mean(),  # D(x)
            "d_fake": torch.sigmoid(fake_logits.float()).mean(),  # D(G(h)) before (1)
        }

    def evaluate(self, epoch: int, last: bool) -> dict[str, float]:
        """Classifier-based scores of `eval_samples` images from fixed noise (when scoring is on)."""
        if self.scorer is None:
            return {}  # the training means the loop already has are the GAN's only numbers
        generator = torch.Generator().manual_seed(SCORE_NOISE_SEED)
        images = []
        for n in torch.arange(self.eval_samples).split(EVAL_BATCH):
            h = torch.randn(len(n), self.cfg.latent_dim, generator=generator).to(self.device)
            images.append(self.generate(h))
        return self.scorer.score(torch.cat(images), value_range=(0.0, 1.0))

    @torch.no_grad()
    def generate(self, h: torch.Tensor) -> torch.Tensor:
        """Images in [0, 1] from noise h (G in eval mode: BatchNorm uses running statistics)."""
        self.generator.eval()
        with self.autocast():
            images = self.generator(h)
        return (images.float() + 1) / 2

    def sample_images(self) -> torch.Tensor:
        return self.generate(self.fixed_h)

    def comparison_images(self) -> tuple[torch.Tensor, torch.Tensor]:
        real = to_unit_interval(self.data.test_images[:NUM_COMPARISON])
        return real, self.generate(self.fixed_h[:NUM_COMPARISON])


# model name -> (its config class, its task class)
TASKS = {"vae": (VAEConfig, VAETask), "gan": (GANConfig, GANTask)}
