"""Scores: the math on cases with known answers, and the cached classifier on real MNIST.

    pytest tests/test_scores.py -q
"""

import numpy as np
import pytest
import scipy.linalg
import torch

from genmodels.classifier import ensure_classifier, load_cache, load_scorer
from genmodels.data import load_dataset, to_unit_interval
from genmodels.scores import (
    feature_statistics,
    frechet_distance,
    inception_score,
    precision_recall,
)
from genmodels.vae import VAE, elbo_terms, iwae_bound

CLASSIFIER_EPOCHS = 4
STATED_ACCURACY = 0.90  # on the committed 1,000 test digits after training on its 2,000 digits


def test_inception_score_of_confident_even_predictions_is_the_class_count():
    probs = torch.eye(10).repeat(100, 1)  # every class equally often, each predicted with certainty
    mean, std = inception_score(probs)
    assert mean == pytest.approx(10.0, rel=1e-6) and std == pytest.approx(0.0, abs=1e-6)


def test_inception_score_of_identical_predictions_is_one():
    probs = torch.softmax(torch.randn(1, 10), dim=1).repeat(500, 1)
    assert inception_score(probs)[0] == pytest.approx(1.0, abs=1e-9)


def test_frechet_distance_with_itself_is_zero():
    x = torch.randn(500, 8, generator=torch.Generator().manual_seed(0))
    mu, sigma = feature_statistics(x)
    assert frechet_distance(mu, sigma, mu, sigma) == pytest.approx(0.0, abs=1e-6)


def test_frechet_distance_matches_the_symmetric_scipy_form():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(400, 6))
    b = rng.normal(loc=0.5, scale=1.5, size=(400, 6)) @ rng.normal(size=(6, 6))
    mu1, s1 = a.mean(0), np.cov(a, rowvar=False)
    mu2, s2 = b.mean(0), np.cov(b, rowvar=False)
    root = scipy.linalg.sqrtm(s1).real
    direct = (np.sum((mu1 - mu2) ** 2) + np.trace(s1) + np.trace(s2)
              - 2 * np.trace(scipy.linalg.sqrtm(root @ s2 @ root).real))
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(direct, rel=1e-6)


def test_precision_and_recall_tell_quality_from_coverage():
    generator = torch.Generator().manual_seed(1)
    gaussian = lambda n: torch.randn(n, 16, generator=generator)  # noqa: E731
    # Two draws of one distribution: most of each lies in the other's k-NN manifold.
    precision, recall = precision_recall(gaussian(300), gaussian(300))
    assert precision > 0.6 and recall > 0.6
    # A "generator" that covers one of the two real modes: its samples are real-looking (precision
    # as high as above), but half the real data is missed (recall at most about half).
    other_mode = torch.zeros(16)
    other_mode[0] = 50.0
    real = torch.cat([gaussian(150), gaussian(150) + other_mode])
    collapsed_precision, collapsed_recall = precision_recall(real, gaussian(300))
    assert collapsed_precision > 0.6 and collapsed_recall < 0.5
    assert collapsed_recall < recall - 0.2
    # Nothing generated near the data: neither quality nor coverage.
    assert precision_recall(real, gaussian(300) + 100.0) == (0.0, 0.0)


@pytest.fixture(scope="module")
def mnist(data_dir):
    return load_dataset("mnist", data_dir)


@pytest.mark.slow
@torch.no_grad()
def test_iwae_bound_is_the_elbo_at_k1_and_grows_with_k(mnist):
    torch.manual_seed(0)
    model = VAE(latent_dim=8, dropout=0.0).eval()
    x = to_unit_interval(mnist.test_images[:64])
    elbo = torch.stack([elbo_terms(model, x)["elbo"] for _ in range(200)]).mean(0)
    iwae_1 = torch.stack([iwae_bound(model, x, 1) for _ in range(200)]).mean(0)
    # K = 1 is the ELBO in expectation: the means of 200 draws agree within their noise.
    assert (iwae_1 - elbo).abs().mean() < 1.0
    bounds = [iwae_bound(model, x, k).mean().item() for k in (1, 10, 100, 1000)]
    assert bounds == sorted(bounds), bounds
    assert bounds[-1] > bounds[0]


@pytest.fixture(scope="module")
def scorer_path(mnist, tmp_path_factory):
    cache = tmp_path_factory.mktemp("cache")
    return ensure_classifier("mnist", mnist, cache, epochs=CLASSIFIER_EPOCHS, device="cpu")


@pytest.mark.slow
def test_classifier_reaches_the_stated_accuracy_and_is_cached(scorer_path, mnist):
    cache = load_cache(scorer_path)
    assert cache["test_accuracy"] >= STATED_ACCURACY
    assert cache["dataset"] == "mnist" and cache["ref_mu"].shape == (128,)
    mtime = scorer_path.stat().st_mtime_ns
    assert ensure_classifier("mnist", mnist, scorer_path.parent) == scorer_path
    assert scorer_path.stat().st_mtime_ns == mtime  # loaded, not retrained


@pytest.mark.slow
def test_real_digits_score_far_above_noise(scorer_path, mnist):
    scorer = load_scorer(scorer_path, "cpu")
    real = scorer.score(to_unit_interval(mnist.train_images[:1000]), value_range=(0.0, 1.0))
    noise = scorer.score(torch.rand(1000, 1, 28, 28) * 2 - 1)  # the generator's [-1, 1] range
    assert real["inception_score"] > 7.0 and noise["inception_score"] < 1.5
    assert real["fcd"] < noise["fcd"] / 10
    assert real["precision"] > 0.5 and real["recall"] > 0.5
    assert noise["recall"] < 0.05  # noise maps to one tight feature cluster: no coverage


def test_too_few_images_to_score_is_a_clear_error(tiny_scorer_path):
    with pytest.raises(ValueError, match="at least"):
        load_scorer(tiny_scorer_path).score(torch.zeros(5, 1, 28, 28))
