"""Shared fixtures: the committed MNIST / Fashion-MNIST subsets, copied to a temporary data folder.

    pytest -q            # everything (CI runs this)
    pytest -q -m "not slow"
"""

import shutil
from pathlib import Path

import pytest

TEST_DATA = Path(__file__).parent / "data"


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory) -> Path:
    """A data folder in torchvision's layout holding the gzipped subsets (2,000 MNIST training
    images, 1,000 test; 500 / 250 of Fashion-MNIST). The loader unpacks them on first use."""
    root = tmp_path_factory.mktemp("data")
    for folder in ("MNIST", "FashionMNIST"):
        shutil.copytree(TEST_DATA / folder, root / folder)
    return root


def mlflow_runs(uri: str, experiment: str):
    """`mlflow.search_runs` as a DataFrame, without leaving MLFLOW_TRACKING_URI set for the
    subprocesses of later tests (mlflow.set_tracking_uri exports it)."""
    import os

    import mlflow

    before = os.environ.get("MLFLOW_TRACKING_URI")
    try:
        mlflow.set_tracking_uri(uri)
        return mlflow.search_runs(experiment_names=[experiment])
    finally:
        if before is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)
        else:
            os.environ["MLFLOW_TRACKING_URI"] = before
