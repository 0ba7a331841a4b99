"""Ray for a sweep: the checks of what it asks for, and Ray's start (or a cluster joined).

`check_local_gpus` and `check_cluster_answers` run before Ray starts (each a one-line error);
`RayStart` starts it so that Ctrl-C and SIGTERM keep working (sweeps/signals.py); once up,
`check_resources` asks the cluster whether some node can run one trial at all.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import sys
import threading
import time

from sweeps.options import SweepError
from sweeps.signals import StopSignals


def check_local_gpus(args: argparse.Namespace) -> None:
    """A local Ray sees the GPUs torch sees: refuse a GPU request before Ray starts. (On a
    cluster, --address, check_resources asks Ray once joined.)"""
    if args.address or args.gpus_per_trial == 0:
        return
    import torch

    count = torch.cuda.device_count()
    if count == 0:
        raise SweepError(f"--gpus-per-trial {args.gpus_per_trial:g} asks for GPUs, but this "
                         "machine has none that torch can use; use --gpus-per-trial 0 (CPU) or "
                         "join a GPU cluster with --address")
    if args.gpus_per_trial > count:
        raise SweepError(f"--gpus-per-trial {args.gpus_per_trial:g} is more than this machine's "
                         f"{count} GPU(s)")


def live_nodes() -> list[dict]:
    """The resources of each live node of the Ray cluster this process is connected to."""
    import ray

    return [n["Resources"] for n in ray.nodes() if n.get("Alive")]


def check_resources(args: argparse.Namespace) -> dict:
    """Fail now, not with trials pending forever, if no node can ever run one trial."""
    nodes = live_nodes()
    max_cpus = max((n.get("CPU", 0) for n in nodes), default=0)
    max_gpus = max((n.get("GPU", 0) for n in nodes), default=0)
    total_gpus = sum(n.get("GPU", 0) for n in nodes)
    if args.cpus_per_trial > max_cpus:
        raise SweepError(f"--cpus-per-trial {args.cpus_per_trial:g} is more than any node has "
                         f"(largest: {max_cpus:g} CPUs); lower it")
    if args.gpus_per_trial > 0 and total_gpus == 0:
        raise SweepError(f"--gpus-per-trial {args.gpus_per_trial:g} asks for GPUs, but this Ray "
                         "cluster has none; use --gpus-per-trial 0 (CPU) or join a GPU cluster")
    if args.gpus_per_trial > max_gpus:
        raise SweepError(f"--gpus-per-trial {args.gpus_per_trial:g} is more than any node has "
                         f"(largest: {max_gpus:g} GPUs)")
    return {"cpu": args.cpus_per_trial, "gpu": args.gpus_per_trial}


def trials_the_cluster_holds(args: argparse.Namespace) -> int:
    """How many trials the cluster's live nodes can run at once now: the sweep's concurrency
    unless --max-concurrent says otherwise."""
    held = 0
    for node in live_nodes():
        fits = node.get("CPU", 0) // args.cpus_per_trial
        if args.gpus_per_trial > 0:
            fits = min(fits, node.get("GPU", 0) // args.gpus_per_trial)
        held += int(fits)
    return max(1, held)


# Ray binds its gRPC servers (GCS, raylet, workers) to 127.0.0.1 only when the node's address is
# 127.0.0.1, and picks that address only where it does not expect a multi-machine cluster: Ray's
# Windows/macOS default, which this variable turns on for Linux too. Ray reads it on import.
LOOPBACK_ONLY_ENV = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}


# Ray's C++ failure handler takes SIGTERM from the driver (a SIGTERM then aborts it with a native
# stack trace, exit 134): off, the sweep's own handler keeps it. Ray reads it on import.
DRIVER_SIGNALS_ENV = {"RAY_DISABLE_FAILURE_SIGNAL_HANDLER": "1"}


def set_ray_environment(local: bool) -> None:
    """Before Ray is imported: the driver keeps its signal handlers, and a local sweep's Ray (no
    --address) listens on 127.0.0.1 only, so nothing on the network can reach it. In a process
    that imported Ray already (a notebook), Ray keeps its defaults; a user who wants these sets
    the variables first."""
    if "ray" not in sys.modules:
        for name, value in {**DRIVER_SIGNALS_ENV, **(LOOPBACK_ONLY_ENV if local else {})}.items():
            os.environ.setdefault(name, value)


CLUSTER_WAIT_SECONDS = 10  # how long --address host:port may take to accept a connection


def check_cluster_answers(address: str | None, wait: float = CLUSTER_WAIT_SECONDS) -> None:
    """Something listens at --address host:port (the head's GCS port, or ray://host:port for Ray
    Client), within `wait` seconds: ray.init itself waits minutes on an address where nothing
    answers. (`auto` is Ray's to resolve; it fails fast when no cluster runs here.)"""
    if not address or address == "auto":
        return
    host, _, port = address.split("://", 1)[-1].rpartition(":")
    if not host or not port.isdigit():
        raise SweepError(f"--address {address}: expected host:port (the head's address, port 6379 "
                         "by default), ray://host:port for Ray Client, or auto")
    deadline = time.monotonic() + wait
    while True:
        try:
            with socket.create_connection((host.strip("[]"), int(port)), timeout=max(
                    0.1, min(5.0, deadline - time.monotonic()))):
                return
        except OSError as err:
            if time.monotonic() + 1 >= deadline:
                raise SweepError(
                    f"--address {address}: no Ray cluster answers there ({err}, for {wait:g} s). "
                    "Check the head's host and port (`ray status` on the head prints it), start "
                    "one with `ray start --head`, or drop --address for a local Ray") from None
            time.sleep(1)


class RayStart:
    """Start (or join) Ray from a thread of its own while the main thread waits for it.

    - A stop signal meanwhile waits for Ray to be up and then stops the sweep, which shuts Ray
      down: a Ray stopped half-started leaves processes behind and can crash the process on its
      way out.
    - Ray's processes start from this thread and keep its signal mask: with SIGINT blocked there,
      a terminal's Ctrl-C (sent to the whole process group) reaches the driver only, which stops
      the trials through Tune. Before, a Ctrl-C while Ray's processes started up killed them and
      the driver then waited on them without end.
    - Ray ties the life of the processes it starts to the thread that started them (Linux's
      parent-death signal), so the thread stays, parked, until `shutdown`.
    - Off the main thread, ray.init leaves the sweep's SIGTERM handler alone (it sets its own,
      sys.exit(15), on the main thread)."""

    def __init__(self, address: str | None):
        self.address, self.failed = address, []
        self.up, self.done = threading.Event(), threading.Event()
        self.thread = threading.Thread(target=self._start, name="ray-start", daemon=True)

    def _start(self) -> None:
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
        try:
            init_ray(self.address)
        except BaseException as err:  # raised again in the main thread
            self.failed.append(err)
        finally:
            self.up.set()
        self.done.wait()

    def __call__(self, stop: StopSignals) -> None:
        stop.check()
        with stop.deferred():
            self.thread.start()
            while not self.up.wait(0.1):
                pass
        if self.failed:
            raise self.failed[0]

    def shutdown(self) -> None:
        import ray

        ray.shutdown()
        self.done.set()


def init_ray(address: str | None) -> None:
    import ray

    if address:
        try:
            ray.init(address=address, log_to_driver=False)
        except Exception as err:  # ConnectionError, auth errors, timeouts: all mean "can't join"
            raise SweepError(
                f"could not join the Ray cluster at {address!r} ({str(err)[:300]}). Start one with "
                "`ray start --head`, drop --address for a local Ray, and on a cluster with token "
                "authentication set RAY_AUTH_MODE=token with the cluster's ~/.ray/auth_token"
            ) from err
    else:
        # "local": always a fresh Ray of this process, never silently joining a cluster that
        # happens to run on this machine (that is what --address auto is for).
        ray.init(address="local", include_dashboard=False, log_to_driver=False)
