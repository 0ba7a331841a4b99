"""--resume takes the sweep's own saved options; a folder written by an earlier development version
of gensweep (its options lack some of today's) is refused with one clear line, before Ray starts.

    pytest tests/test_resume_options.py
"""

from __future__ import annotations

import json

from genmodels.names import OPTIONS_FILE
from sweeps.runner import EXIT_BAD_INPUT, run


def test_a_sweep_folder_of_an_earlier_version_is_one_clear_error(tmp_path, capsys):
    sweep = tmp_path / "runs" / "vae-sweep"
    sweep.mkdir(parents=True)
    (sweep / "tuner.pkl").write_bytes(b"")  # what marks a started sweep
    saved = {"dataset": "mnist", "epochs": 2, "seed": 0}  # a few options, as an old version saved
    (sweep / OPTIONS_FILE).write_text(json.dumps(saved))
    before = sorted(p.name for p in sweep.iterdir())

    code = run("vae", ["--resume", "--storage-path", str(tmp_path / "runs")])

    err = capsys.readouterr().err.strip().splitlines()
    assert code == EXIT_BAD_INPUT
    assert len(err) == 1 and err[0].startswith("error: --resume: ")
    assert "earlier development version of gensweep" in err[0] and "--refill" in err[0]
    assert "start a new sweep with another --name" in err[0]
    assert sorted(p.name for p in sweep.iterdir()) == before  # nothing written
    assert not (tmp_path / "mlflow.db").exists()
