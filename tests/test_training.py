"""The shared training loop on real (committed) MNIST: it learns, resumes exactly, stops on divergence
and rejects bad configs.

    pytest tests/test_training.py -q
"""

import pytest
import torch

from genmodels.data import load_dataset
from genmodels.gan import GANConfig
from genmodels.loop import (
    EVAL_SEED,
    TrainConfig,
    Trainer,
    TrainingDiverged,
    export_model,
    load_model,
)
from genmodels.tasks import elbo_means, seeded_test_subset
from genmodels.vae import VAEConfig

SUBSET = 512
BATCH = 64
# Two small batches: enough where a test is about mechanics (reports, resume, divergence), not
# learning; a GAN step on a batch of 64 takes seconds on one CPU thread.
SMALL = {"train_subset": 32, "batch_size": 16}


@pytest.fixture(scope="module")
def mnist(data_dir):
    return load_dataset("mnist", data_dir)


def make_trainer(model, mnist, epochs=2, model_cfg=None, **train):
    model_cfg = model_cfg or (VAEConfig() if model == "vae" else GANConfig(latent_dim=16))
    # No last-epoch IWAE (K importance samples of every test image): tests/test_scores.py checks it.
    train = {"device": "cpu", "num_threads": 1, "train_subset": SUBSET, "batch_size": BATCH,
             "iwae_samples": 0, **train}
    cfg = TrainConfig(epochs=epochs, **train)
    return Trainer.create(model, model_cfg, cfg, mnist)


def test_vae_training_improves_the_validation_elbo(mnist):
    trainer = make_trainer("vae", mnist, epochs=3, seed=0)
    history = trainer.fit()
    assert [m["epoch"] for m in history] == [1, 2, 3]
    elbos = [m["val_elbo"] for m in history]
    assert elbos[-1] > elbos[0] + 10, elbos  # nats per image
    last = history[-1]
    assert last["val_elbo"] == pytest.approx(last["val_recon"] - last["val_kl"], rel=1e-5)
    assert -550 < last["val_elbo"] < 0 and last["val_kl"] > 0
    assert not any(k.startswith("test_") for m in history for k in m)  # the test split: once, after
    test = trainer.test()
    assert set(test) == {"test_elbo", "test_recon", "test_kl"}  # iwae_samples=0 here
    assert abs(test["test_elbo"] - last["val_elbo"]) < 15  # same model, other images


def test_the_validation_split_is_fixed_held_out_and_never_trained_on(mnist):
    trainer = make_trainer("vae", mnist, epochs=1, train_subset=None)
    data = trainer.data
    assert len(data.val_images) == round(0.1 * len(mnist.train_images))
    assert len(data.train_images) + len(data.val_images) == len(mnist.train_images)
    # The same images whatever the run's seed or its --train-subset, none of them trained on.
    other = make_trainer("vae", mnist, epochs=1, seed=7, train_subset=500)
    assert torch.equal(other.data.val_images, data.val_images)
    trained = {row.numpy().tobytes() for row in data.train_images}
    assert not any(row.numpy().tobytes() in trained for row in data.val_images)
    with pytest.raises(ValueError, match="val_fraction"):
        TrainConfig(val_fraction=1.0)


def test_gan_epoch_reports_its_diagnostics(mnist):
    seen = []
    trainer = make_trainer("gan", mnist, epochs=1, **SMALL)
    trainer.fit(on_epoch=seen.append)
    (report,) = seen
    assert {"loss_d", "loss_g", "d_real", "d_fake"} <= set(report.metrics)
    assert 0 < report.metrics["d_real"] < 1 and 0 < report.metrics["d_fake"] < 1
    assert report.samples.shape == (64, 1, 28, 28) and report.is_last
    assert 0 <= report.samples.min() and report.samples.max() <= 1


@pytest.mark.parametrize("model", ["vae", "gan"])
def test_resume_continues_exactly(model, mnist, tmp_path):
    """2 epochs straight == 1 epoch, checkpoint, a fresh process-like restart, 1 more epoch."""
    straight = make_trainer(model, mnist, epochs=2, seed=3, **SMALL)
    straight.fit()

    first = make_trainer(model, mnist, epochs=2, seed=3, **SMALL)
    first.run_epoch()
    path = first.save_checkpoint(tmp_path / "ckpt.pt")
    torch.manual_seed(999)  # whatever happened in between must not matter
    resumed = make_trainer(model, mnist, epochs=2, seed=3, **SMALL)
    resumed.resume(path)
    assert resumed.epoch == 1
    resumed.fit()

    for name, module in straight.task.modules.items():
        for (key, a), b in zip(module.state_dict().items(),
                               resumed.task.modules[name].state_dict().values()):
            assert torch.equal(a, b), f"{name}.{key} differs after resume"
    drop_timing = lambda h: [{k: v for k, v in m.items() if "seconds" not in k} for m in h]  # noqa: E731
    assert drop_timing(resumed.history) == drop_timing(straight.history)


@pytest.mark.parametrize("model", ["vae", "gan"])
def test_a_trained_model_loads_from_its_checkpoint_and_from_plain_files(model, mnist, tmp_path):
    trainer = make_trainer(model, mnist, epochs=1, **SMALL)
    trainer.fit()
    checkpoint = trainer.save_checkpoint(tmp_path / "checkpoint.pt")
    exported = export_model(checkpoint, tmp_path / "best_model")
    assert sorted(p.name for p in exported.iterdir()) == ["model.json", "weights.pt"]
    torch.load(exported / "weights.pt", weights_only=True)  # tensors only: no pickled code
    trained = trainer.task.modules[trainer.task.sampler].eval()
    noise = torch.randn(8, trained.latent_dim)
    expected = trained.sample(noise) if model == "vae" else trained(noise)
    for source in (checkpoint, exported):
        network = load_model(source)
        assert type(network) is type(trained) and not network.training
        drawn = network.sample(noise) if model == "vae" else network(noise)
        assert torch.equal(drawn, expected)


def test_vae_tests_on_a_fixed_seeded_test_subset(mnist):
    trainer = make_trainer("vae", mnist, epochs=1, test_images=300, iwae_samples=3,
                           iwae_images=100)
    task = trainer.task
    chosen = seeded_test_subset(task.test_targets, 300)
    # The same images in every run, and not simply the first 300 of the split.
    other = make_trainer("vae", mnist, seed=5).task
    assert torch.equal(seeded_test_subset(other.test_targets, 300), chosen)
    assert not torch.equal(chosen, task.test_targets[:300])
    metrics = trainer.test()
    torch.manual_seed(EVAL_SEED)  # the test's own noise (one z per image), as Trainer.test draws it
    assert metrics["test_elbo"] == pytest.approx(elbo_means(task.model, chosen, task.autocast)["elbo"])
    # IWAE (K = 3) bounds log p(x) at least as tightly as the ELBO on the same 100 images.
    elbo_100 = elbo_means(task.model, chosen[:100], task.autocast)["elbo"]
    assert metrics["test_iwae"] > elbo_100 - 2.0
    assert "test_iwae" not in make_trainer("vae", mnist, epochs=1).test()  # iwae_samples=0


def test_diverging_gan_stops_with_a_clear_status(mnist):
    trainer = make_trainer("gan", mnist, epochs=2, model_cfg=GANConfig(lr_g=1e30, lr_d=1e30),
                           **SMALL)
    with pytest.raises(TrainingDiverged, match="diverged") as err:
        trainer.fit()
    assert err.value.epoch == 1


def test_bf16_autocast_runs_on_cpu(mnist):
    history = make_trainer("vae", mnist, epochs=1, precision="bf16",
                           **SMALL).fit()
    assert torch.isfinite(torch.tensor(history[0]["val_elbo"]))


@pytest.mark.parametrize("build, message", [
    (lambda: VAEConfig(dropout=1.0), "dropout"),
    (lambda: VAEConfig(latent_dim=0), "latent_dim"),
    (lambda: VAEConfig(lr=-1e-3), "lr"),
    (lambda: GANConfig(lr_d=-1.0), "lr_d"),
    (lambda: GANConfig(latent_dim=0), "latent_dim"),
    (lambda: TrainConfig(epochs=0), "epochs"),
    (lambda: TrainConfig(dataset="cifar10"), "unknown dataset"),
    (lambda: TrainConfig(precision="fp8"), "precision"),
    (lambda: TrainConfig(test_images=0), "test_images"),
    (lambda: TrainConfig(iwae_images=-5), "iwae_images"),
])
def test_bad_configs_are_clear_errors(build, message):
    with pytest.raises(ValueError, match=message):
        build()


def test_cuda_request_without_a_gpu_is_a_clear_error(mnist):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    with pytest.raises(ValueError, match="no GPU"):
        make_trainer("vae", mnist, device="cuda")
