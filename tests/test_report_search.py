"""The report's account of the search (issue 11): how much of the budget was random, the default
configuration against the best, importances only from enough finished trials, and never a failed
trial among the best. A hand-made sweep table, no Ray and no training: seconds.

    pytest tests/test_report_search.py -q
"""

import pandas as pd
import pytest

from analysis.report import (
    MIN_IMPORTANCE_TRIALS,
    best_rows,
    importances,
    search_notes,
    write_report,
)
from genmodels.names import DIRECTIONS, OBJECTIVES
from results.ranking import rank_trials
from results.table import Sweep

METRIC = OBJECTIVES["vae"][0]  # the VAE's sweep objective, whatever its name
MODE = DIRECTIONS[METRIC]
BETTER = 1.0 if MODE == "max" else -1.0
OPTIONS = {"num_samples": 16, "no_default_first": False, "max_concurrent": 1, "fuse": 1}


def trials_table(finished: int, failed_best: bool = True) -> pd.DataFrame:
    """`finished` usable trials, the first the seed's default (value 0), trial k scoring k * BETTER;
    plus a diverged trial whose last value would be the best of all, and a failed one."""
    rows = [{"trial_id": f"t{k:02d}", "status": "finished", "model": "vae",
             "config/dropout": 0.1 if k == 0 else 0.01 * k,
             "config/latent_dim": 20 if k == 0 else 4 + k, "config/lr": 1e-3 if k == 0 else 1e-4 * k,
             METRIC: k * BETTER} for k in range(finished)]
    rows.append({"trial_id": "x-diverged", "status": "diverged", "model": "vae", "config/dropout": 0.2,
                 "config/latent_dim": 30, "config/lr": 2e-3,
                 METRIC: 1e6 * BETTER if failed_best else None})
    rows.append({"trial_id": "y-failed", "status": "failed", "model": "vae", "config/dropout": 0.3,
                 "config/latent_dim": 40, "config/lr": 2.5e-3, METRIC: None})
    frame = pd.DataFrame(rows)
    frame["config/latent_dim"] = frame["config/latent_dim"].astype("Int64")
    return frame


def test_the_best_are_finished_trials_only_even_when_few_finished():
    ranked = rank_trials(trials_table(2), METRIC, MODE)
    best = best_rows(ranked, METRIC, 5)
    assert list(best["trial_id"]) == ["t01", "t00"]


def test_the_report_says_how_much_of_the_budget_was_random_and_how_the_default_did():
    ranked = rank_trials(trials_table(16), METRIC, MODE)
    budget, default = search_notes(ranked, METRIC, MODE, "vae", OPTIONS)
    assert "16 configurations: trial 1 the default, 3 random start-up, 12 guided" in budget
    assert "4 of 16 (25%) not guided by TPE" in budget
    assert "Derived from TPE's start-up count" in budget and "random until 4 configurations" in budget
    assert default == (f"The default configuration (trial t00) ranks #16 with {METRIC} 0; the best "
                       "trial (t15) beats it by 15 (one seed each).")

    two_at_once = search_notes(ranked, METRIC, MODE, "vae", {**OPTIONS, "max_concurrent": 2})[0]
    assert "trial 1 the default, 4 random start-up, 11 guided" in two_at_once
    unknown = search_notes(ranked, METRIC, MODE, "vae", {**OPTIONS, "max_concurrent": None})[0]
    assert "so more than 3 may have started at random" in unknown
    recorded = search_notes(ranked, METRIC, MODE, "vae",  # what the sweep ran at once, kept since
                            {**OPTIONS, "max_concurrent": None, "at_once": 2})[0]
    assert "4 random start-up, 11 guided" in recorded and "and 2 trials ran at once" in recorded
    fused = search_notes(ranked, METRIC, MODE, "vae", {**OPTIONS, "fuse": 4})[0]
    assert fused.startswith("Search budget: 16 configurations in groups of 4: trial 1 the default")
    one_group = search_notes(ranked, METRIC, MODE, "vae", {**OPTIONS, "fuse": 16,
                                                           "max_concurrent": 2})[0]
    assert one_group.startswith("Search budget: 16 configurations in one group: trial 1 the "
                                "default, 15 random start-up, 0 guided")
    assert "and 1 group ran at once" in one_group  # not more than the configurations fill


def test_a_sweep_from_before_the_sized_start_up_reads_as_optunas_ten():
    ranked = rank_trials(trials_table(16), METRIC, MODE)
    ranked = ranked[ranked["trial_id"] != "t00"]  # no default trial then
    old = {k: v for k, v in OPTIONS.items() if k != "no_default_first"}
    budget, default = search_notes(ranked, METRIC, MODE, "vae", old)
    assert "16 configurations: 10 random start-up, 6 guided" in budget and "Optuna default" in budget
    assert default.startswith("No trial ran the seed's default configuration")


def test_a_default_that_is_the_best_is_said_so():
    ranked = rank_trials(trials_table(3).assign(**{METRIC: lambda f: -f[METRIC]}), METRIC, MODE)
    default = search_notes(ranked, METRIC, MODE, "vae", OPTIONS)[1]
    assert default.endswith("no trial beat it: the default is the sweep's best (one seed each).")
    early = ranked.assign(status=ranked["status"].where(ranked["trial_id"] != "t00", "stopped_early"),
                          epochs=1)
    assert search_notes(early, METRIC, MODE, "vae", OPTIONS)[1].endswith(
        "It was stopped early by the scheduler after 1 epoch(s), so its value is not at the full "
        "budget.")


@pytest.mark.parametrize("finished", [3, MIN_IMPORTANCE_TRIALS - 1])
def test_importances_need_enough_finished_trials_and_say_how_many(finished):
    ranked = rank_trials(trials_table(finished), METRIC, MODE)
    table, messages = importances(ranked, METRIC, MODE)
    assert table.shape[1] == 0
    assert messages == [f"importances need at least {MIN_IMPORTANCE_TRIALS} finished trials with "
                        f"{METRIC}; this sweep has {finished}"]


def test_the_page_lists_the_failed_apart_and_says_it_to_the_console(tmp_path):
    trials = trials_table(4)
    history = pd.DataFrame([{"trial_id": t, "epoch": 1, "metric": METRIC, "value": v}
                            for t, v in zip(trials["trial_id"], trials[METRIC]) if pd.notna(v)])
    sweep = Sweep(name="hand", model="vae", metric=METRIC, mode=MODE, trials=trials,
                  history=history, source={"results": str(tmp_path), "options": OPTIONS})
    said = []
    files = write_report(sweep, tmp_path / "report", say=said.append)
    page = files["page"].read_text()
    best, apart = page.split("<h2>Best trials</h2>")[1].split("<h2>Not among the best")[:2]
    assert "x-diverged" not in best and "y-failed" not in best
    assert "x-diverged" in apart.split("<h2>")[0] and "y-failed" in apart.split("<h2>")[0]
    assert "trial 1 the default, 3 random start-up, 12 guided" in page
    assert "<th>default</th>" in best and best.count("<td>yes</td>") == 1  # t00 is marked
    assert said[-1] == (f"importances need at least {MIN_IMPORTANCE_TRIALS} finished trials with "
                        f"{METRIC}; this sweep has 4")
    assert any(line.startswith("The default configuration (trial t00)") for line in said)



def test_the_budget_is_counted_when_the_sweep_recorded_how_each_configuration_was_chosen():
    """A sweep records each trial's `sampled` from its Optuna study (sweeps/sampling.py): the
    report counts it instead of deriving the split; a trial without a record is said to be."""
    table = trials_table(16)
    table["sampled"] = pd.Series(["default", *["random"] * 5, *["guided"] * 11, None], dtype="string")
    ranked = rank_trials(table, METRIC, MODE)
    budget = search_notes(ranked, METRIC, MODE, "vae", OPTIONS)[0]
    assert budget.startswith("Search budget: 18 configurations: trial 1 the default, 5 random "
                             "start-up, 11 guided; 6 of 17 (35%) not guided by TPE. As the sweep's "
                             "Optuna study recorded them")
    assert "random until 4 configurations have ended" in budget and "1 not recorded" in budget
    assert "Derived" not in budget
