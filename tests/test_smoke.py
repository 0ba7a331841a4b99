"""The README's first command, `python sweeps/gan_sweep.py --smoke`, for both models, as a user
runs it in an empty folder (on the committed data subset): it succeeds and its console is short,
readable and free of warnings; Ray's and MLflow's own messages are in the sweep's log; every trial
is scored on the validation split and the best are measured once on the test split. And the
console lines themselves, from made-up trial events.

    pytest tests/test_smoke.py -q
"""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import mlflow_runs
from mlflow.tracking import MlflowClient

from genmodels.names import CACHE_ENV
from sweeps.console import QUIET_SUMMARY_SECONDS, SUMMARY_EVERY_SECONDS, Progress
from sweeps.held_out import DEFAULT_TEST_TOP

REPO = Path(__file__).resolve().parent.parent
MAX_LINES = 60
SMOKE_TRIALS = 4
TRIAL_LINE = re.compile(r"^\[\d\d:\d\d\] \w+ (started|epoch \d/2|finished|stopped early|failed)")
# What each model's trials report every epoch, its test numbers, and its final figure.
VALIDATION = {"gan": {"val_fcd", "val_inception_score", "val_precision", "val_recall", "loss_d",
                      "loss_g"},
              "vae": {"val_elbo", "val_kl", "val_recon", "train_loss"}}
TEST = {"gan": {"test_fcd", "test_inception_score", "test_precision", "test_recall"},
        "vae": {"test_elbo", "test_iwae"}}
FIGURE = {"gan": "real_vs_generated.png", "vae": "real_vs_reconstructed.png"}


@pytest.mark.slow
@pytest.mark.parametrize("model, metric", [("gan", "val_fcd"), ("vae", "val_elbo")])
def test_readme_smoke_sweep_is_quiet_and_complete(model, metric, data_dir, tmp_path):
    cache = tmp_path / "cache"  # the scoring classifier's, this test's own (a user setting)
    run = subprocess.run([sys.executable, str(REPO / "sweeps" / f"{model}_sweep.py"), "--smoke",
                          "--data-dir", str(data_dir)], capture_output=True, text=True, timeout=900,
                         env={**os.environ, CACHE_ENV: str(cache)})
    output = run.stdout + run.stderr
    assert run.returncode == 0, output[-3000:]
    lines = output.splitlines()
    assert len(lines) < MAX_LINES, output
    assert "warning" not in output.lower(), output
    assert f"best trials by {metric}" in run.stdout
    events = [line for line in lines if TRIAL_LINE.match(line)]
    assert sum(" started " in line for line in events) == SMOKE_TRIALS, output
    assert sum(" finished " in line or " stopped early " in line for line in events) == SMOKE_TRIALS
    assert any("done, 0 running, 0 pending" in line for line in lines), output  # the last summary
    sweep = tmp_path / "runs" / "sweeps" / f"{model}-sweep"
    assert "Started a local Ray instance" in (sweep / "sweep.log").read_text()
    assert (tmp_path / "mlflow.db").exists()

    trials = sorted(sweep.glob("train_trial_*"))
    assert len(trials) == SMOKE_TRIALS
    for trial in trials:
        last = json.loads((trial / "result.json").read_text().splitlines()[-1])
        assert VALIDATION[model] <= set(last) and not any(k.startswith("test_") for k in last)
        # Every trial's end-of-run figures, a trial ASHA stopped after epoch 1 included.
        assert (trial / FIGURE[model]).exists() and (trial / "samples_across_epochs.png").exists()
    tested = [json.loads(p.read_text()) for p in sweep.glob("train_trial_*/test_metrics.json")]
    assert len(tested) == DEFAULT_TEST_TOP and all(TEST[model] <= set(t) for t in tested)
    assert "test split, once" in run.stdout
    runs = mlflow_runs(f"sqlite:///{tmp_path / 'mlflow.db'}", f"{model}-sweep")
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    for run_id in runs[runs["tags.mlflow.parentRunId"].notna()].run_id:  # and in MLflow
        assert f"figures/{FIGURE[model]}" in {a.path for a in client.list_artifacts(run_id, "figures")}
    # The GAN's scoring classifier is trained once, by the driver, for all trials.
    assert len(list(cache.glob("classifier-*.pt"))) == (model == "gan")


def test_console_lines_follow_the_trials():
    clock = [0.0]
    lines = []
    progress = Progress(num_trials=3, epochs=2, metric="fcd", mode="min", now=lambda: clock[0])
    progress.say = lines.append  # the text without the elapsed-time prefix

    def at(seconds: float) -> None:
        clock[0] = seconds
        progress.maybe_summary()

    at(SUMMARY_EVERY_SECONDS)  # nothing happened yet: no summary
    progress.started("t1", {"lr": 0.00123456, "latent_dim": 32})
    progress.started("t2", {"lr": 0.01, "latent_dim": 8})
    progress.epoch("t1", 1, {"fcd": 50.0})
    progress.epoch("t2", 1, {"fcd": 40.0})
    progress.ended("t2", 1)  # ASHA stopped it
    at(40)  # trials moved on, and 30 s since the start
    progress.epoch("t1", 2, {"fcd": 30.0})
    progress.ended("t1", 2)
    at(50)  # too soon after the last summary
    at(80)
    at(120)  # nothing new since: no summary
    assert lines == [
        "t1 started    lr=0.00123 latent_dim=32",
        "t2 started    lr=0.01 latent_dim=8",
        "t1 epoch 1/2  fcd 50",
        "t2 epoch 1/2  fcd 40",
        "t2 stopped early after epoch 1 (ASHA)",
        "1 done, 1 running, 1 pending; best fcd 40 (t2); 00:40 elapsed, ~01:20 left",
        "t1 epoch 2/2  fcd 30",
        "t1 finished   after 2 epochs",
        "2 done, 0 running, 1 pending; best fcd 30 (t1); 01:20 elapsed, ~00:40 left",
    ]
    at(80 + QUIET_SUMMARY_SECONDS)  # a sign of life while long epochs run
    assert lines[-1] == "2 done, 0 running, 1 pending; best fcd 30 (t1); 06:20 elapsed, ~03:10 left"
    progress.started("t3", {"lr": 1e6})
    progress.epoch("t3", 1, {"fcd": float("nan")})
    progress.ended("t3", 1, "TrainingDiverged: training diverged at epoch 1")
    progress.summary()
    assert lines[-2] == "t3 diverged   TrainingDiverged: training diverged at epoch 1"
    assert lines[-1] == "3 done, 0 running, 0 pending; best fcd 30 (t1); 06:20 elapsed, done"


def test_the_consoles_best_is_the_trial_the_closing_table_ranks_first():
    """Both go by each trial's latest value (as Ray Tune's best result and rank.py do): a GAN
    whose score worsened after its best epoch is not named best for the epoch it has left behind,
    and a trial that diverged after a good epoch is not named at all."""
    import pandas as pd

    from analysis import rank_trials

    lines = []
    progress = Progress(num_trials=3, epochs=2, metric="val_fcd", mode="min", now=lambda: 0.0)
    progress.say = lines.append
    for trial in ("t1", "t2", "t3"):
        progress.started(trial, {"lr": 0.1})
    progress.epoch("t1", 1, {"val_fcd": 30.0})
    progress.epoch("t2", 1, {"val_fcd": 40.0})
    progress.epoch("t3", 1, {"val_fcd": 20.0})
    progress.ended("t2", 1)  # ASHA stopped it
    progress.epoch("t1", 2, {"val_fcd": 50.0})  # worse than its first epoch
    progress.ended("t1", 2)
    progress.ended("t3", 2, "TrainingDiverged: training diverged at epoch 2")
    progress.summary()
    assert lines[-1] == "3 done, 0 running, 0 pending; best val_fcd 40 (t2); 00:00 elapsed, done"
    table = pd.DataFrame({"trial_id": ["t1", "t2", "t3"], "model": "gan", "val_fcd": [50.0, 40.0, 20.0],
                          "status": ["finished", "stopped_early", "diverged"]})
    assert rank_trials(table)["trial_id"].iloc[0] == "t2"


def test_console_counts_the_trials_that_ended_before_a_resume_without_a_line_for_them():
    lines, clock_now = [], [0.0]
    progress = Progress(num_trials=4, epochs=2, metric="fcd", mode="min", now=lambda: clock_now[0])
    progress.say = lines.append
    progress.ended_before("t1", 2, None, last=30.0)
    progress.ended_before("t2", 1, "TrainingDiverged: training diverged at epoch 1", last=None)
    progress.ended_before("t1", 2, None, last=30.0)  # seen once
    progress.started("t3", {"lr": 0.1})
    clock_now[0] = 60.0
    progress.epoch("t3", 2, {"fcd": 40.0})
    progress.ended("t3", 2)
    progress.summary()
    assert progress.done == {"t1": "finished", "t2": "diverged", "t3": "finished"}
    # the best is the earlier trial's; the estimate counts only the trial that ended in this run
    assert lines[-1] == "3 done, 0 running, 1 pending; best fcd 30 (t1); 01:00 elapsed, ~01:00 left"
    assert not any(line.startswith(("t1", "t2")) for line in lines)


def test_the_console_resumes_its_state_with_a_fresh_clock():
    """Tune pickles the console with the Tuner; a --resume restores what it had seen, in a new
    process whose clock starts now."""
    import pickle

    progress = Progress(num_trials=4, epochs=2, metric="fcd", mode="min", configurations=8)
    progress.done["t1"] = "finished"
    progress.started_at -= 3600  # an hour into the sweep
    resumed = pickle.loads(pickle.dumps(progress))
    assert resumed.done == {"t1": "finished"} and resumed.configurations == 8
    assert resumed.started_at > progress.started_at + 3000  # the resumed run's own clock
    resumed.epoch("g1", 1, {"fcd": 30.0, "member_results/m000/fcd": 30.0})


def test_a_fused_sweeps_console_names_its_configurations_as_the_analysis_does():
    lines = []
    progress = Progress(num_trials=3, epochs=3, metric="fcd", mode="min", now=lambda: 0.0,
                        configurations=4)
    progress.say = lines.append
    progress.started("g1", {"member_ids": ["m000", "m001"], "members": [{"lr": 0.1}, {"lr": 0.2}]})
    progress.epoch("g1", 1, {"fcd": 40.0, "member_results": {
        "m000": {"epoch": 1, "fcd": 50.0, "status": "running"},
        "m001": {"epoch": 1, "fcd": 40.0, "status": "stopped_early"}}})
    # epoch 2: m001, stopped after epoch 1, is in the report with its old value; not this epoch's
    progress.epoch("g1", 2, {"fcd": 40.0, "member_results": {
        "m000": {"epoch": 2, "fcd": 45.0, "status": "stopped_early"},
        "m001": {"epoch": 1, "fcd": 40.0, "status": "stopped_early"}}})
    progress.ended("g1", 2)
    progress.started("g2", {"member_ids": ["m003"], "members": [{"lr": 0.3}]})
    progress.epoch("g2", 1, {"fcd": 60.0, "member_results": {
        "m003": {"epoch": 1, "fcd": 60.0, "status": "running"}}})
    progress.ended("g2", 1, "RayTaskError: its worker died")  # and its retries were used up
    progress.ended_before("g0", 3, None, last=30.0, members={
        "m002": {"epoch": 3, "fcd": 35.0, "status": "finished"}})
    progress.summary()
    assert lines == [
        "g1-m000 started    lr=0.1",
        "g1-m001 started    lr=0.2",
        "g1 epoch 1  fcd 40 (g1-m001, the best of 2 members)",
        "g1 epoch 2  fcd 45 (g1-m000, the best of 1 member)",
        "g1 ended      after epoch 2: 2 stopped early",
        "g2-m003 started    lr=0.3",
        "g2 epoch 1  fcd 60 (g2-m003, the best of 1 member)",
        "g2 failed     RayTaskError: its worker died",
        "groups 3 done, 0 running; 4 of 4 configurations ended; best fcd 35 (g0-m002); "
        "00:00 elapsed, done",
    ]


def test_a_fused_groups_refills_get_their_own_line_and_count_as_configurations():
    lines = []
    progress = Progress(num_trials=2, epochs=2, metric="elbo", mode="max", now=lambda: 0.0,
                        configurations=3)
    progress.say = lines.append
    progress.started("g1", {"member_ids": ["m000", "m001"], "members": [{"lr": 0.1}, {"lr": 0.2}]})
    stopped = {"epoch": 1, "elbo": -300.0, "status": "stopped_early"}
    # after epoch 1, m002 takes the slot of m001 (stopped early) and trains its own epochs 1, 2
    progress.epoch("g1", 1, {"member_results": {
        "m000": {"epoch": 1, "elbo": -200.0, "status": "running"}, "m001": stopped},
        "added_members": {"m002": {"lr": 0.3}}})
    progress.epoch("g1", 2, {"member_results": {
        "m000": {"epoch": 2, "elbo": -150.0, "status": "finished"}, "m001": stopped,
        "m002": {"epoch": 1, "elbo": -140.0, "status": "running"}}, "added_members": {"m002": {"lr": 0.3}}})
    progress.summary()
    progress.epoch("g1", 3, {"member_results": {
        "m000": {"epoch": 2, "elbo": -150.0, "status": "finished"}, "m001": stopped,
        "m002": {"epoch": 2, "elbo": -130.0, "status": "finished"}}, "added_members": {"m002": {"lr": 0.3}}})
    progress.ended("g1", 3)
    progress.summary()
    assert lines == [
        "g1-m000 started    lr=0.1",
        "g1-m001 started    lr=0.2",
        "g1 epoch 1  elbo -200 (g1-m000, the best of 2 members)",
        "g1-m002 started    lr=0.3 (refills a slot)",
        "g1 epoch 2  elbo -140 (g1-m002, the best of 2 members)",
        "groups 0 done, 1 running; 2 of 3 configurations ended; best elbo -140 (g1-m002); "
        "00:00 elapsed, ~00:00 left",
        "g1 epoch 3  elbo -130 (g1-m002, the best of 1 member)",
        "g1 ended      after epoch 3: 2 finished, 1 stopped early",
        "groups 1 done, 0 running; 3 of 3 configurations ended; best elbo -130 (g1-m002); "
        "00:00 elapsed, done",
    ]


def test_console_says_when_a_trial_is_retried():
    lines = []
    progress = Progress(num_trials=1, epochs=3, metric="elbo", mode="max", now=lambda: 0.0)
    progress.say = lines.append
    progress.started("t1", {"lr": 0.001})
    progress.epoch("t1", 1, {"elbo": -200.0})
    progress.retrying("t1", "RayActorError: The actor died unexpectedly")
    progress.started("t1", {"lr": 0.001})
    progress.epoch("t1", 2, {"elbo": -190.0})
    progress.ended("t1", 3, "CheckpointError: cannot resume this trial")
    assert lines[2:] == ["t1 retrying   after RayActorError: The actor died unexpectedly",
                         "t1 restarted  from its last checkpoint",
                         "t1 epoch 2/3  elbo -190",
                         "t1 failed     CheckpointError: cannot resume this trial"]
