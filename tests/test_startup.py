"""A sweep's first seconds and its tracking store: real signals sent to a real sweep process at
moments of its start-up (imports, store creation, Ray's start, the first trials), two first sweeps
started together in one fresh folder, a store left half-migrated, a new store killed while it is
made, and a --mlflow-uri or --address that cannot work.

    pytest tests/test_startup.py -q
"""

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import pytest
from alembic.script import ScriptDirectory
from test_faults import descendants

from sweeps.cluster import check_cluster_answers
from sweeps.options import SweepError
from sweeps.runner import EXIT_BAD_INPUT, EXIT_INTERRUPTED, EXIT_OK, EXIT_TERMINATED, run
from sweeps.store import make_sqlite_store

REPO = Path(__file__).resolve().parent.parent
STOP_SECONDS = 15  # the most a stop may take, at any moment
SWEEP_SECONDS = 300  # a whole tiny sweep on a busy 2-core machine


def tiny_sweep(data_dir: Path, name: str, *extra: str) -> list[str]:
    """A sweep of one tiny trial, run as a user runs it, from the working folder."""
    return [sys.executable, str(REPO / "sweeps" / "vae_sweep.py"), "--data-dir", str(data_dir),
            "--storage-path", "ray", "--name", name, "--num-samples", "1", "--epochs", "1",
            "--train-subset", "64", "--batch-size", "32", "--scheduler", "fifo", "--test-top", "0",
            *extra]


def running_runs(folder: Path) -> int:
    store = folder / "mlflow.db"
    if not store.exists():
        return 0
    with sqlite3.connect(store) as db:
        return db.execute("select count(*) from runs where status = 'RUNNING'").fetchone()[0]


@pytest.mark.slow
@pytest.mark.parametrize("stop_signal, after", [
    (signal.SIGINT, 2),  # the imports
    (signal.SIGTERM, 5),  # the store made, Ray starting
    (signal.SIGINT, 8),  # Ray up, the trial starting
], ids=["SIGINT-2s", "SIGTERM-5s", "SIGINT-8s"])
def test_a_stop_at_any_moment_of_start_up_is_clean_and_the_next_sweep_runs(stop_signal, after,
                                                                           data_dir, tmp_path):
    """Ctrl-C goes to the process group (as a terminal sends it), SIGTERM to the process (as
    `kill` or a scheduler sends it): the right exit code within 15 s, one line saying what to do,
    no traceback, nothing RUNNING in MLflow, the sweep's Ray processes ended; then the command
    that line gives runs the sweep to its end in the same folder."""
    log = tmp_path / "sweep.log"
    with log.open("w") as out:
        process = subprocess.Popen(tiny_sweep(data_dir, "s"), stdout=out, stderr=subprocess.STDOUT,
                                   start_new_session=True)  # its own group, as a terminal's job
    time.sleep(after)
    ray_processes = descendants(process.pid)
    stopped_at = time.monotonic()
    if stop_signal == signal.SIGINT:
        os.killpg(process.pid, signal.SIGINT)
    else:
        process.send_signal(signal.SIGTERM)
    code = process.wait(timeout=60)
    took = time.monotonic() - stopped_at
    output = log.read_text()
    expected = EXIT_INTERRUPTED if stop_signal == signal.SIGINT else EXIT_TERMINATED
    assert code == expected, output[-3000:]
    assert took < STOP_SECONDS, output[-3000:]
    assert "Traceback" not in output and "SIGTERM received" not in output, output[-3000:]
    last = output.strip().splitlines()[-1]
    assert last.startswith(("stopped by", "interrupted")), last
    assert running_runs(tmp_path) == 0
    deadline = time.monotonic() + STOP_SECONDS  # Ray's processes end with the driver's shutdown
    while time.monotonic() < deadline and any(Path(f"/proc/{p}").exists() for p in ray_processes):
        time.sleep(0.2)
    assert not [args for p, args in ray_processes.items() if Path(f"/proc/{p}").exists()]

    again = tiny_sweep(data_dir, "s", *(["--resume"] if "--resume" in last else []))
    finished = subprocess.run(again, capture_output=True, text=True, timeout=SWEEP_SECONDS)
    assert finished.returncode == EXIT_OK, (last, finished.stderr[-3000:])
    assert running_runs(tmp_path) == 0


@pytest.mark.slow
def test_two_first_sweeps_in_one_fresh_folder_both_finish(data_dir, tmp_path):
    """A VAE sweep and another started at once where no mlflow.db exists yet: one makes the
    store, the other waits for it (they both migrated the same new file, and one died)."""
    processes = [subprocess.Popen(tiny_sweep(data_dir, name), stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT, text=True) for name in ("a", "b")]
    for process in processes:
        output, _ = process.communicate(timeout=SWEEP_SECONDS)
        assert process.returncode == EXIT_OK, output[-3000:]
    client = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    assert {e.name for e in client.search_experiments()} >= {"a", "b"}
    assert not list(tmp_path.glob(".mlflow.db.*.partial"))


def make_store_in_a_process(path: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", "import sys; from pathlib import Path; "
                             "from sweeps.store import make_sqlite_store; "
                             "make_sqlite_store(Path(sys.argv[1]))", str(path)])


def test_stores_made_at_once_wait_for_each_other(tmp_path):
    store = tmp_path / "mlflow.db"
    processes = [make_store_in_a_process(store) for _ in range(3)]
    assert [p.wait(timeout=120) for p in processes] == [0, 0, 0]
    mlflow.MlflowClient(f"sqlite:///{store}").search_experiments()  # whole


@pytest.mark.slow
@pytest.mark.parametrize("after", [0.5, 1.5, 2.5])
def test_a_store_killed_while_it_is_made_is_absent_or_whole(after, tmp_path):
    """SIGKILL (no handler can run) at moments of the store's creation: either no mlflow.db, and
    the next sweep makes it, or a complete one; never a half-migrated file."""
    store = tmp_path / "mlflow.db"
    process = make_store_in_a_process(store)
    time.sleep(after)
    process.kill()
    process.wait(timeout=30)
    if store.exists():
        mlflow.MlflowClient(f"sqlite:///{store}").search_experiments()
    make_sqlite_store(store)  # what the next sweep does: clears the leftover, makes the store
    mlflow.MlflowClient(f"sqlite:///{store}").search_experiments()
    assert not list(tmp_path.glob(".mlflow.db.*.partial"))


def sweep_in_process(data_dir: Path, *extra: str) -> int:
    return run("vae", ["--data-dir", str(data_dir), "--storage-path", "ray", "--name", "s",
                       "--num-samples", "1", "--epochs", "1", "--train-subset", "64",
                       "--batch-size", "32", *extra])


def test_a_half_migrated_store_is_one_line_before_anything_starts(data_dir, tmp_path, capsys):
    """What an interrupted migration leaves: the new column there, the schema version not yet
    moved on. The sweep says what happened and what to do, and writes nothing."""
    store = tmp_path / "mlflow.db"
    make_sqlite_store(store)
    scripts = ScriptDirectory(str(Path(mlflow.__file__).parent / "store" / "db_migrations"))
    previous = scripts.get_revision(scripts.get_current_head()).down_revision
    with sqlite3.connect(store) as db:
        db.execute("update alembic_version set version_num = ?", (previous,))
    assert sweep_in_process(data_dir, "--mlflow-uri", f"sqlite:///{store}") == EXIT_BAD_INPUT
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error: the MLflow store"), err
    assert "mv " in err and "mlflow db upgrade" in err, err
    assert not (tmp_path / "ray").exists()


@pytest.mark.parametrize("uri, says", [
    ("ftp://host/x", "MLflow cannot record there"),
    ("sqlite:///no/such/folder/mlflow.db", "does not exist"),
], ids=["unknown scheme", "no such folder"])
def test_a_tracking_uri_mlflow_cannot_use_is_one_line_and_writes_nothing(uri, says, data_dir,
                                                                         tmp_path, capsys):
    assert sweep_in_process(data_dir, "--mlflow-uri", uri) == EXIT_BAD_INPUT
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error:") and says in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_an_address_where_nothing_listens_is_an_error_in_bounded_time():
    started = time.monotonic()
    with pytest.raises(SweepError, match="no Ray cluster answers there"):
        check_cluster_answers("127.0.0.1:1", wait=2)
    assert time.monotonic() - started < 5
    with pytest.raises(SweepError, match="expected host:port"):
        check_cluster_answers("nonsense")


@pytest.mark.slow
def test_a_sweep_joining_no_cluster_stops_in_bounded_time_and_writes_nothing(data_dir, tmp_path,
                                                                              capsys):
    started = time.monotonic()
    assert sweep_in_process(data_dir, "--address", "127.0.0.1:1") == EXIT_BAD_INPUT
    assert time.monotonic() - started < 30
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "no Ray cluster answers" in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == []

