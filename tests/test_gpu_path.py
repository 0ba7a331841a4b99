"""The GPU-path options (bf16 autocast, tf32, channels-last, torch.compile) run on the CPU and train the
same model: their losses match plain fp32 within the precision's tolerance. CUDA graphs
(`cuda_graphs`, on by default) are CUDA only: on the CPU they must change nothing, and a GPU run's
checkpoint must resume here.

    pytest tests/test_gpu_path.py -q
    GENSWEEP_TEST_COMPILE=1 pytest tests/test_gpu_path.py -q   # also torch.compile on the CPU

The speed of these options is measured on a GPU by `python bench/run.py --variants ...`, not here.
torch.compile on this 2-core CPU takes minutes (Inductor builds C++ kernels), so its test runs only
where a GPU is present or GENSWEEP_TEST_COMPILE=1 asks for it.
"""

import copy
import os

import pytest
import torch

from genmodels.data import iterate_batches, load_dataset
from genmodels.gan import GANConfig
from genmodels.graphs import GraphedStep
from genmodels.loop import TrainConfig, Trainer
from genmodels.vae import VAEConfig

BATCH = 32
# The GAN's bf16 convolutions take seconds per image batch on a CPU: its steps see fewer images
# (BatchNorm still normalizes over 16 x H x W values per channel).
GAN_BATCH = 16
STEPS = 3
# Same weights, same batches, same noise. fp32 with another memory layout sums in another order:
# rounding-level differences, which Adam's normalised updates grow to ~1e-4 in three steps. bf16
# keeps 8 bits of mantissa (relative error ~0.4% per op), and a few steps compound it.
TOLERANCE = {"fp32": 1e-3, "bf16": 3e-2}
COMPILE_ON_CPU = os.environ.get("GENSWEEP_TEST_COMPILE") == "1"


@pytest.fixture(scope="module")
def mnist(data_dir):
    return load_dataset("mnist", data_dir)


_REFERENCE: dict[str, list[dict[str, float]]] = {}


def reference(model: str, mnist) -> list[dict[str, float]]:
    """Plain fp32 eager losses, computed once per model."""
    if model not in _REFERENCE:
        _REFERENCE[model] = losses(model, mnist)
    return _REFERENCE[model]


def losses(model: str, mnist, **options) -> list[dict[str, float]]:
    """Per-step losses of STEPS steps from seed 0 on the same batches."""
    model_cfg = VAEConfig() if model == "vae" else GANConfig(latent_dim=16)
    batch = BATCH if model == "vae" else GAN_BATCH
    cfg = TrainConfig(batch_size=batch, device="cpu", num_threads=1, seed=0, **options)
    trainer = Trainer.create(model, model_cfg, cfg, mnist)
    images = trainer.data.train_images
    batches = iterate_batches(images, batch, torch.Generator().manual_seed(0))
    history = []
    for _, index in zip(range(STEPS), batches):
        out = trainer.train_step(images[index])
        history.append({k: v.item() for k, v in out.items()})
    return history


def assert_close(got: list[dict], want: list[dict], rel: float) -> None:
    for step, (g, w) in enumerate(zip(got, want), start=1):
        for key in w:
            assert g[key] == pytest.approx(w[key], rel=rel, abs=rel), (step, key, g, w)


# The GAN's cases take seconds to a minute on a CPU (bf16 convolutions are slow there): slow tests.
@pytest.mark.parametrize("model, options", [
    ("vae", {"precision": "bf16"}),
    ("vae", {"channels_last": True}),
    ("vae", {"precision": "bf16", "channels_last": True}),
    pytest.param("gan", {"precision": "bf16"}, marks=pytest.mark.slow),
    pytest.param("gan", {"channels_last": True}, marks=pytest.mark.slow),
    pytest.param("gan", {"precision": "bf16", "channels_last": True}, marks=pytest.mark.slow),
], ids=["vae-bf16", "vae-channels_last", "vae-bf16+channels_last", "gan-bf16",
        "gan-channels_last", "gan-bf16+channels_last"])
def test_speed_options_match_fp32(model, options, mnist):
    want = reference(model, mnist)
    assert all(v == v for step in want for v in step.values())  # finite, not NaN
    got = losses(model, mnist, **options)
    assert_close(got, want, TOLERANCE[options.get("precision", "fp32")])


def test_bf16_really_changes_the_arithmetic(mnist):
    """The autocast path is taken: bf16 losses differ from fp32 ones (within tolerance above)."""
    assert losses("vae", mnist, precision="bf16") != reference("vae", mnist)


def test_tf32_is_plain_fp32_where_there_are_no_tensor_cores(mnist):
    """tf32 changes CUDA's matrix products only: on the CPU a tf32 run is the fp32 run, bit for bit
    (so a sweep's driver or a repeat on a CPU can run a tf32 sweep's models)."""
    assert losses("vae", mnist, precision="tf32") == reference("vae", mnist)


@pytest.mark.slow
@pytest.mark.skipif(not (torch.cuda.is_available() or COMPILE_ON_CPU),
                    reason="torch.compile takes minutes on this CPU; set GENSWEEP_TEST_COMPILE=1")
@pytest.mark.parametrize("model", ["vae", "gan"])
def test_compiled_step_matches_eager(model, mnist):
    import torch._inductor.config as inductor

    # Inductor draws its own random numbers unless told to use eager's: with them, the compiled
    # step is the same computation on the same noise.
    inductor.fallback_random = True
    assert_close(losses(model, mnist, compile_mode="default"), reference(model, mnist),
                 TOLERANCE["fp32"])


def test_unknown_compile_mode_is_a_clear_error():
    with pytest.raises(ValueError, match="compile_mode"):
        TrainConfig(compile_mode="fast")


def test_cuda_graphs_change_nothing_on_the_cpu(mnist):
    """On by default, and a no-op without CUDA: the same losses bit for bit as with them off."""
    assert TrainConfig().cuda_graphs
    trainer = Trainer.create("vae", VAEConfig(), TrainConfig(device="cpu"), mnist)
    assert not trainer.uses_cuda_graphs
    assert losses("vae", mnist, cuda_graphs=False) == reference("vae", mnist)
    with pytest.raises(ValueError, match="CUDA device"):
        GraphedStep(trainer.task)


def test_a_graphed_runs_checkpoint_resumes_on_the_cpu(mnist):
    """A graphed GPU run saves capturable Adam (its step counts on the device). Resumed on the
    CPU, where capturable Adam cannot run, the optimizers go back to the default mode and the run
    goes on as if it had never stopped."""
    cfg = TrainConfig(batch_size=BATCH, device="cpu", num_threads=1, seed=0)
    trainer = Trainer.create("gan", GANConfig(latent_dim=16), cfg, mnist)
    images = trainer.data.train_images
    batches = [index for _, index in zip(range(3), iterate_batches(
        images, BATCH, torch.Generator().manual_seed(0)))]
    trainer.train_step(images[batches[0]])
    state = copy.deepcopy(trainer.state_dict())  # as on disk: not the live tensors
    for saved in state["optimizers"].values():  # what a graphed run's checkpoint holds
        for group in saved["param_groups"]:
            group["capturable"] = True
    rng = torch.get_rng_state()
    want = [trainer.train_step(images[index])["loss_d"].item() for index in batches[1:]]

    resumed = Trainer.create("gan", GANConfig(latent_dim=16), cfg, mnist)
    resumed.load_state_dict(state)
    torch.set_rng_state(rng)
    got = [resumed.train_step(images[index])["loss_d"].item() for index in batches[1:]]
    assert got == want

