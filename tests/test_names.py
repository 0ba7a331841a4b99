"""The shared names and files: what the analysis and `--print-space` import (no Ray), the one
status.json schema, and writes that never leave a torn file.

    pytest tests/test_names.py -q
"""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from genmodels.files import atomic_write, read_status, write_json, write_status
from genmodels.names import DIRECTIONS, MODEL_METRICS, OBJECTIVES, STATUS_FILE, tracking_uri

REPO = Path(__file__).resolve().parent.parent


def imported_modules(*command: str) -> set[str]:
    """Top-level packages a command imports, from Python's own import log (-X importtime)."""
    run = subprocess.run([sys.executable, "-X", "importtime", *command], capture_output=True,
                         text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]
    lines = [line.split("|")[-1] for line in run.stderr.splitlines() if line.startswith("import time:")]
    return {name.strip().split(".")[0] for name in lines}


def test_rank_help_imports_neither_ray_nor_torch():
    modules = imported_modules(str(REPO / "analysis" / "rank.py"), "--help")
    assert "pandas" in modules  # the log is read right: the analysis does import pandas
    assert "ray" not in modules and "torch" not in modules


@pytest.mark.slow  # a fresh Python that imports torch: seconds
def test_print_space_imports_no_ray():
    modules = imported_modules(str(REPO / "sweeps" / "gan_sweep.py"), "--print-space")
    assert "torch" in modules  # the ranges are checked against the model's config
    assert "ray" not in modules


def test_every_objective_has_a_direction_and_is_a_model_metric():
    for model, objectives in OBJECTIVES.items():
        assert set(objectives) <= set(MODEL_METRICS[model])
        assert all(metric in DIRECTIONS for metric in objectives)


def test_status_has_one_schema(tmp_path):
    write_status(tmp_path, "diverged", 3, "loss is nan")
    status = json.loads((tmp_path / STATUS_FILE).read_text())
    assert set(status) == {"status", "epoch", "ended_at", "message"}
    assert read_status(tmp_path)["status"] == "diverged" and status["epoch"] == 3
    assert read_status(tmp_path / "never_ran") == {}
    with pytest.raises(ValueError, match="status must be one of"):
        write_status(tmp_path, "done", 1)


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    path = write_json(tmp_path / "options.json", {"epochs": 10})

    def torn(tmp: Path) -> None:
        tmp.write_text('{"epo')
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write(path, torn)
    assert json.loads(path.read_text()) == {"epochs": 10}
    assert [p.name for p in tmp_path.iterdir()] == ["options.json"]


def test_tracking_uri_order(monkeypatch, tmp_path):
    assert tracking_uri() == f"sqlite:///{tmp_path.resolve() / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://env:5000")
    assert tracking_uri() == "http://env:5000"
    assert tracking_uri("http://option:5000") == "http://option:5000"


@pytest.mark.slow  # a fresh Python that imports torch: seconds
def test_every_console_script_runs_its_command():
    """`[project.scripts]` in pyproject.toml: each target imports and answers --help (one fresh
    interpreter runs them all, as the installed wrappers would: `sys.exit(main())`)."""
    import tomllib

    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    assert {"gensweep-vae", "gensweep-gan", "gensweep-rank", "gensweep-train"} <= set(scripts)
    calls = "\n".join(
        f"sys.argv = [{name!r}, '--help']\n"
        f"try:\n    import_module({target.split(':')[0]!r}).{target.split(':')[1]}()\n"
        "except SystemExit as done:\n    codes.append(done.code)\n"
        for name, target in scripts.items())
    script = f"import sys\nfrom importlib import import_module\ncodes = []\n{calls}\nprint(codes)"
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.count("usage:") == len(scripts)
    assert run.stdout.splitlines()[-1] == str([0] * len(scripts))
