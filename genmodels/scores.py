"""Classifier-based scores of generated images, and the math behind them as pure functions.

- Inception Score (Salimans et al. 2016): exp(E_x KL(p(y|x) || p(y))), mean and std over splits.
- Frechet distance (Heusel et al. 2017) between Gaussians fitted to the scoring classifier's
  penultimate-layer features of generated and real images: `fcd` (lower is better).
- Precision and recall (Kynkaanniemi et al. 2019): the fraction of generated samples inside the
  k-NN manifold of the real ones, and of real samples inside the manifold of the generated ones.

`Scorer` (built by `genmodels.classifier.load_scorer`) holds the classifier and the real images'
reference statistics (the test split's, from the classifier's cache; `with_reference` makes one for
the validation split, what sweeps choose by), so scoring needs only the generated images.
"""

from __future__ import annotations

import warnings

import numpy as np
import scipy.linalg
import torch

IS_SPLITS = 10  # the standard number of splits for the Inception Score's std
PR_NEIGHBOURS = 3  # k of the k-NN radii (the paper's default)
PR_MAX_SAMPLES = 2000  # cap per set for precision/recall: the pairwise distances grow as N^2
MIN_SAMPLES = 100  # fewer generated images make every score mostly noise
SCORE_BATCH = 1000  # images per classifier forward pass
EPS = 1e-12
REFERENCE_SEED = 0  # which real images precision/recall keep when there are more than their cap


def inception_score(probs: torch.Tensor, splits: int = IS_SPLITS) -> tuple[float, float]:
    """Mean and std over `splits` of exp(mean KL(p(y|x) || p(y))), from class probabilities [N, C]."""
    scores = []
    for part in probs.double().chunk(splits):
        marginal = part.mean(dim=0, keepdim=True)
        kl = (part * (torch.log(part + EPS) - torch.log(marginal + EPS))).sum(dim=1)
        scores.append(torch.exp(kl.mean()).item())
    return float(np.mean(scores)), float(np.std(scores))


def feature_statistics(features: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Mean and covariance (float64) of features [N, D]."""
    x = features.double().cpu().numpy()
    return x.mean(axis=0), np.cov(x, rowvar=False)


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray,
                     sigma2: np.ndarray) -> float:
    """||mu1 - mu2||^2 + Tr(S1 + S2 - 2 (S1 S2)^(1/2)) between two Gaussians."""
    with warnings.catch_warnings():
        # A singular product is expected for collapsed generators and noise; handled just below.
        warnings.simplefilter("ignore", scipy.linalg.LinAlgWarning)
        covmean = scipy.linalg.sqrtm(sigma1 @ sigma2)
    if not np.isfinite(covmean).all():
        # A singular product (few samples, collapsed generator): regularize as Heusel et al. do.
        offset = np.eye(len(sigma1)) * 1e-6
        covmean = scipy.linalg.sqrtm((sigma1 + offset) @ (sigma2 + offset))
    covmean = covmean.real  # tiny imaginary parts are numerical noise
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(covmean))


def _knn_radii(features: torch.Tensor, k: int) -> torch.Tensor:
    """Distance from each point to its k-th nearest other point of the same set."""
    distances = torch.cdist(features, features)
    return distances.kthvalue(k + 1, dim=1).values  # +1: the point itself is at distance 0


def _inside_manifold(points: torch.Tensor, centres: torch.Tensor, radii: torch.Tensor) -> float:
    """Fraction of `points` within radius of at least one centre."""
    inside = (torch.cdist(points, centres) <= radii.unsqueeze(0)).any(dim=1)
    return inside.float().mean().item()


def precision_recall(real: torch.Tensor, fake: torch.Tensor,
                     k: int = PR_NEIGHBOURS) -> tuple[float, float]:
    """Improved precision and recall of `fake` against `real` features (Kynkaanniemi et al.)."""
    real, fake = real.float(), fake.float()
    precision = _inside_manifold(fake, real, _knn_radii(real, k))
    recall = _inside_manifold(real, fake, _knn_radii(fake, k))
    return precision, recall


@torch.no_grad()
def classifier_outputs(classifier: torch.nn.Module, images: torch.Tensor,
                       device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Penultimate features and class probabilities of images in [0, 1], [N, 1, 28, 28]."""
    classifier.eval()
    features, probs = [], []
    for batch in images.split(SCORE_BATCH):
        f, logits = classifier.features_and_logits(batch.to(device).float())
        features.append(f.float())
        probs.append(torch.softmax(logits.float(), dim=1))
    return torch.cat(features), torch.cat(probs)


class Scorer:
    """Scores generated images with a trained classifier against stored real-test statistics."""

    def __init__(self, classifier: torch.nn.Module, ref_mu: np.ndarray, ref_sigma: np.ndarray,
                 ref_features: torch.Tensor, device: torch.device):
        self.classifier = classifier.to(device).eval()
        self.ref_mu, self.ref_sigma = ref_mu, ref_sigma
        self.ref_features = ref_features[:PR_MAX_SAMPLES].to(device)
        self.device = device

    def with_reference(self, images: torch.Tensor) -> Scorer:
        """The same classifier scoring against other real images in [0, 1] [N, 1, 28, 28] (e.g.
        the validation split: sweeps choose by it, the test split is only reported)."""
        features, _ = self.features_and_probs(images)
        mu, sigma = feature_statistics(features)
        order = torch.randperm(len(features), generator=torch.Generator().manual_seed(REFERENCE_SEED))
        return Scorer(self.classifier, mu, sigma, features[order[:PR_MAX_SAMPLES].to(features.device)],
                      self.device)

    def features_and_probs(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return classifier_outputs(self.classifier, images, self.device)

    def score(self, images: torch.Tensor,
              value_range: tuple[float, float] = (-1.0, 1.0)) -> dict[str, float]:
        """All scores of `images` whose pixels span `value_range` (default: the generator's tanh)."""
        return self.score_groups(images.unsqueeze(0), value_range)[0]

    def score_groups(self, images: torch.Tensor,
                     value_range: tuple[float, float] = (-1.0, 1.0)) -> list[dict[str, float]]:
        """The scores of each group of images [K, N, 1, 28, 28] (e.g. a fused group's members),
        with one classifier pass over all K * N images."""
        if images.shape[1] < MIN_SAMPLES:
            raise ValueError(f"scoring needs at least {MIN_SAMPLES} images, got {images.shape[1]}")
        low, high = value_range
        unit = ((images.float() - low) / (high - low)).clamp(0, 1)
        features, probs = self.features_and_probs(unit.flatten(0, 1))
        groups = len(images)
        return [self._scores(f, p) for f, p in zip(features.chunk(groups), probs.chunk(groups))]

    def _scores(self, features: torch.Tensor, probs: torch.Tensor) -> dict[str, float]:
        is_mean, is_std = inception_score(probs)
        mu, sigma = feature_statistics(features)
        precision, recall = precision_recall(self.ref_features, features[:PR_MAX_SAMPLES])
        return {
            "inception_score": is_mean,
            "inception_score_std": is_std,
            "fcd": frechet_distance(mu, sigma, self.ref_mu, self.ref_sigma),
            "precision": precision,
            "recall": recall,
        }
