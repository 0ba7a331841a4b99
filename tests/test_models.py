"""Layer-by-layer shapes of the seed report's Tables 1-4, and the losses against references.

    pytest tests/test_models.py -q
"""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.distributions import Normal, kl_divergence

from genmodels.convs import Conv2d, ConvTranspose2d
from genmodels.gan import (
    Discriminator,
    Generator,
    PositionBatchNorm,
    discriminator_loss,
    generator_loss,
)
from genmodels.vae import VAE, bernoulli_log_likelihood, elbo_terms, gaussian_kl


def layer_outputs(sequential: nn.Sequential, x: torch.Tensor) -> list[tuple[str, tuple]]:
    """(layer type, output shape) after every layer, skipping the shape-preserving dropouts."""
    shapes = []
    for layer in sequential:
        x = layer(x)
        if not isinstance(layer, nn.Dropout):
            shapes.append((type(layer).__name__, tuple(x.shape[1:])))
    return shapes


def test_vae_encoder_matches_table_1():
    vae = VAE(latent_dim=20, dropout=0.1)
    assert layer_outputs(vae.encoder, torch.zeros(3, 784)) == [
        ("Linear", (512,)), ("ELU", (512,)),
        ("Linear", (512,)), ("Tanh", (512,)),
        ("Linear", (40,)),  # 20 x 2: mean and log-variance
    ]
    assert [m.p for m in vae.encoder if isinstance(m, nn.Dropout)] == [0.1, 0.1]


def test_vae_decoder_matches_table_2():
    vae = VAE(latent_dim=20, dropout=0.1)
    assert layer_outputs(vae.decoder, torch.zeros(3, 20)) == [
        ("Linear", (512,)), ("Tanh", (512,)),
        ("Linear", (512,)), ("ELU", (512,)),
        ("Linear", (512,)), ("ELU", (512,)),
        ("Linear", (784,)),  # the sigmoid is applied in the loss and in sample()
    ]
    assert sum(isinstance(m, nn.Dropout) for m in vae.decoder) == 3
    samples = vae.sample(torch.randn(5, 20))
    assert samples.shape == (5, 1, 28, 28) and 0 <= samples.min() and samples.max() <= 1


def test_discriminator_matches_table_3():
    d = Discriminator()
    convs = [m for m in d.features if isinstance(m, nn.Conv2d)]
    assert [(c.in_channels, c.out_channels, c.kernel_size, c.stride) for c in convs] == [
        (1, 64, (5, 5), (2, 2)), (64, 128, (5, 5), (2, 2)),
        (128, 256, (5, 5), (2, 2)), (256, 512, (5, 5), (2, 2)),
    ]
    conv_shapes = [s for name, s in layer_outputs(d.features, torch.zeros(2, 1, 28, 28))
                   if name == "Conv2d"]
    assert conv_shapes == [(64, 14, 14), (128, 7, 7), (256, 4, 4), (512, 2, 2)]
    batch_norms = [m.num_features for m in d.features if isinstance(m, nn.BatchNorm2d)]
    assert batch_norms == [128, 256, 512]  # none after the first conv
    assert sum(isinstance(m, nn.LeakyReLU) for m in d.features) == 4
    assert d(torch.zeros(2, 1, 28, 28)).shape == (2,)


def test_generator_matches_table_4():
    g = Generator(latent_dim=100)
    assert layer_outputs(g.project, torch.zeros(2, 100)) == [
        ("Linear", (512,)), ("BatchNorm1d", (512,)), ("ReLU", (512,))]
    shapes = [s for name, s in layer_outputs(g.deconv, torch.zeros(2, 512, 1, 1))
              if name == "ConvTranspose2d"]
    assert shapes == [(256, 3, 3), (128, 7, 7), (64, 14, 14), (1, 28, 28)]
    assert isinstance(g.deconv[-1], nn.Tanh)
    # BatchNorm after every deconv but the last; per (channel, position) after the 1x1 -> 3x3 one.
    assert isinstance(g.deconv[1], PositionBatchNorm)
    assert [m.num_features for m in g.deconv if isinstance(m, nn.BatchNorm2d)] == [128, 64]
    out = g(torch.randn(4, 100))
    assert out.shape == (4, 1, 28, 28) and out.abs().max() <= 1


def test_kl_matches_torch_distributions():
    torch.manual_seed(0)
    mu, logvar = torch.randn(6, 20), torch.randn(6, 20)
    q = Normal(mu, torch.exp(0.5 * logvar))
    p = Normal(torch.zeros_like(mu), torch.ones_like(mu))
    expected = kl_divergence(q, p).sum(dim=1)
    torch.testing.assert_close(gaussian_kl(mu, logvar), expected)


def test_bernoulli_log_likelihood_by_hand():
    # One image of two pixels: logits 0 (p = 1/2) and log 3 (p = 3/4); targets 1 and 0.
    logits = torch.tensor([[0.0, math.log(3.0)]])
    x = torch.tensor([[1.0, 0.0]])
    expected = math.log(0.5) + math.log(0.25)
    assert bernoulli_log_likelihood(logits, x).item() == pytest.approx(expected)
    # Saturated logits stay finite (the reason to work from logits).
    assert torch.isfinite(bernoulli_log_likelihood(torch.tensor([[200.0]]), torch.tensor([[0.0]])))


def test_elbo_on_a_hand_checkable_model():
    """Zero weights: q(z|x) = N(0, I) so KL = 0, every logit is 0 so log p(x|z) = 784 log(1/2)."""
    vae = VAE(latent_dim=3, dropout=0.0)
    for p in vae.parameters():
        nn.init.zeros_(p)
    terms = elbo_terms(vae, torch.rand(4, 1, 28, 28).round())
    torch.testing.assert_close(terms["kl"], torch.zeros(4))
    torch.testing.assert_close(terms["elbo"], torch.full((4,), 784 * math.log(0.5)))


def test_gan_losses_follow_equation_2():
    # D(x) = sigmoid(0) = 1/2 everywhere: D's loss is -log(1/2) - log(1/2), G's is -log(1/2).
    zeros = torch.zeros(5)
    assert discriminator_loss(zeros, zeros).item() == pytest.approx(2 * math.log(2))
    assert generator_loss(zeros).item() == pytest.approx(math.log(2))
    # A confident, correct D has a small loss; G then has a large one (non-saturating form).
    assert discriminator_loss(torch.full((5,), 9.0), torch.full((5,), -9.0)).item() < 1e-3
    assert generator_loss(torch.full((5,), -9.0)).item() > 8


def test_position_batch_norm_normalizes_each_feature():
    norm = PositionBatchNorm(4, 3).train()
    x = torch.randn(32, 4, 3, 3) * torch.arange(1.0, 37.0).view(1, 4, 3, 3) + 5
    y = norm(x)
    assert y.shape == x.shape
    torch.testing.assert_close(y.mean(0), torch.zeros(4, 3, 3), atol=1e-5, rtol=0)
    torch.testing.assert_close(y.std(0, unbiased=False), torch.ones(4, 3, 3), atol=1e-3, rtol=0)


@pytest.mark.parametrize("transposed, channels, size, kernel, stride, padding, output_padding", [
    (False, (256, 32), 4, 5, 2, 2, 0),  # D's last convolution: a 2 x 2 map, the patch product
    (False, (8, 16), 3, 3, 1, 0, 0),  # one output position
    (False, (3, 5), 6, 3, 3, 1, 0),
    (False, (4, 6), 7, 5, 2, 2, 0),  # 16 positions: oneDNN's own
    (True, (512, 16), 1, 5, 2, 1, 0),  # G's first transposed convolution, from 1 x 1
    (True, (4, 6), 1, 5, 2, 2, 1),  # output_padding reaching past the kernel's taps
    (True, (4, 6), 1, 4, 2, 0, 1),
    (True, (4, 6), 3, 5, 2, 1, 0),  # a 3 x 3 input: oneDNN's own
])
def test_the_cpu_convolutions_compute_torchs(transposed, channels, size, kernel, stride, padding,
                                             output_padding):
    """genmodels.convs' CPU ways give F.conv2d's / F.conv_transpose2d's outputs and gradients
    (fp64, so only the summation order may differ)."""
    torch.manual_seed(0)
    c_in, c_out = channels
    layer = (ConvTranspose2d(c_in, c_out, kernel, stride, padding, output_padding) if transposed
             else Conv2d(c_in, c_out, kernel, stride, padding)).double()
    x = torch.randn(3, c_in, size, size, dtype=torch.float64, requires_grad=True)
    reference = (F.conv_transpose2d(x, layer.weight, layer.bias, stride, padding, output_padding)
                 if transposed else F.conv2d(x, layer.weight, layer.bias, stride, padding))
    actual = layer(x)
    torch.testing.assert_close(actual, reference)
    direction = torch.randn_like(reference)
    params = [x, layer.weight, layer.bias]
    torch.testing.assert_close(torch.autograd.grad((actual * direction).sum(), params),
                               torch.autograd.grad((reference * direction).sum(), params))


def test_the_gans_slow_cpu_layers_use_genmodels_convs():
    assert type(Discriminator().features[-4]) is Conv2d  # the 2 x 2 layer
    assert type(Generator().deconv[0]) is ConvTranspose2d  # the 1 x 1 one
