"""Fused sweeps (`--fuse K`) as a user runs them: every configuration stays a first-class trial.

    pytest tests/test_fused_sweep.py -q
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import optuna
import pandas as pd
import pytest
from conftest import mlflow_runs

from analysis import load_sweep, load_trials, rank_trials
from analysis.report import search_notes
from genmodels.names import GROUP_TAG, MEMBER_RESULTS_KEY, OPTIONS_FILE
from sweeps.search_space import SPACES, is_default_config
from sweeps.study import MemberStudy, member_results

REPO = Path(__file__).resolve().parent.parent


def test_the_study_hands_out_exactly_num_samples_configurations_to_groups_and_refills():
    study = MemberStudy(SPACES["vae"], num_configs=6, metric="val_elbo", mode="max", seed=0)
    groups = [study.ask(f"t{i}", 2) for i in range(2)]  # two new groups of 2
    assert [list(g) for g in groups] == [["m000", "m001"], ["m002", "m003"]]
    assert len({g["m000" if "m000" in g else "m002"]["lr"] for g in groups}) == 2

    # t0 after its epoch 1: m000 trains on, m001 diverged; its slot takes a fresh configuration
    study.report("t0", {"m000": {"epoch": 1, "val_elbo": -200.0, "status": "running"},
                        "m001": {"epoch": 1, "status": "diverged"}})
    refill = study.ask("t0", 1, epoch=1)
    assert list(refill) == ["m004"]
    assert study.ask("t0", 1, epoch=1) == refill  # a retried group asking again: the same one
    assert list(study.ask("t1", 2, epoch=1)) == ["m005"]  # only what is left of --num-samples
    assert study.left() == 0 and study.ask("t2", 2) == {}

    # t0: m000 finishes, m004 stopped early; t1: m002 finishes, m003 and m005 never report
    study.finish("t0", {"m000": {"epoch": 2, "val_elbo": -150.0, "status": "finished"},
                        "m001": {"epoch": 1, "status": "diverged"},
                        "m004": {"epoch": 1, "val_elbo": -300.0, "status": "stopped_early"}})
    study.finish("t1", {"m002": {"epoch": 2, "val_elbo": -140.0, "status": "finished"}})
    states = {t.number: t.state for t in study.study.trials}
    State = optuna.trial.TrialState
    assert states == {0: State.COMPLETE, 1: State.FAIL, 2: State.COMPLETE, 3: State.FAIL,
                      4: State.PRUNED, 5: State.FAIL}
    assert study.study.best_value == -140.0
    assert study.study.trials[0].intermediate_values == {1: -200.0}


def test_a_refill_is_sampled_knowing_how_the_members_whose_slots_it_takes_ended():
    """The group tells the study its epoch's results as it asks for refills: with TPE's start-up
    of 2 met by the two members that just finished, the refill is TPE's guess, not a random one
    (before, the refill was asked first and the results reached the study after it)."""
    space = {"lr": SPACES["vae"]["lr"]}
    ended = {"m000": {"epoch": 1, "val_elbo": -150.0, "status": "finished"},
             "m001": {"epoch": 1, "val_elbo": -160.0, "status": "finished"}}
    kinds = {}
    for told in (False, True):
        study = MemberStudy(space, num_configs=3, metric="val_elbo", mode="max", seed=0,
                            first={"lr": 1e-3}, startup=2)
        assert list(study.ask("g", 2)) == ["m000", "m001"]
        assert list(study.ask("g", 2, epoch=1, results=ended if told else None)) == ["m002"]
        kinds[told] = study.sampled()
    assert kinds[False] == {"g-m000": "default", "g-m001": "random", "g-m002": "random"}
    assert kinds[True] == {"g-m000": "default", "g-m001": "random", "g-m002": "guided"}


def test_the_searcher_reads_each_members_results_from_tunes_flattened_report():
    """Tune hands a searcher its results flattened; read as they were, every member's were missing
    and each was told Optuna as failed, so TPE never learned from a fused sweep."""
    from ray.tune.utils import flatten_dict

    report = {"val_elbo": -150.0, MEMBER_RESULTS_KEY: {
        "m000": {"epoch": 2, "val_elbo": -150.0, "status": "finished"},
        "m001": {"epoch": 1, "status": "diverged"}}, "training_iteration": 2}
    assert member_results(flatten_dict(report)) == report[MEMBER_RESULTS_KEY]
    assert member_results(report) == report[MEMBER_RESULTS_KEY]
    assert member_results({"val_elbo": -1.0}) == {}


def test_the_searcher_pickles_the_study_actors_name_and_not_its_handle():
    """A --resume unpickles the searcher in a new Ray run: a handle would name the old actor."""
    import pickle
    from argparse import Namespace

    from sweeps.modes import sweep_mode
    from sweeps.study import StudySearch

    mode = sweep_mode(Namespace(fuse=4, metric="val_elbo", scheduler="asha"), "max")
    searcher = StudySearch("vae-sweep", mode)
    searcher._study = "the old run's actor"
    restored = pickle.loads(pickle.dumps(searcher))
    assert restored._study is None and restored.actor_name == searcher.actor_name
    assert searcher._study == "the old run's actor"  # pickling leaves the live searcher's handle


def test_a_restored_study_adopts_the_refills_asked_after_its_last_save():
    study = MemberStudy(SPACES["vae"], num_configs=4, metric="val_elbo", mode="max", seed=0)
    study.ask("t0", 2)
    saved = study.state()
    refill = study.ask("t0", 1, epoch=1)  # then the sweep stops before the next save

    restored = MemberStudy(SPACES["vae"], num_configs=4, metric="val_elbo", mode="max", seed=0)
    restored.load(saved)
    assert restored.left() == 2
    restored.adopt("t0", refill)  # the group, restored from its checkpoint, names its members
    restored.adopt("t0", refill)  # (once)
    assert restored.left() == 1
    restored.finish("t0", {"m002": {"epoch": 2, "val_elbo": -120.0, "status": "finished"}})
    best = restored.study.best_trial
    assert best.params == refill["m002"] and best.value == -120.0


@pytest.mark.slow
def test_a_fused_vae_sweep_keeps_every_configuration_a_trial(data_dir, tmp_path):
    run = subprocess.run(
        [sys.executable, str(REPO / "sweeps" / "vae_sweep.py"), "--data-dir", str(data_dir),
         "--storage-path", str(tmp_path), "--name", "fused", "--fuse", "2", "--num-samples", "3",
         "--epochs", "2", "--train-subset", "256", "--batch-size", "64", "--scheduler", "fifo",
         "--max-concurrent", "2", "--test-top", "2"],
        capture_output=True, text=True, timeout=900, cwd=tmp_path)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert "test split, once, for the best 2 by val_elbo" in run.stdout

    # MLflow: one child run per configuration, each with both epochs exactly once and a true end
    runs = mlflow_runs(f"sqlite:///{tmp_path / 'mlflow.db'}", "fused")
    members = runs[runs[f"tags.{GROUP_TAG}"].notna()]
    assert len(members) == 3
    assert set(members["status"]) == {"FINISHED"}
    assert set(members["tags.gensweep.status"]) == {"finished"}
    assert members[f"tags.{GROUP_TAG}"].nunique() == 2  # groups of 2 and 1
    assert members["params.lr"].nunique() == 3
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    for run_id in members["run_id"]:
        steps = [m.step for m in client.get_metric_history(run_id, "val_elbo")]
        assert sorted(steps) == [1, 2]

    # Each member's folder holds its own grids and figures
    groups = [p for p in (tmp_path / "fused").iterdir() if p.name.startswith("train_group")]
    assert not (tmp_path / "fused" / "orphaned").exists()  # every group folder is one Tune knows
    folders = [m for g in groups for m in g.iterdir() if m.is_dir() and m.name.startswith("m0")]
    assert len(folders) == 3
    for folder in folders:
        assert (folder / "samples" / "epoch_002.png").exists()
        assert (folder / "samples_across_epochs.png").exists()
        assert (folder / "real_vs_reconstructed.png").exists()

    # The analysis sees three trials, from Ray's folder and from MLflow alike
    from_ray = load_trials(results=tmp_path / "fused")
    from_mlflow = load_trials(experiment="fused", tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    assert len(from_ray) == len(from_mlflow) == 3
    assert set(from_ray["trial_id"]) == set(from_mlflow["trial_id"])
    assert set(from_ray["status"]) == {"finished"}
    # ... and the sweep's final table names them as they do, <group>-<member>
    final_table = run.stdout.split("best trials by val_elbo")[1]
    assert all(trial_id in final_table for trial_id in from_ray["trial_id"])
    # Each member's folder, <group>/<member>, whichever source the table came from
    folders_seen = from_ray.set_index("trial_id")["figures_dir"]
    pd.testing.assert_series_equal(folders_seen, from_mlflow.set_index("trial_id")["figures_dir"][
        folders_seen.index])
    assert {Path(f) for f in folders_seen} == {f.resolve() for f in folders}
    # The best two by val_elbo, and only they, were measured on the test split, once, at the end:
    # the same numbers in their folders, their MLflow runs and the parent's leaderboard.
    for table in (from_ray, from_mlflow):
        ranked = rank_trials(table).set_index("trial_id")
        assert ranked["test_elbo"].notna().tolist() == [True, True, False]
    for run_id in members["run_id"]:
        steps = [m.step for m in client.get_metric_history(run_id, "test_elbo")]
        assert steps in ([], [2])
    pd.testing.assert_series_equal(rank_trials(from_ray)["test_elbo"],
                                   rank_trials(from_mlflow)["test_elbo"])
    # The first configuration (m000) is the seed's default, and the analysis recognises it.
    first = from_ray[from_ray["trial_id"].str.endswith("-m000")]  # <group id>-<member>
    assert len(first) == 1 and is_default_config(first.iloc[0], "vae")
    assert from_ray.apply(is_default_config, axis=1, model="vae").sum() == 1
    # How each configuration was chosen, counted from the sweep's Optuna study: the default, then
    # TPE's random start-up (both groups asked before any configuration had ended); the same from
    # either source (the sweep's sampled.json, its runs' gensweep.sampled tags)
    kinds = from_ray.set_index("trial_id")["sampled"]
    assert kinds[first.iloc[0]["trial_id"]] == "default"
    assert sorted(kinds) == ["default", "random", "random"]
    pd.testing.assert_series_equal(kinds, from_mlflow.set_index("trial_id")["sampled"][kinds.index])

    # A finished sweep run again with --resume measures nothing twice and logs nothing twice.
    tested = {f: f.stat().st_mtime_ns for f in tmp_path.glob("fused/train_group*/m*/test_metrics.json")}
    assert len(tested) == 2
    again = subprocess.run(
        [sys.executable, str(REPO / "sweeps" / "vae_sweep.py"), "--data-dir", str(data_dir),
         "--storage-path", str(tmp_path), "--name", "fused", "--resume"],
        capture_output=True, text=True, timeout=900, cwd=tmp_path)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    # Its console counts the two groups and the three configurations as ended (it said "0 done,
    # 0 running, 2 pending"), and names the best as the analysis does
    best = rank_trials(from_ray).iloc[0]
    assert (f"] groups 2 done, 0 running; 3 of 3 configurations ended; best val_elbo "
            f"{best['val_elbo']:.4g} ({best['trial_id']})") in again.stdout
    assert {f: f.stat().st_mtime_ns for f in tested} == tested
    for run_id in members["run_id"]:
        assert [m.step for m in client.get_metric_history(run_id, "test_elbo")] in ([], [2])
    (parent,) = runs[runs[f"tags.{GROUP_TAG}"].isna()].run_id
    assert len(client.get_metric_history(parent, "best_test_elbo")) == 1
    # the resumed searcher's restored study tells the same story
    pd.testing.assert_series_equal(load_trials(results=tmp_path / "fused").set_index("trial_id")[
        "sampled"][kinds.index], kinds)


@pytest.mark.slow
def test_a_fused_group_refills_the_slots_of_members_that_end(data_dir, tmp_path):
    """--fuse 2, 4 configurations, one group at a time, ASHA: a member stopped early (or
    finished) hands its slot to a fresh configuration, so one group trains all four, each its own
    epochs from 1 and its own run, folder and row; --no-refill needs two groups (they shrink)."""
    def sweep(name: str, *extra: str) -> subprocess.CompletedProcess:
        run = subprocess.run(
            [sys.executable, str(REPO / "sweeps" / "vae_sweep.py"), "--data-dir", str(data_dir),
             "--storage-path", str(tmp_path), "--name", name, "--fuse", "2", "--num-samples", "4",
             "--epochs", "2", "--train-subset", "256", "--batch-size", "64", "--scheduler", "asha",
             "--grace-period", "1", "--max-concurrent", "1", "--test-top", "0", *extra],
            capture_output=True, text=True, timeout=900, cwd=tmp_path)
        assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
        return run

    run = sweep("refilled")
    (group,) = [p for p in (tmp_path / "refilled").iterdir() if p.name.startswith("train_group")]
    assert run.stdout.count("(refills a slot)") == 2
    assert "2 groups of 2" not in run.stdout and "each slot refilled as its member ends" in run.stdout
    trials = load_trials(results=tmp_path / "refilled")
    assert len(trials) == 4 and trials["trial_id"].str.startswith(group.name.split("_")[-1]).all()
    assert set(trials["status"]) <= {"finished", "stopped_early"} and "finished" in set(trials["status"])
    assert trials["config/lr"].nunique() == 4
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    runs = mlflow_runs(uri, "refilled")
    members = runs[runs[f"tags.{GROUP_TAG}"].notna()]
    assert len(members) == 4 and set(members["status"]) == {"FINISHED"}
    client = MlflowClient(uri)
    for _, member in members.iterrows():
        steps = sorted(m.step for m in client.get_metric_history(member.run_id, "val_elbo"))
        # each member's own epochs, from 1, whenever it joined the group
        assert steps == ([1, 2] if member["tags.gensweep.status"] == "finished" else [1])
        name = member["tags.mlflow.runName"].split("-")[-1]
        assert (group / name / "samples" / f"epoch_{steps[-1]:03d}.png").exists()
        assert (group / name / "samples_across_epochs.png").exists()

    # result.json grows by one epoch per report: each names the members that trained its epoch
    # (or ended in it) and the refills that joined after it, each refill once; the last, all.
    reports = [json.loads(line) for line in (group / "result.json").read_text().splitlines()]
    added = [m for r in reports[:-1] for m in r["added_members"]]
    assert len(added) == len(set(added)) == 2
    assert all(len(r["member_results"]) <= 2 for r in reports[:-1])
    assert len(reports[-1]["member_results"]) == 4 and len(reports[-1]["added_members"]) == 2
    assert load_sweep(results=tmp_path / "refilled").history["trial_id"].nunique() == 4

    sweep("shrunk", "--no-refill")
    groups = [p for p in (tmp_path / "shrunk").iterdir() if p.name.startswith("train_group")]
    assert len(groups) == 2 and len(load_trials(results=tmp_path / "shrunk")) == 4


def test_the_setup_says_when_a_fused_sweep_leaves_slots_free_and_which_fuse_fills_them():
    from sweeps.modes import sweep_mode
    from sweeps.options import parse_options

    def free_slots_line(args, at_once: int):
        return sweep_mode(args, "max").free_slots_line(at_once)

    args = parse_options("vae", ["--num-samples", "64", "--gpus-per-trial", "1"])  # fuses 16
    assert free_slots_line(args, at_once=8) == (
        "slots      64 configurations fill 4 groups of 16, and the cluster runs 8 at once: "
        "4 slot(s) stay free (--fuse 8 would fill them: smaller groups, each on its own slot)")
    assert free_slots_line(args, at_once=4) is None  # every slot trains
    assert free_slots_line(parse_options("vae", ["--num-samples", "64"]), at_once=8) is None  # unfused
    chosen = parse_options("vae", ["--num-samples", "64", "--fuse", "16", "--max-concurrent", "2"])
    assert free_slots_line(chosen, at_once=2) is None  # the user chose how many run at once


def test_a_sweep_on_gpus_fuses_by_default_and_one_on_cpus_does_not():
    from sweeps.options import parse_options

    for model in ("vae", "gan"):
        assert parse_options(model, ["--gpus-per-trial", "1"]).fuse == 16
        assert parse_options(model, ["--gpus-per-trial", "0.5", "--fuse", "4"]).fuse == 4
        assert parse_options(model, []).fuse == 1


def test_the_header_names_the_defaults_that_gpus_applied_and_how_to_override_them():
    from sweeps.options import gpu_defaults_line, parse_options

    gan = parse_options("gan", ["--gpus-per-trial", "1"])
    assert (gan.fuse, gan.epochs, gan.grace_period) == (16, 100, 10)
    assert gpu_defaults_line(gan) == ("defaults   GPU defaults: fuse 16, epochs 100, grace period 10; "
                                      "override with --fuse, --epochs, --grace-period")
    # Only those the user left to their default, and none on CPUs
    given = parse_options("gan", ["--gpus-per-trial", "1", "--fuse", "4", "--epochs", "20"])
    assert gpu_defaults_line(given) == ("defaults   GPU defaults: grace period 10; "
                                        "override with --grace-period")
    assert gpu_defaults_line(parse_options("vae", ["--gpus-per-trial", "0.5"])) == (
        "defaults   GPU defaults: fuse 16; override with --fuse")
    assert gpu_defaults_line(parse_options("gan", [])) is None


@pytest.mark.slow
def test_a_fused_gan_sweep_scores_tests_and_records_every_member(data_dir, tmp_path):
    """The main job's GPU default, fused GAN groups, end to end on the CPU: members scored per
    epoch in one batched pass, the best tested once, each member its own run, folder and row, a
    refill included (one group at a time, on all CPUs: the third configuration takes a finished
    member's slot)."""
    run = subprocess.run(
        [sys.executable, str(REPO / "sweeps" / "gan_sweep.py"), "--data-dir", str(data_dir),
         "--storage-path", str(tmp_path), "--name", "fused-gan", "--fuse", "2", "--num-samples", "3",
         "--cpus-per-trial", str(os.cpu_count()), "--epochs", "1", "--train-subset", "256",
         "--batch-size", "64", "--scheduler", "fifo",
         "--eval-samples", "200", "--test-samples", "200", "--classifier-epochs", "1",
         "--cache-dir", str(tmp_path / "cache"), "--test-top", "1"],
        capture_output=True, text=True, timeout=900, cwd=tmp_path)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert "test split, once, for the best 1 by val_fcd" in run.stdout

    (group,) = [p for p in (tmp_path / "fused-gan").iterdir() if p.name.startswith("train_group")]
    folders = sorted(m for m in group.iterdir() if m.is_dir() and m.name.startswith("m0"))
    assert len(folders) == 3  # m002, the refill, trained its own epoch 1 in the group's epoch 2
    for folder in folders:
        assert (folder / "samples" / "epoch_001.png").exists()
        assert (folder / "real_vs_generated.png").exists()
        assert json.loads((folder / "status.json").read_text())["status"] == "finished"

    runs = mlflow_runs(f"sqlite:///{tmp_path / 'mlflow.db'}", "fused-gan")
    members = runs[runs[f"tags.{GROUP_TAG}"].notna()]
    assert len(members) == 3 and set(members["status"]) == {"FINISHED"}
    assert members[["metrics.val_fcd", "metrics.val_inception_score"]].notna().all().all()
    ranked = rank_trials(load_trials(results=tmp_path / "fused-gan")).set_index("trial_id")
    assert len(ranked) == 3 and ranked["val_fcd"].notna().all() and set(ranked["epochs"]) == {1}
    assert ranked["test_fcd"].notna().tolist() == [True, False, False]  # the best by val_fcd only

    # Without --max-concurrent the sweep ran as many groups as the machine held; it keeps that
    # number, so the report's account of the search is exact rather than a hedge.
    options = json.loads((tmp_path / "fused-gan" / OPTIONS_FILE).read_text())
    assert options["max_concurrent"] is None and options["at_once"] >= 1
    # The refill was asked as both members ended: TPE's start-up of 2 had ended, so it is TPE's
    # guess, and the report counts it so (the estimate from the start-up count said random).
    assert ranked["sampled"].to_dict() == {
        f"{group.name.split('_')[-1]}-m000": "default", f"{group.name.split('_')[-1]}-m001": "random",
        f"{group.name.split('_')[-1]}-m002": "guided"}
    budget = search_notes(ranked.reset_index(), "val_fcd", "min", "gan", options)[0]
    assert budget.startswith("Search budget: 3 configurations in groups of 2, each slot refilled as "
                             "its member ended: trial 1 the default, 1 random start-up, 1 guided")


@pytest.mark.slow
def test_diverged_members_are_failed_trials_and_the_exit_code_says_so(data_dir, tmp_path):
    space = tmp_path / "absurd.yaml"
    space.write_text("lr: {low: 1.0e+3, high: 1.0e+4, log: true}\n")  # every member blows up
    run = subprocess.run(
        [sys.executable, str(REPO / "sweeps" / "vae_sweep.py"), "--data-dir", str(data_dir),
         "--storage-path", str(tmp_path), "--name", "absurd", "--fuse", "2", "--num-samples", "2",
         "--epochs", "2", "--train-subset", "256", "--batch-size", "64", "--scheduler", "fifo",
         "--space", str(space)],
        capture_output=True, text=True, timeout=900, cwd=tmp_path)
    assert run.returncode == 3, run.stdout[-3000:] + run.stderr[-3000:]  # EXIT_TRIALS_FAILED
    # The default (lr 1e-3) is outside this space: said, skipped; the diverged are never "best"
    assert "The default configuration is not run first: lr 0.001 is outside" in run.stdout
    assert "no configuration ended with a result" in run.stdout
    runs = mlflow_runs(f"sqlite:///{tmp_path / 'mlflow.db'}", "absurd")
    members = runs[runs[f"tags.{GROUP_TAG}"].notna()]
    assert len(members) == 2
    assert set(members["status"]) == {"FAILED"}
    assert set(members["tags.gensweep.status"]) == {"diverged"}
