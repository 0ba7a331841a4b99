"""Fused groups (genmodels.fused) compute exactly what their members' standalone models compute.

Each member of a K = 3 group (different dropout, latent size and learning rates) is checked against
the real standalone task (`VAETask` / `GANTask`, with `torch.optim.Adam`) trained from the same
initial weights on the same batches with the same noise and the same dropout masks (recorded in
the fused run and replayed in the standalone one): losses agree within 1e-4 relative at every
step, and after 20 steps each weight tensor within 1e-4 relative (in norm), in train and in eval
mode. A member driven to divergence is frozen without touching
the others, and a member added to a training group (a refill) trains as its standalone model from
its arrival on, the others as if nobody had come.

    pytest tests/test_fused.py -q
"""

import contextlib
import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from genmodels.data import load_dataset, to_unit_interval
from genmodels.fused import layers as fused_layers
from genmodels.fused import streams
from genmodels.fused.layers import MemberConv2d, MemberConvTranspose2d, conv_weights
from genmodels.fused.optim import StackedAdam
from genmodels.fused.tasks import FusedConfig, FusedGANTask, FusedVAETask
from genmodels.gan import GANConfig, discriminator_loss
from genmodels.loop import TrainConfig, Trainer, TrainingDiverged, load_checkpoint_configs
from genmodels.tasks import GANTask, VAETask
from genmodels.vae import VAEConfig

STEPS = 20
BATCH = 32
RTOL = 1e-4
HIDDEN = 128  # a narrower VAE keeps the test quick; the layers are the same
SEED = 0

VAE_MEMBERS = [VAEConfig(latent_dim=4, dropout=0.0, lr=1e-3, hidden_dim=HIDDEN),
               VAEConfig(latent_dim=9, dropout=0.2, lr=3e-4, hidden_dim=HIDDEN),
               VAEConfig(latent_dim=6, dropout=0.5, lr=2e-3, hidden_dim=HIDDEN)]
GAN_MEMBERS = [GANConfig(latent_dim=8, lr_g=2e-4, lr_d=2e-4, dropout=0.0),
               GANConfig(latent_dim=16, lr_g=5e-4, lr_d=1e-4, beta1=0.3, dropout=0.2),
               GANConfig(latent_dim=12, lr_g=1e-4, lr_d=4e-4, beta2=0.99, dropout=0.4)]


@pytest.fixture(scope="module")
def mnist(data_dir):
    return load_dataset("mnist", data_dir)


def train_cfg(seed=SEED, **kw):
    return TrainConfig(batch_size=BATCH, seed=seed, device="cpu", iwae_samples=0, **kw)


def batches(mnist, steps=STEPS):
    generator = torch.Generator().manual_seed(1)
    order = torch.randperm(len(mnist.train_images), generator=generator)
    return [to_unit_interval(mnist.train_images[i]) for i in order[:steps * BATCH].split(BATCH)]


class ReplayDropout(nn.Module):
    """nn.Dropout with the masks a fused run drew, replayed in order. Each mask carries its scale
    (1 / (1 - p) or 0, `MemberDropout.scaled_mask`), as the mask nn.Dropout multiplies by on a
    CPU does (bernoulli(1 - p) divided by 1 - p)."""

    def __init__(self, masks: list[torch.Tensor]):
        super().__init__()
        self.masks = list(masks)

    def forward(self, x):
        if not self.training:
            return x
        return x * self.masks.pop(0)


def replace_dropouts(module: nn.Module, fused_layers, k: int, masks_per_layer) -> None:
    """Swap the module's nn.Dropout layers, in order, for replays of member k's masks."""
    layers = [(parent, name, child) for parent in module.modules()
              for name, child in parent.named_children() if isinstance(child, nn.Dropout)]
    assert len(layers) == len(masks_per_layer) == len(fused_layers)
    for (parent, name, child), fused, masks in zip(layers, fused_layers, masks_per_layer):
        assert child.p == pytest.approx(float(fused.p[k]))
        setattr(parent, name, ReplayDropout(masks))


def standalone(task_class, cfg, mnist, seed=SEED):
    torch.manual_seed(seed)  # as Trainer.create seeds before building the task
    return task_class(cfg, mnist, torch.device("cpu"), train_cfg(seed), contextlib.nullcontext)


def assert_close_states(actual: dict, expected: dict, rtol: float = RTOL) -> None:
    """Every tensor within RTOL of the standalone one, relative to its norm: fp32 sums taken in
    another order (a batched product against a plain one) differ in the last bits, and Adam
    turns such a difference on a near-zero gradient into a weight difference of ~1e-6 absolute,
    which is large relative to a weight that happens to be near 0 but not to the tensor."""
    assert actual.keys() == expected.keys()
    for name in expected:
        if expected[name].is_floating_point():
            error = (actual[name] - expected[name]).norm() / expected[name].norm().clamp_min(1e-12)
            assert error <= rtol, f"{name}: relative error {error:.2e}"


def record(dropouts) -> None:
    for layer in dropouts:
        layer.recorded = []


def replay(dropout: fused_layers.MemberDropout, masks: list[torch.Tensor]) -> None:
    """The layer multiplies by `masks`, in order, instead of drawing its own."""
    queue = list(masks)
    dropout.scaled_mask = lambda shape, dtype: queue.pop(0)


# ---- VAE -------------------------------------------------------------------------------------
def run_fused_vae(mnist, members, data):
    fused = FusedVAETask(FusedConfig(members), mnist, torch.device("cpu"), train_cfg(),
                         contextlib.nullcontext)
    record(fused.model.drop)
    generator = torch.Generator().manual_seed(2)
    noise, losses = [], []
    for x in data:
        eps = torch.randn(len(members), BATCH, fused.model.latent_dim, generator=generator)
        noise.append(eps)
        losses.append(fused.update(x, eps)["train_loss"])
    return fused, noise, torch.stack(losses)


def replay_vae_member(mnist, fused, k, data, noise, seed=SEED):
    cfg = fused.cfg.members[k]
    task = standalone(VAETask, cfg, mnist, seed)
    masks = [[m[k] for m in layer.recorded] for layer in fused.model.drop]
    replace_dropouts(task.model, fused.model.drop, k, masks)
    losses = [task.update(x, eps[k, :, :cfg.latent_dim])["train_loss"] for x, eps in zip(data, noise)]
    return task, torch.stack(losses)


def test_fused_vae_members_start_with_their_standalone_weights(mnist):
    fused = FusedVAETask(FusedConfig(VAE_MEMBERS), mnist, torch.device("cpu"), train_cfg(),
                         contextlib.nullcontext)
    for k, cfg in enumerate(VAE_MEMBERS):
        expected = standalone(VAETask, cfg, mnist).model.state_dict()
        for name, value in fused.model.member(k).state_dict().items():
            assert torch.equal(value, expected[name]), name


def test_fused_vae_matches_standalone_members_after_20_steps(mnist):
    data = batches(mnist)
    fused, noise, fused_losses = run_fused_vae(mnist, VAE_MEMBERS, data)
    for k in range(len(VAE_MEMBERS)):
        task, losses = replay_vae_member(mnist, fused, k, data, noise)
        torch.testing.assert_close(fused_losses[:, k], losses, rtol=RTOL, atol=0)
        assert_close_states(fused.model.member(k).state_dict(), task.model.state_dict())
        # eval mode: dropout off, the posterior mean decoded, on test images
        task.model.eval(), fused.model.eval()
        real = to_unit_interval(mnist.test_images[:64])
        mu, logvar = fused.model.encode(real)
        mu_k, logvar_k = task.model.encode(real)
        latent = VAE_MEMBERS[k].latent_dim
        torch.testing.assert_close(mu[k, :, :latent], mu_k, rtol=RTOL, atol=1e-5)
        torch.testing.assert_close(logvar[k, :, :latent], logvar_k, rtol=RTOL, atol=1e-5)
        assert torch.equal(mu[k, :, latent:], torch.zeros_like(mu[k, :, latent:]))  # padding stays 0
        torch.testing.assert_close(fused.model.sample(mu)[k], task.model.sample(mu_k),
                                   rtol=RTOL, atol=1e-5)


def assert_same_members(group_a, group_b, members) -> None:
    """Bitwise: members' slices of every parameter and buffer are equal in the two groups."""
    for module_a, module_b in zip(group_a.modules.values(), group_b.modules.values()):
        state_b = module_b.state_dict()
        for name, value in module_a.state_dict().items():
            if value.dim() > 0:
                assert torch.equal(value[members], state_b[name][members]), name


def test_a_diverging_vae_member_is_frozen_and_the_others_are_untouched(mnist):
    """The same group with member 1 healthy, and with member 1 at an absurd learning rate: members
    0 and 2 end bit-for-bit the same, so nothing of member 1 reaches them."""
    absurd = VAEConfig(latent_dim=5, dropout=0.1, lr=1e4, hidden_dim=HIDDEN)
    healthy = VAEConfig(latent_dim=5, dropout=0.1, lr=1e-3, hidden_dim=HIDDEN)
    data = batches(mnist)
    torch.manual_seed(5)
    sick, _, losses = run_fused_vae(mnist, [VAE_MEMBERS[0], absurd, VAE_MEMBERS[2]], data)
    torch.manual_seed(5)
    well, _, _ = run_fused_vae(mnist, [VAE_MEMBERS[0], healthy, VAE_MEMBERS[2]], data)
    assert sick.status.active.tolist() == [True, False, True]
    assert well.status.active.tolist() == [True, True, True]
    frozen_at = sick.status.diverged_step[1].item()
    assert 1 <= frozen_at < STEPS
    assert (losses[frozen_at - 1:, 1] == 0).all()  # its metrics read 0 from then on
    for name, value in sick.model.member(1).state_dict().items():
        assert torch.isfinite(value.float()).all(), name  # frozen at its last finite weights
    assert_same_members(sick, well, [0, 2])


# ---- a member joins a training group ---------------------------------------------------------
ARRIVAL = 8  # steps the group trains before a new member joins
# Old members of a grown group against a group that never grew: bitwise on the CPU these tests
# were written on, but a fused product over K + 1 members may round differently from one over K
# on another.
EXACT = 1e-6
NEW_SEED = 7  # the newcomer's seed, not the group's: its start must follow the seed it is given


def vae_group(mnist, members, **cfg):
    return FusedVAETask(FusedConfig(list(members), **cfg), mnist, torch.device("cpu"), train_cfg(),
                        contextlib.nullcontext)


def train_vae_group(fused, data, noise):
    return torch.stack([fused.update(x, eps)["train_loss"] for x, eps in zip(data, noise)])


def split_noise(sizes, steps, width, seed):
    """Noise for `steps[i]` steps of a group of `sizes[i]` members, one phase after the other."""
    generator = torch.Generator().manual_seed(seed)
    return [[torch.randn(k, *width, generator=generator) for _ in range(n)] for k, n in zip(sizes, steps)]


def assert_same_as_alone(grown, alone) -> None:
    """The old members' slices of every stacked weight, buffer and Adam moment in the grown group
    are those of the group that never grew (within EXACT)."""
    old = alone.num_members
    for grown_module, module in zip(grown.modules.values(), alone.modules.values()):
        state = {name: value for name, value in module.state_dict().items() if value.dim() > 0}
        assert_close_states({name: grown_module.state_dict()[name][:old] for name in state}, state, EXACT)
    for name, optimizer in alone.optimizers.items():
        grown_optimizer = grown.optimizers[name]
        assert torch.equal(grown_optimizer.steps[:old], optimizer.steps)
        for grown_moment, moment in zip(grown_optimizer.exp_avg + grown_optimizer.exp_avg_sq,
                                        optimizer.exp_avg + optimizer.exp_avg_sq):
            assert_close_states({"moment": grown_moment[:old]}, {"moment": moment}, EXACT)


def test_a_vae_member_added_to_a_training_group_trains_as_its_standalone_model(mnist):
    """Two members train ARRIVAL steps, then a third joins (`add_members`, from NEW_SEED): from
    then on the newcomer computes what its standalone VAE from NEW_SEED computes on the same
    batches (same noise, same dropout masks), and the two old members what they would have
    computed had nobody joined (a group that never grew, fed their share of the same noise and
    masks)."""
    data = batches(mnist)
    old, newcomer = VAE_MEMBERS[:2], VAE_MEMBERS[2]  # latent sizes 4, 9; the newcomer's 6 fits
    before, after = split_noise([2, 3], [ARRIVAL, STEPS - ARRIVAL], (BATCH, 9), seed=2)
    grown = vae_group(mnist, old)
    train_vae_group(grown, data[:ARRIVAL], before)
    grown.add_members([newcomer], NEW_SEED)
    assert grown.num_members == 3 and grown.model.latent_dims == [4, 9, 6]
    record(grown.model.drop)
    grown_losses = train_vae_group(grown, data[ARRIVAL:], after)
    assert grown.optimizer.steps.tolist() == [STEPS, STEPS, STEPS - ARRIVAL]

    task, losses = replay_vae_member(mnist, grown, 2, data[ARRIVAL:], after, seed=NEW_SEED)
    torch.testing.assert_close(grown_losses[:, 2], losses, rtol=RTOL, atol=0)
    assert_close_states(grown.model.member(2).state_dict(), task.model.state_dict())
    assert torch.equal(grown.fixed_z[2, :, :newcomer.latent_dim], task.fixed_z)
    assert not grown.fixed_z[2, :, newcomer.latent_dim:].any()  # padded as the others'

    alone = vae_group(mnist, old)
    train_vae_group(alone, data[:ARRIVAL], before)
    for layer, grown_layer in zip(alone.model.drop, grown.model.drop):
        replay(layer, [mask[:2] for mask in grown_layer.recorded])
    alone_losses = train_vae_group(alone, data[ARRIVAL:], [eps[:2] for eps in after])
    torch.testing.assert_close(grown_losses[:, :2], alone_losses, rtol=EXACT, atol=0)
    assert_same_as_alone(grown, alone)


# ---- GAN -------------------------------------------------------------------------------------
GAN_BATCH = 4  # fp64 convolutions on the CPU are slow; BatchNorm still sees 4 x H x W values
GAN_STEPS = 8  # the refill test's: half before the newcomer, half after
EVAL_IMAGES = 16  # images generated and judged in eval mode


@pytest.fixture
def fp64():
    """Build and train in fp64 (see the module docstring), restored afterwards."""
    dtype, threads = torch.get_default_dtype(), torch.get_num_threads()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(dtype)
    torch.set_num_threads(threads)


def gan_batches(mnist):
    return [x[:GAN_BATCH].double() for x in batches(mnist)]


def run_fused_gan(mnist, members, data):
    fused = FusedGANTask(FusedConfig(members), mnist, torch.device("cpu"),
                         train_cfg(), contextlib.nullcontext)
    record(fused.discriminator.drops)
    generator = torch.Generator().manual_seed(3)
    noise, losses = [], []
    for x in data:
        h = torch.randn(len(members), len(x), fused.generator.latent_dim, generator=generator)
        noise.append(h)
        out = fused.update(x, h)
        losses.append(torch.stack([out["loss_d"], out["loss_g"]]))
    return fused, noise, torch.stack(losses)  # [steps, 2, K]


def replay_gan_member(mnist, fused, k, data, noise, seed=SEED):
    cfg = fused.cfg.members[k]
    task = standalone(GANTask, cfg, mnist, seed)
    channels = [layer.channels for layer in fused.discriminator.drops]
    masks = [[m.unflatten(1, (fused.num_members, c))[:, k] for m in layer.recorded]
             for layer, c in zip(fused.discriminator.drops, channels)]
    replace_dropouts(task.discriminator, fused.discriminator.drops, k, masks)
    losses = []
    for x, h in zip(data, noise):
        out = task.update(x, h[k, :, :cfg.latent_dim])
        losses.append(torch.stack([out["loss_d"], out["loss_g"]]))
    return task, torch.stack(losses)


@pytest.mark.slow
def test_fused_gan_matches_standalone_members_after_20_steps(mnist, fp64):
    data = gan_batches(mnist)
    fused, noise, fused_losses = run_fused_gan(mnist, GAN_MEMBERS, data)
    # eval mode (BatchNorm's running statistics, no dropout), on EVAL_IMAGES fixed-noise samples
    # and real test images; the fused passes once for every member
    generated = fused.generate(fused.fixed_h[:, :EVAL_IMAGES])
    fused.discriminator.eval()
    real = to_unit_interval(mnist.test_images[:EVAL_IMAGES]).double() * 2 - 1
    judged = fused.discriminator(real)
    for k in range(len(GAN_MEMBERS)):
        task, losses = replay_gan_member(mnist, fused, k, data, noise)
        torch.testing.assert_close(fused_losses[:, :, k], losses.to(fused_losses.dtype), rtol=RTOL, atol=1e-6)
        assert_close_states(fused.generator.member(k).state_dict(), task.generator.state_dict())
        assert_close_states(fused.discriminator.member(k).state_dict(),
                            task.discriminator.state_dict())
        torch.testing.assert_close(generated[k], task.generate(task.fixed_h[:EVAL_IMAGES]),
                                   rtol=RTOL, atol=1e-5)
        task.discriminator.eval()
        torch.testing.assert_close(judged[k], task.discriminator(real), rtol=RTOL, atol=1e-5)


@pytest.mark.slow
def test_a_diverging_gan_member_is_frozen_and_the_others_are_untouched(mnist):
    absurd = GANConfig(latent_dim=8, lr_g=1e30, lr_d=1e30)  # overflows fp32
    healthy = GANConfig(latent_dim=8)
    data = [x[:GAN_BATCH] for x in batches(mnist)]
    torch.manual_seed(5)
    sick, _, _ = run_fused_gan(mnist, [GAN_MEMBERS[0], absurd, GAN_MEMBERS[2]], data)
    torch.manual_seed(5)
    well, _, _ = run_fused_gan(mnist, [GAN_MEMBERS[0], healthy, GAN_MEMBERS[2]], data)
    assert sick.status.active.tolist() == [True, False, True]
    assert_same_members(sick, well, [0, 2])
    for name, value in sick.generator.member(1).state_dict().items():
        assert torch.isfinite(value.float()).all(), name


def gan_group(mnist, members):
    return FusedGANTask(FusedConfig(list(members)), mnist, torch.device("cpu"), train_cfg(),
                        contextlib.nullcontext)


def train_gan_group(fused, data, noise):
    steps = [fused.update(x, h) for x, h in zip(data, noise)]
    return torch.stack([torch.stack([out["loss_d"], out["loss_g"]]) for out in steps])  # [steps, 2, K]


@pytest.mark.slow
def test_a_gan_member_added_to_a_training_group_trains_as_its_standalone_model(mnist, fp64):
    """The VAE's refill test above for the GAN (fp64, as its 20-step test): the newcomer trains as
    its standalone GAN from NEW_SEED (BatchNorm statistics included), the old members as if
    nobody had joined."""
    data = gan_batches(mnist)[:GAN_STEPS]
    arrival = GAN_STEPS // 2
    old, newcomer = GAN_MEMBERS[:2], GAN_MEMBERS[2]  # latent sizes 8, 16; the newcomer's 12 fits
    before, after = split_noise([2, 3], [arrival, GAN_STEPS - arrival], (GAN_BATCH, 16), seed=3)
    grown = gan_group(mnist, old)
    train_gan_group(grown, data[:arrival], before)
    grown.add_members([newcomer], NEW_SEED)
    record(grown.discriminator.drops)
    grown_losses = train_gan_group(grown, data[arrival:], after)

    task, losses = replay_gan_member(mnist, grown, 2, data[arrival:], after, seed=NEW_SEED)
    torch.testing.assert_close(grown_losses[:, :, 2], losses.to(grown_losses.dtype), rtol=RTOL, atol=1e-6)
    assert_close_states(grown.generator.member(2).state_dict(), task.generator.state_dict())
    assert_close_states(grown.discriminator.member(2).state_dict(), task.discriminator.state_dict())
    assert torch.equal(grown.fixed_h[2, :, :newcomer.latent_dim], task.fixed_h)

    alone = gan_group(mnist, old)
    train_gan_group(alone, data[:arrival], before)
    for layer, grown_layer in zip(alone.discriminator.drops, grown.discriminator.drops):
        replay(layer, [mask.unflatten(1, (3, layer.channels))[:, :2].flatten(1, 2)
                       for mask in grown_layer.recorded])
    alone_losses = train_gan_group(alone, data[arrival:], [h[:2] for h in after])
    torch.testing.assert_close(grown_losses[:, :, :2], alone_losses, rtol=EXACT, atol=0)
    assert_same_as_alone(grown, alone)


@pytest.mark.parametrize("fused", [False, True])
def test_the_generator_step_computes_no_discriminator_gradients(mnist, fused):
    """G's loss reaches G through D. D's weight gradients on that way would be thrown away (the
    next D step clears them first), so the G step skips them: after a whole step, D holds the
    gradients of its own step alone, standalone and fused."""
    members = [GANConfig(latent_dim=8), GANConfig(latent_dim=12, lr_g=1e-4)]  # no dropout: replayable
    cpu, no_autocast = torch.device("cpu"), contextlib.nullcontext
    task = (FusedGANTask(FusedConfig(members), mnist, cpu, train_cfg(), no_autocast) if fused
            else standalone(GANTask, members[0], mnist))
    x = batches(mnist, steps=1)[0][:GAN_BATCH]
    h = torch.randn(*([len(members)] if fused else []), GAN_BATCH, task.generator.latent_dim)
    generator, discriminator = copy.deepcopy(task.generator), copy.deepcopy(task.discriminator)
    real_logits, fake_logits = discriminator(x * 2 - 1), discriminator(generator(h).detach())
    discriminator_loss(real_logits, fake_logits).sum().backward()  # D's step alone, from the same weights
    task.update(x, h)
    for name, param in task.discriminator.named_parameters():
        torch.testing.assert_close(param.grad, discriminator.get_parameter(name).grad, msg=name)


@pytest.mark.parametrize("channels", [0, 3], ids=["member-major", "channel-stacked"])
def test_member_dropout_drops_each_members_share_and_scales_the_rest(channels):
    """What the replayed masks cannot show: each member drops about its own p of the units, and
    keeps the rest scaled by 1 / (1 - p), as nn.Dropout does."""
    p = torch.tensor([0.0, 0.2, 0.5])
    drop = fused_layers.MemberDropout(p, channels=channels)
    drop.recorded = []
    torch.manual_seed(SEED)
    x = torch.ones(3, 400, 500) if channels == 0 else torch.ones(200, 3 * channels, 20, 20)
    out = drop(x)
    per_member = out if channels == 0 else fused_layers.to_members(out, 3)
    assert torch.equal(out, drop.recorded[0])  # the mask is what the ones were multiplied by
    for k, pk in enumerate(p.tolist()):
        values = per_member[k]
        kept = values != 0
        torch.testing.assert_close(values[kept], torch.full_like(values[kept], 1 / (1 - pk)))
        # 200,000+ units a member: 0.005 is more than four standard deviations at p = 0.5
        assert 1 - kept.double().mean().item() == pytest.approx(pk, abs=0.005)
    drop.eval()
    assert drop(x) is x


@pytest.mark.parametrize("transposed, size, kernel, stride, padding, output_padding", [
    (False, 14, 5, 2, 2, 0), (False, 4, 5, 2, 2, 0), (False, 9, 3, 1, 0, 0),
    (True, 1, 5, 2, 1, 0), (True, 7, 5, 2, 2, 1), (True, 5, 4, 3, 1, 1), (True, 6, 3, 1, 1, 0),
])
def test_member_convs_are_each_members_own_convolution(transposed, size, kernel, stride, padding,
                                                       output_padding):
    """Outputs and gradients equal K standalone (transposed) convolutions, for the
    seed's shapes and a few others (fp64, so only the summation order may differ)."""
    torch.manual_seed(0)
    k, c_in, c_out = 3, 4, 5
    if transposed:
        layers = [nn.ConvTranspose2d(c_in, c_out, kernel, stride, padding, output_padding).double()
                  for _ in range(k)]
        fused = MemberConvTranspose2d(layers)
    else:
        layers = [nn.Conv2d(c_in, c_out, kernel, stride, padding).double() for _ in range(k)]
        fused = MemberConv2d(layers)
    x = torch.randn(2, k * c_in, size, size, dtype=torch.float64, requires_grad=True)
    expected = torch.cat([layer(xk) for layer, xk in zip(layers, x.chunk(k, dim=1))], dim=1)
    actual = fused(x)
    torch.testing.assert_close(actual, expected)
    direction = torch.randn_like(expected)
    grads = torch.autograd.grad((actual * direction).sum(), [x, fused.weight, fused.bias])
    expected_grads = torch.autograd.grad((expected * direction).sum(),
                                         [x] + [layer.weight for layer in layers]
                                         + [layer.bias for layer in layers])
    torch.testing.assert_close(grads[0], expected_grads[0])
    torch.testing.assert_close(grads[1], torch.stack(expected_grads[1:1 + k]))
    torch.testing.assert_close(grads[2], torch.stack(expected_grads[1 + k:]))


@pytest.mark.parametrize("transposed", [False, True])
def test_members_conv_weights_are_made_channels_last_in_one_copy(transposed):
    """What a fused convolution hands cuDNN on CUDA (`conv_weights`): each member's weight dense
    channels-last, in the compute dtype; the same convolutions and the same gradients as the plain
    slices (checked here with the CPU's channels-last convolutions, fp64)."""
    torch.manual_seed(0)
    k, c_in, c_out = 3, 4, 6
    if transposed:
        layers = [nn.ConvTranspose2d(c_in, c_out, 5, 2, 2, 1).double() for _ in range(k)]
        fused, conv = MemberConvTranspose2d(layers), F.conv_transpose2d
        options = {"stride": 2, "padding": 2, "output_padding": 1}
    else:
        layers = [nn.Conv2d(c_in, c_out, 5, 2, 2).double() for _ in range(k)]
        fused, conv, options = MemberConv2d(layers), F.conv2d, {"stride": 2, "padding": 2}
    x = torch.randn(2, c_in, 7, 7, dtype=torch.float64).contiguous(memory_format=torch.channels_last)
    prepared = conv_weights(fused.weight, torch.float64)
    assert all(w.is_contiguous(memory_format=torch.channels_last) for w in prepared)
    ys = [conv(x, wk, bk, **options) for wk, bk in zip(prepared, fused.bias)]
    want = [conv(x, wk, bk, **options) for wk, bk in zip(fused.weight.unbind(0), fused.bias)]
    for y, w in zip(ys, want):
        torch.testing.assert_close(y, w)
    direction = [torch.randn_like(w) for w in want]
    grad = torch.autograd.grad(sum((y * d).sum() for y, d in zip(ys, direction)), fused.weight)[0]
    want_grad = torch.autograd.grad(sum((w * d).sum() for w, d in zip(want, direction)), fused.weight)[0]
    torch.testing.assert_close(grad, want_grad)
    assert {w.dtype for w in conv_weights(fused.weight.float(), torch.bfloat16)} == {torch.bfloat16}


@pytest.mark.slow
def test_the_cuda_channels_last_path_trains_the_same_on_the_cpu(mnist, fp64, monkeypatch):
    """On CUDA the members' convolutions take channels-last inputs and weights (`conv_memory_format`,
    `MemberConvs.member_weights`). The CPU has channels-last convolutions too: with that path
    switched on here, a fused GAN trains as the plain CPU path does."""
    data = gan_batches(mnist)[:2]
    torch.manual_seed(1)
    plain, _, losses = run_fused_gan(mnist, GAN_MEMBERS, data)
    monkeypatch.setattr(fused_layers, "conv_memory_format", lambda device: torch.channels_last)
    torch.manual_seed(1)
    nhwc, _, nhwc_losses = run_fused_gan(mnist, GAN_MEMBERS, data)
    torch.testing.assert_close(nhwc_losses, losses, rtol=RTOL, atol=1e-8)
    for module_a, module_b in zip(nhwc.modules.values(), plain.modules.values()):
        assert_close_states(module_a.state_dict(), module_b.state_dict())


def marked_storages_of_one_step(mnist, monkeypatch):
    """A fused GAN step on the CPU, noting the storage of every tensor `SideStreams.run`
    would mark on CUDA (its `marked`, or all a job was handed). Returns the task and those storages."""
    storages = set()
    run = streams.SideStreams.run

    def run_and_note(self, jobs, marked=None):
        if marked is None:
            marked = [list(streams.handed_tensors(job)) for job in jobs]
        storages.update(t.untyped_storage().data_ptr() for tensors in marked for t in tensors)
        return run(self, jobs, marked)

    monkeypatch.setattr(streams.SideStreams, "run", run_and_note)
    fused = FusedGANTask(FusedConfig(GAN_MEMBERS), mnist, torch.device("cpu"),
                         train_cfg(), contextlib.nullcontext)
    record(fused.discriminator.drops)
    x = to_unit_interval(mnist.train_images[:GAN_BATCH])
    fused.update(x, torch.randn(len(GAN_MEMBERS), GAN_BATCH, fused.generator.latent_dim))
    return fused, storages


def test_side_streams_mark_each_members_weights_and_not_the_stacked_inputs(mnist, monkeypatch):
    """On CUDA a member's call reads its input slice only in the forward (a
    copy on its stream), and its weights in the backward too: the weights are marked, the
    channel-stacked activations are not (marked, their memory would stay unused inside a
    captured step)."""
    inputs = set()
    for cls in (fused_layers.MemberConv2d, fused_layers.MemberConvTranspose2d):
        def noting(self, x, forward=cls.forward):
            inputs.add(x.untyped_storage().data_ptr())
            return forward(self, x)

        monkeypatch.setattr(cls, "forward", noting)
    fused, marked = marked_storages_of_one_step(mnist, monkeypatch)
    convs = {name: p for module in (fused.generator, fused.discriminator)
             for name, p in module.named_parameters()
             if isinstance(module.get_submodule(name.rsplit(".", 1)[0]), fused_layers.MemberConvs)}
    assert sum(name.endswith("weight") for name in convs) == 8  # G's 4 and D's 4 layers
    unmarked = [name for name, p in convs.items() if p.untyped_storage().data_ptr() not in marked]
    assert not unmarked, unmarked
    stacked_inputs = inputs - {p.untyped_storage().data_ptr() for p in convs.values()}
    assert stacked_inputs and not stacked_inputs & marked


# ---- the shared loop -------------------------------------------------------------------------
def fused_trainer(mnist, members, **train):
    cfg = train_cfg(epochs=2, train_subset=256, num_threads=1, **train)
    return Trainer.create("fused-vae", FusedConfig(members), cfg, mnist)


def test_the_loop_trains_a_fused_group_and_reports_per_member_metrics(mnist):
    trainer = fused_trainer(mnist, VAE_MEMBERS)
    history = trainer.fit()
    last = history[-1]
    assert len(last["val_elbo"]) == len(VAE_MEMBERS) and isinstance(last["epoch"], int)
    first = history[0]["val_elbo"]
    assert all(b > a for a, b in zip(first, last["val_elbo"])), (first, last["val_elbo"])
    assert trainer.sample_history[-1].shape == (3, 64, 1, 28, 28)


def test_the_loop_keeps_going_past_one_diverged_member_and_stops_when_all_are(mnist):
    absurd = VAEConfig(latent_dim=5, lr=1e4, hidden_dim=HIDDEN)
    trainer = fused_trainer(mnist, [VAE_MEMBERS[0], absurd])
    trainer.fit()
    assert [m["active"] for m in trainer.task.status.as_list()] == [True, False]
    with pytest.raises(TrainingDiverged):
        fused_trainer(mnist, [absurd, absurd]).fit()


def test_a_fused_group_resumes_bit_exactly(mnist, tmp_path):
    straight = fused_trainer(mnist, VAE_MEMBERS)
    straight.fit()
    first = fused_trainer(mnist, VAE_MEMBERS)
    first.run_epoch()
    first.save_checkpoint(tmp_path / "checkpoint.pt")
    resumed = fused_trainer(mnist, VAE_MEMBERS)
    resumed.resume(tmp_path / "checkpoint.pt")
    resumed.fit()
    for name, value in straight.task.model.state_dict().items():
        assert torch.equal(value, resumed.task.model.state_dict()[name]), name
    assert [m["val_elbo"] for m in straight.history] == [m["val_elbo"] for m in resumed.history]


def test_a_group_that_shrank_resumes_bit_exactly(mnist, tmp_path):
    """A group keeps its padded latent size when its largest member leaves (a member stopped
    early), so a checkpoint taken after that rebuilds from the members left (as a sweep's group
    does after an interruption or a worker's death) and continues as the group would have."""
    straight = fused_trainer(mnist, VAE_MEMBERS)
    straight.run_epoch()
    straight.task.keep_members([0, 2])  # member 1, latent size 9 (the largest), stopped early
    assert straight.model_cfg.latent_width == 9
    straight.save_checkpoint(tmp_path / "checkpoint.pt")
    straight.fit()
    _, saved, _ = load_checkpoint_configs(tmp_path / "checkpoint.pt")
    resumed = Trainer.create("fused-vae", FusedConfig(**saved), straight.train_cfg, mnist)
    assert resumed.task.model.latent_dim == 9
    resumed.resume(tmp_path / "checkpoint.pt")
    resumed.fit()
    for name, value in straight.task.model.state_dict().items():
        assert torch.equal(value, resumed.task.model.state_dict()[name]), name
    assert [m["val_elbo"] for m in straight.history] == [m["val_elbo"] for m in resumed.history]
    with pytest.raises(ValueError, match="latent_width 5 is smaller than the members' largest"):
        FusedConfig(VAE_MEMBERS, latent_width=5)


def test_a_group_that_grew_resumes_bit_exactly(mnist, tmp_path):
    """A group refilled with a new member (its config in cfg.members, the width kept) saved after
    one more epoch, when its members' Adam step counts differ, rebuilds from its checkpoint's
    configs and continues as the group would have."""
    straight = fused_trainer(mnist, VAE_MEMBERS[:2])
    straight.train_cfg.epochs = 3
    straight.run_epoch()
    straight.task.add_members([VAE_MEMBERS[2]], straight.train_cfg.seed)
    assert straight.model_cfg.latent_width == 9 and len(straight.model_cfg.members) == 3
    straight.run_epoch()
    steps = straight.task.optimizer.steps.clone()
    assert steps[0] == steps[1] == 2 * steps[2] > 0  # the newcomer joined an epoch later
    straight.save_checkpoint(tmp_path / "checkpoint.pt")
    straight.fit()
    _, saved, _ = load_checkpoint_configs(tmp_path / "checkpoint.pt")
    resumed = Trainer.create("fused-vae", FusedConfig(**saved), straight.train_cfg, mnist)
    resumed.resume(tmp_path / "checkpoint.pt")
    assert torch.equal(resumed.task.optimizer.steps, steps)
    resumed.fit()
    for name, value in straight.task.model.state_dict().items():
        assert torch.equal(value, resumed.task.model.state_dict()[name]), name
    for mine, theirs in zip(straight.task.optimizer.exp_avg_sq, resumed.task.optimizer.exp_avg_sq):
        assert torch.equal(mine, theirs)
    assert [m["val_elbo"] for m in straight.history] == [m["val_elbo"] for m in resumed.history]


def test_a_new_member_must_fit_the_groups_width_and_share_its_fields(mnist):
    """A group never changes its padded latent width (its checkpoints rebuild with it), and its
    members share what fixes the network or the data: a newcomer that breaks either is refused,
    and the group is left as it was."""
    task = vae_group(mnist, VAE_MEMBERS[:2])  # latent sizes 4 and 9: width 9
    with pytest.raises(ValueError, match=r"latent_dim 12 is larger than the group's padded latent "
                                         r"width 9.*FusedConfig\(latent_width=9\)"):
        task.add_members([VAE_MEMBERS[2], VAEConfig(latent_dim=12, hidden_dim=HIDDEN)], SEED)
    with pytest.raises(ValueError, match="must share 'binarize'"):
        task.add_members([VAEConfig(latent_dim=4, hidden_dim=HIDDEN, binarize=True)], SEED)
    with pytest.raises(ValueError, match="same model"):
        task.add_members([GANConfig(latent_dim=4)], SEED)
    assert task.num_members == 2 and len(task.cfg.members) == 2 and task.cfg.latent_width is None
    assert task.model.enc1.weight.shape[0] == 2 and task.optimizer.steps.shape == (2,)
    wide = vae_group(mnist, VAE_MEMBERS[:2], latent_width=12)  # built wider: a 12 fits
    wide.add_members([VAEConfig(latent_dim=12, hidden_dim=HIDDEN)], SEED)
    assert wide.model.latent_dims == [4, 9, 12] and wide.cfg.latent_width == 12


def test_members_must_share_the_network_shape():
    with pytest.raises(ValueError, match="hidden_dim"):
        FusedConfig([VAEConfig(hidden_dim=64), VAEConfig(hidden_dim=128)])
    with pytest.raises(ValueError, match="same model"):
        FusedConfig([VAEConfig(), GANConfig()])


def test_a_shrunk_group_keeps_its_members_weights_and_optimizer_state(mnist):
    """Members that ended leave the group (they stop costing compute); the others carry on from
    exactly where they were, moments included."""
    task = FusedVAETask(FusedConfig(list(VAE_MEMBERS)), mnist, torch.device("cpu"), train_cfg(),
                        contextlib.nullcontext)
    for x in batches(mnist, 3):
        task.update(x)
    before = [task.model.member(k).state_dict() for k in (0, 2)]
    moments = [t[[0, 2]].clone() for t in task.optimizer.exp_avg_sq]
    task.keep_members([0, 2])
    assert task.num_members == 2 and task.model.latent_dims == [4, 6]
    assert [m.latent_dim for m in task.cfg.members] == [4, 6]
    for k, state in enumerate(before):
        for name, value in task.model.member(k).state_dict().items():
            assert torch.equal(value, state[name]), name
    for kept, expected in zip(task.optimizer.exp_avg_sq, moments):
        assert torch.equal(kept, expected)
    losses = torch.stack([task.update(x)["train_loss"] for x in batches(mnist, 2)])
    assert losses.shape == (2, 2) and torch.isfinite(losses).all()
    assert task.sample_images().shape[0] == 2


def test_a_shrunk_group_refills_its_freed_slot_and_keeps_its_members_as_they_were(mnist):
    """Shrink, then refill (what a sweep does when a member ends): the kept members' weights,
    moments and step counts are untouched; the newcomer starts as its standalone VAE from its
    seed, with fresh Adam state, active; the group's random stream is left where it was."""
    task = vae_group(mnist, VAE_MEMBERS)
    for x in batches(mnist, 3):
        task.update(x)
    task.keep_members([0, 2])  # member 1 (latent size 9, the widest) ended; the width stays 9
    kept = [task.model.member(k).state_dict() for k in range(2)]
    moments = [t.clone() for t in task.optimizer.exp_avg + task.optimizer.exp_avg_sq]
    newcomer = VAEConfig(latent_dim=9, dropout=0.1, lr=5e-4, hidden_dim=HIDDEN)
    rng = torch.get_rng_state()
    task.add_members([newcomer], NEW_SEED)
    assert torch.equal(torch.get_rng_state(), rng)
    assert task.num_members == 3 and task.model.latent_dims == [4, 6, 9]
    assert task.cfg.members == [VAE_MEMBERS[0], VAE_MEMBERS[2], newcomer] and task.cfg.latent_width == 9
    for k, state in enumerate(kept):
        for name, value in task.model.member(k).state_dict().items():
            assert torch.equal(value, state[name]), name
    for grown, moment in zip(task.optimizer.exp_avg + task.optimizer.exp_avg_sq, moments):
        assert torch.equal(grown[:2], moment) and not grown[2].any()
    assert task.optimizer.steps.tolist() == [3, 3, 0]
    assert task.optimizer.lr == [VAE_MEMBERS[0].lr, VAE_MEMBERS[2].lr, newcomer.lr]
    expected = standalone(VAETask, newcomer, mnist, NEW_SEED).model.state_dict()
    for name, value in task.model.member(2).state_dict().items():
        assert torch.equal(value, expected[name]), name
    assert task.status.as_list()[2] == {"active": True, "diverged_step": -1}
    losses = torch.stack([task.update(x)["train_loss"] for x in batches(mnist, 2)])
    assert losses.shape == (2, 3) and torch.isfinite(losses).all()
    assert task.optimizer.steps.tolist() == [5, 5, 2]
    assert task.sample_images().shape[0] == 3


def step_stacked_and_torch_adams(optimizer, weight, bias, standalone, adams, steps) -> None:
    """`steps` steps of the stacked optimizer and of each member's torch.optim.Adam on the same
    random gradients, then each member's weights compared."""
    members = len(standalone)
    for _ in range(steps):
        grads = torch.randn(members, 5, 4), torch.randn(members, 5)
        optimizer.zero_grad()
        weight.grad, bias.grad = grads[0].clone(), grads[1].clone()
        optimizer.step(torch.ones(members, dtype=torch.bool))
        for k, (params, adam) in enumerate(zip(standalone, adams)):
            adam.zero_grad()
            params[0].grad, params[1].grad = grads[0][k].clone(), grads[1][k].clone()
            adam.step()
    for k, params in enumerate(standalone):
        torch.testing.assert_close(weight[k], params[0], rtol=1e-6, atol=1e-7)
        torch.testing.assert_close(bias[k], params[1], rtol=1e-6, atol=1e-7)


def test_stacked_adam_steps_each_member_as_torch_adam_and_skips_frozen_ones():
    """Each member's own lr and betas, Adam's arithmetic (torch's fused kernel, against the default
    torch.optim.Adam), each member's own step count: a member added after 10 steps steps as a
    fresh torch.optim.Adam from its start. A frozen member keeps its weights and moments even
    under a NaN gradient."""
    torch.manual_seed(0)
    lrs, beta1s, beta2s = [1e-3, 3e-2, 5e-4], [0.9, 0.5, 0.8], [0.999, 0.99, 0.9]
    weight, bias = nn.Parameter(torch.randn(3, 5, 4)), nn.Parameter(torch.randn(3, 5))
    optimizer = StackedAdam([weight, bias], lrs, (beta1s, beta2s))
    standalone = [[nn.Parameter(weight[k].detach().clone()), nn.Parameter(bias[k].detach().clone())]
                  for k in range(3)]
    adams = [torch.optim.Adam(params, lr=lrs[k], betas=(beta1s[k], beta2s[k]))
             for k, params in enumerate(standalone)]
    step_stacked_and_torch_adams(optimizer, weight, bias, standalone, adams, 10)

    new_weight, new_bias = torch.randn(5, 4), torch.randn(5)
    weight = nn.Parameter(torch.cat([weight.detach(), new_weight[None]]))
    bias = nn.Parameter(torch.cat([bias.detach(), new_bias[None]]))
    optimizer = optimizer.add_members([weight, bias], [2e-3], ([0.7], [0.95]))
    standalone.append([nn.Parameter(new_weight.clone()), nn.Parameter(new_bias.clone())])
    adams.append(torch.optim.Adam(standalone[3], lr=2e-3, betas=(0.7, 0.95)))
    step_stacked_and_torch_adams(optimizer, weight, bias, standalone, adams, 5)
    assert optimizer.steps.tolist() == [15, 15, 15, 5]

    before = [t.detach().clone() for t in (weight, bias, *optimizer.exp_avg, *optimizer.exp_avg_sq)]
    weight.grad = torch.randn(4, 5, 4)
    weight.grad[1] = float("nan")
    bias.grad = torch.randn(4, 5)
    optimizer.step(torch.tensor([True, False, True, True]))
    after = [weight, bias, *optimizer.exp_avg, *optimizer.exp_avg_sq]
    for old, new in zip(before, after):
        assert torch.equal(old[1], new[1])  # member 1 untouched
        assert not torch.equal(old[0], new[0]) and torch.isfinite(new).all()


def test_stacked_adam_saves_each_members_step_count():
    """A checkpoint carries every member's step count (a refilled member counts from its arrival),
    and loads only into an optimizer of as many members."""
    weight = nn.Parameter(torch.randn(3, 2))
    optimizer = StackedAdam([weight], [1e-3] * 3, ([0.9] * 3, [0.999] * 3))
    optimizer.steps.copy_(torch.tensor([7.0, 7.0, 2.0]))
    state = optimizer.state_dict()
    loaded = StackedAdam([weight], [1e-3] * 3, ([0.9] * 3, [0.999] * 3))
    loaded.load_state_dict(state)
    assert loaded.steps.tolist() == [7, 7, 2]
    with pytest.raises(ValueError, match="for 2 members, not 3"):
        loaded.load_state_dict({**state, "steps": torch.tensor([1.0, 2.0])})
