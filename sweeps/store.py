"""The tracking store a sweep records in, checked (and, for the default SQLite file, made) before
Ray starts: a `--mlflow-uri` MLflow cannot use is a one-line error that wrote nothing.

The default store is `mlflow.db`, SQLite, which MLflow creates on first use by running its
schema migrations one by one. Interrupted half-way (Ctrl-C, SIGTERM, a crash), that leaves a
half-migrated file that every later sweep fails on; two sweeps starting at once in a fresh folder
both migrate the same new file. So a new store is built whole in a temporary file beside it and
renamed into place (a rename is atomic: there is either no store or a complete one), under a
file lock that makes sweeps starting together wait for each other.
"""

from __future__ import annotations

import logging
import os
from contextlib import contextmanager
from pathlib import Path
from urllib.error import URLError
from urllib.request import urlopen

from filelock import FileLock, Timeout

REACH_TIMEOUT_SECONDS = 5
CREATE_WAIT_SECONDS = 120  # another sweep building the same store: wait this long for it
USABLE_KINDS = ("a SQLite file (sqlite:///path/mlflow.db), a tracking server (http://host:5000), "
                "or a database URI MLflow supports (postgresql://, mysql://)")


class TrackingError(RuntimeError):
    pass


def open_store(uri: str) -> None:
    """Check MLflow can record at `uri`, creating the SQLite file a `sqlite:///` URI names."""
    if uri.startswith(("http://", "https://")):
        check_reachable(uri)
    elif uri.startswith("sqlite:///"):
        make_sqlite_store(Path(uri.removeprefix("sqlite:///")))
    check_opens(uri)


def check_reachable(uri: str) -> None:
    try:
        with urlopen(f"{uri.rstrip('/')}/health", timeout=REACH_TIMEOUT_SECONDS) as response:
            response.read()
    except (URLError, OSError) as err:
        raise TrackingError(
            f"the MLflow tracking server {uri} does not answer ({err}); start it (on this machine: "
            "`mlflow server --host 127.0.0.1 --port 5000 --serve-artifacts`; for a cluster see "
            "docs/clusters.md on protecting it), or drop --mlflow-uri to record in the local "
            "mlflow.db"
        ) from err


def make_sqlite_store(path: Path) -> None:
    """Create the SQLite store at `path` whole, or leave it as it is if it exists."""
    if path.exists():
        return
    if not path.parent.is_dir():
        raise TrackingError(f"--mlflow-uri sqlite:///{path}: the folder {path.parent} does not "
                            "exist; create it, or give a file in an existing folder")
    lock = FileLock(path.with_name(f".{path.name}.lock"))
    try:
        with lock.acquire(timeout=CREATE_WAIT_SECONDS):
            if path.exists():  # another sweep made it while this one waited
                return
            for stale in path.parent.glob(f".{path.name}.*.partial"):
                stale.unlink(missing_ok=True)  # left by a build that was killed (SIGKILL)
            partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
            try:
                check_opens(f"sqlite:///{partial}")  # MLflow creates and migrates it
                os.replace(partial, path)
            finally:
                partial.unlink(missing_ok=True)
    except Timeout:
        raise TrackingError(f"another process has held the lock on the new MLflow store {path} "
                            f"for {CREATE_WAIT_SECONDS} s ({lock.lock_file}); if none is running, "
                            "delete that lock file and start again") from None


@contextmanager
def quiet_migrations():
    """MLflow and Alembic announce each step of creating a store: not on the sweep's console
    (the sweep's log file does not exist yet)."""
    loggers = [logging.getLogger(name) for name in ("mlflow.store.db.utils", "alembic")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)


def check_opens(uri: str) -> None:
    """MLflow opens the store at `uri` and reads it: one line saying what is wrong if not."""
    from mlflow.tracking import MlflowClient

    try:
        with quiet_migrations():
            MlflowClient(uri).search_experiments(max_results=1)
    except Exception as err:  # an unknown scheme is a KeyError; a damaged store SQLAlchemy's
        reason = " ".join(str(err).split())[:300] or type(err).__name__
        if uri.startswith("sqlite:///"):
            path = uri.removeprefix("sqlite:///")
            raise TrackingError(
                f"the MLflow store {path} cannot be used ({type(err).__name__}: {reason}). It was "
                "left half-made by an interrupted creation or upgrade, or it is not an MLflow "
                f"store of this version: move it aside (`mv {path} {path}.old`) and the next sweep "
                f"makes a new one, or upgrade a backed-up copy with `mlflow db upgrade sqlite:///"
                f"{path}`") from err
        raise TrackingError(f"--mlflow-uri {uri}: MLflow cannot record there ({type(err).__name__}: "
                            f"{reason}); give {USABLE_KINDS}, or drop --mlflow-uri to record in "
                            "the local mlflow.db") from err
