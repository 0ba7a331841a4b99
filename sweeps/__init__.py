"""The sweeps: `python sweeps/vae_sweep.py ...` on the command line, `run_sweep` from Python.

    from sweeps import run_sweep
    sweep = run_sweep("vae", smoke=True, data_dir="data")
"""


def __getattr__(name: str):
    # Imported when asked for: a sweep script handles its signals before its heavy imports start
    # (sweeps/signals.py:launch), and importing this package must not start them.
    if name == "run_sweep":
        from sweeps.api import run_sweep

        return run_sweep
    raise AttributeError(f"module 'sweeps' has no attribute {name!r}")
