"""Sweeps from Python and notebooks: the command line's sweep as a function.

    from sweeps import run_sweep

    sweep = run_sweep("vae", smoke=True, data_dir="data")   # what `python sweeps/vae_sweep.py
    sweep.trials                                             #   --smoke --data-dir data` runs
    sweep.best["val_elbo"], sweep.load_model()               # the ranked table, the best network
    run_sweep("vae", name="vae-sweep", resume=True)          # continue a stopped sweep

The options are the command line's long options with underscores (`num_samples=16`, `fuse=4`,
`no_refill=True` or `refill=False`), read from the one parser both use (`sweeps/options.py`): no
option is typed twice. A bad value raises ValueError with the message the command line prints, an
unknown keyword TypeError, both before Ray starts. The console lines are the command line's. A
stop (Ctrl-C, or interrupting a notebook's kernel) ends the sweep as on the command line, every
trial's records true and the sweep resumable, and raises KeyboardInterrupt saying how to go on.
"""

from __future__ import annotations

import argparse

from analysis.load import Sweep, load_sweep
from results.ranking import rank_trials
from sweeps.options import RESUME_CURRENT, build_parser, parse_options
from sweeps.runner import BAD_INPUT_ERRORS, EXIT_OK, EXIT_TRIALS_FAILED, one_line, sweep_in
from sweeps.signals import Stopped, StopSignals
from sweeps.storage import storage_uri

MODELS = ("vae", "gan")


def command_line(model: str, options: dict) -> list[str]:
    """`options` as the sweep's command line (a value of None: the option's default)."""
    if model not in MODELS:
        raise ValueError(f"model must be one of {MODELS}, got {model!r}")
    parser = build_parser(model)
    # argparse keeps its options in `_actions` (no public accessor); each knows its flags and dest.
    by_name = {}
    for action in parser._actions:
        if action.option_strings and action.dest != "help":
            by_name[action.dest] = action
            for flag in action.option_strings:  # --no-refill as no_refill=True
                by_name.setdefault(flag.removeprefix("--").replace("-", "_"), action)
    argv = []
    for name, value in options.items():
        action = by_name.get(name)
        if action is None:
            known = ", ".join(sorted({a.dest for a in by_name.values()}))
            raise TypeError(f"run_sweep() got an unexpected keyword argument {name!r}; it takes the "
                            f"{model} sweep's options: {known}")
        if value is None:
            continue
        flag = "--" + name.replace("_", "-")
        if isinstance(action, argparse.BooleanOptionalAction):
            positive = action.option_strings[0]
            argv.append(positive if (value is True) == (flag == positive) else f"--no-{positive[2:]}")
        elif action.nargs == 0:  # store_true
            if not isinstance(value, bool):
                raise ValueError(f"{flag} is a switch: pass True or False, got {value!r}")
            argv += [action.option_strings[0]] if value else []
        else:
            argv += [action.option_strings[0], str(value)]
    return argv


def run_sweep(model: str, **options) -> Sweep:
    """Run (or with resume=True continue) a sweep of `model` ("vae" or "gan"); returns the
    finished sweep (`analysis.Sweep`) with its trials ranked best first (`rank_trials`)."""
    argv = command_line(model, options)
    with StopSignals() as stop:
        try:
            code = sweep_in(model, argv, stop)
        except BAD_INPUT_ERRORS as err:
            raise ValueError(one_line(err)) from None
        except Stopped as err:
            raise KeyboardInterrupt(f"stopped by {err}: {stop.leaves}") from None
    if code not in (EXIT_OK, EXIT_TRIALS_FAILED):  # a stop Tune handled: the sweep is resumable
        where = "".join(f"{k}={v!r}, " for k, v in options.items() if k in RESUME_CURRENT and k != "resume")
        raise KeyboardInterrupt(f"the sweep stopped; continue it with run_sweep({model!r}, {where}"
                                "resume=True)")
    args = parse_options(model, argv)
    sweep = load_sweep(results=f"{storage_uri(args.storage_path)}/{args.name}")
    sweep.trials = rank_trials(sweep.trials, sweep.metric, sweep.mode, history=sweep.history)
    return sweep
