"""Shared fixtures: every test isolated from the user's folders, the committed MNIST /
Fashion-MNIST subsets copied to a temporary data folder.

    pytest -q            # everything (CI runs this)
    pytest -q -m "not slow"
"""

import importlib.util
import os
import shutil
import sys
import tempfile
from pathlib import Path

import pytest

from genmodels.names import CACHE_ENV, DATA_DIR_ENV, TRACKING_URI_ENV

REPO = Path(__file__).resolve().parent.parent
TEST_DATA = Path(__file__).parent / "data"
TINY_SCORER_IMAGES = 256
SESSION_CACHE = tempfile.mkdtemp(prefix="gensweep-test-cache-")  # removed at the session's end


def pytest_configure(config):
    """No user setting leaks into the tests or their subprocesses: no tracking server, data folder
    or classifier cache of the user's (a session cache instead of ~/.cache/gensweep), and
    subprocesses import this checkout's code. Set here, before test modules build their
    environments, for the whole session."""
    for name in (TRACKING_URI_ENV, DATA_DIR_ENV):
        os.environ.pop(name, None)
    os.environ[CACHE_ENV] = SESSION_CACHE
    os.environ["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)


def pytest_unconfigure(config):
    shutil.rmtree(SESSION_CACHE, ignore_errors=True)


@pytest.fixture(autouse=True)
def in_tmp_path(tmp_path, monkeypatch):
    """Every test runs in its own empty folder, as a user runs a command in theirs: default outputs
    (runs/sweeps, mlflow.db, mlruns/, reports/, ./data) land in tmp_path, never in the checkout or
    the folder pytest was started from."""
    monkeypatch.chdir(tmp_path)


@pytest.fixture(scope="session")
def load_bench():
    """load_bench("run"): a script of bench/ as a module (bench/ is a folder of scripts run from a
    checkout, not an installed package)."""
    def load(name: str):
        spec = importlib.util.spec_from_file_location(f"bench_{name}", REPO / "bench" / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        # Registered before it runs, as an import would be: a dataclass in the script looks its
        # module up in sys.modules.
        sys.modules[spec.name] = module
        spec.loader.exec_module(module)
        return module
    return load


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory) -> Path:
    """A data folder in torchvision's layout holding the gzipped subsets (2,000 MNIST training
    images, 1,000 test; 500 / 250 of Fashion-MNIST). The loader unpacks them on first use."""
    root = tmp_path_factory.mktemp("data")
    for folder in ("MNIST", "FashionMNIST"):
        shutil.copytree(TEST_DATA / folder, root / folder)
    return root


@pytest.fixture(scope="session")
def tiny_scorer_path(data_dir, tmp_path_factory) -> Path:
    """A scoring classifier trained one epoch on the committed subset, once per session: for tests
    that need a working scorer, not its accuracy (tests/test_scores.py checks that, slow)."""
    from genmodels.classifier import ensure_classifier
    from genmodels.data import load_dataset

    data = load_dataset("mnist", data_dir).subset(TINY_SCORER_IMAGES)
    return ensure_classifier("mnist", data, tmp_path_factory.mktemp("tiny_scorer"), epochs=1,
                             device="cpu")


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


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory):
    """A real S3-compatible server (SeaweedFS, tests/s3_server.py), started once per session by the
    first test that asks for it."""
    from s3_server import start_s3_server

    server = start_s3_server(tmp_path_factory.mktemp("seaweedfs"))
    yield server
    server.stop()


@pytest.fixture
def s3(s3_server, monkeypatch):
    """The S3 server, with its credentials and endpoint in this test's environment (and so in the
    sweeps and Ray workers it starts), as a user exports them."""
    for name, value in s3_server.env.items():
        monkeypatch.setenv(name, value)
    return s3_server
