"""A real multi-node Ray cluster on this machine, for the tests that need one: each node is
`ray start ... --block` as the test's own child in its own process group, so stopping (or killing)
a node ends that node's processes and nobody else's (`ray stop` would stop every Ray on the
machine, other test runs' included)."""

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

# `ray start --head` turns on token authentication (Ray >= 2.5x): every process that joins the
# cluster reads the token from ~/.ray/auth_token when RAY_AUTH_MODE=token, as a user's would.
CLUSTER_ENV = {**os.environ, "RAY_AUTH_MODE": "token"}
# The nodes themselves: no 30 s drain on SIGTERM (a Ray Serve courtesy these tests do not need).
NODE_ENV = {**CLUSTER_ENV, "RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S": "0"}
RAY_START_TIMEOUT = 120
NODE_STOP_TIMEOUT = 60
LOOPBACK = "--node-ip-address=127.0.0.1"  # the nodes talk over loopback only


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def own_disk_for_ray() -> list[str]:
    """A prefix that runs a command with a /tmp/ray of its own (a private mount namespace with an
    empty tmpfs there), as a worker node on another machine has its own disk for Ray's session
    files: what a trial writes to Ray's staging folders stays on that "machine". Empty where this
    system does not allow it (then the node shares this machine's /tmp/ray)."""
    Path("/tmp/ray").mkdir(exist_ok=True)
    probe = ["unshare", "-m", "sh", "-c", "mount -t tmpfs tmpfs /tmp/ray"]
    if shutil.which("unshare") is None or subprocess.run(probe, capture_output=True).returncode != 0:
        return []
    return ["unshare", "-m", "sh", "-c", 'mount -t tmpfs tmpfs /tmp/ray && exec "$@"', "sh"]


def start_node(log: Path, *args: str, env: dict | None = None) -> subprocess.Popen:
    """One node, `ray start <args> --block`; returns once the node is up. A worker node (one that
    joins with --address) gets a /tmp/ray of its own, as on another machine (`own_disk_for_ray`).
    `env`: variables the node's processes get besides NODE_ENV (credentials, say)."""
    ray_bin = str(Path(sys.executable).parent / "ray")
    own_disk = own_disk_for_ray() if any(a.startswith("--address") for a in args) else []
    with log.open("w") as out:
        process = subprocess.Popen([*own_disk, ray_bin, "start", *args, LOOPBACK,
                                    "--disable-usage-stats", "--block"], stdout=out,
                                   stderr=subprocess.STDOUT, env={**NODE_ENV, **(env or {})},
                                   start_new_session=True)
    deadline = time.time() + RAY_START_TIMEOUT
    while "Ray runtime started" not in log.read_text():
        if process.poll() is not None or time.time() > deadline:
            stop_node(process)
            raise RuntimeError(f"ray start {' '.join(args)} failed:\n{log.read_text()[-3000:]}")
        time.sleep(0.2)
    return process


def start_head(log: Path, *args: str, env: dict | None = None) -> tuple[subprocess.Popen, str]:
    """The head node (no dashboard); returns it and the cluster's address."""
    port = free_port()
    head = start_node(log, "--head", f"--port={port}", "--include-dashboard=false", *args, env=env)
    return head, f"127.0.0.1:{port}"


@contextmanager
def head_and_worker(logs: Path, head_gpus: int = 0, env: dict | None = None):
    """A real two-node Ray cluster on this machine, started as a user would (`ray start`): a head
    with 1 CPU and `head_gpus` logical GPUs, a worker with 1 CPU and its own /tmp/ray; `env`: for
    both nodes' processes. Yields the cluster's address; stops both nodes at the end."""
    logs.mkdir(parents=True, exist_ok=True)
    head, address = start_head(logs / "head.log", "--num-cpus=1", f"--num-gpus={head_gpus}",
                               env=env)
    nodes = [head]
    try:
        nodes.append(start_node(logs / "worker.log", f"--address={address}", "--num-cpus=1",
                                "--num-gpus=0", env=env))
        yield address
    finally:
        for node in reversed(nodes):
            stop_node(node)
        forget_cluster(address)


def forget_cluster(address: str) -> None:
    """`ray start --head` notes its address in /tmp/ray/ray_current_cluster for a later
    `ray.init()` to join; `ray stop` removes the note, a stopped --block node does not. Removes it
    if it names this test's cluster (same port), so no later `ray.init()` tries a dead cluster."""
    note = Path("/tmp/ray/ray_current_cluster")
    try:
        if note.read_text().strip().rsplit(":", 1)[-1] == address.rsplit(":", 1)[-1]:
            note.unlink()
    except OSError:
        pass


def kill_node(process: subprocess.Popen) -> None:
    """The node lost without warning, as when a machine goes away: SIGKILL, all at once, to every
    process of it: `ray start`, its raylet, object store and workers (its descendants; some run in
    their own process groups), and anything left in its process group."""
    doomed = [pid for pid in map(int, filter(str.isdigit, os.listdir("/proc")))
              if on_node(pid, process)]
    for pid in doomed:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    process.wait()


def parent(pid: int) -> int:
    """The parent of process `pid` (0 once it is gone), from /proc."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0
    return int(stat.rsplit(")", 1)[1].split()[1])  # the field after the state letter


def on_node(pid: int, node: subprocess.Popen) -> bool:
    """Whether process `pid` (e.g. a trial's worker) belongs to the node `node` started: the node
    (`ray start`) is among its ancestors (worker <- raylet <- ray start)."""
    while pid > 1:
        if pid == node.pid:
            return True
        pid = parent(pid)
    return False


def stop_node(process: subprocess.Popen) -> None:
    """SIGTERM: `ray start --block` then stops the processes it started; a node that does not end
    in time is killed with its whole process group (only this node's)."""
    if process.poll() is None:
        process.terminate()
    try:
        process.wait(timeout=NODE_STOP_TIMEOUT)
    except subprocess.TimeoutExpired:
        pass
    kill_node(process)  # leftovers of this node only


def process_tree(pid: int) -> set[int]:
    """`pid` and every process under it."""
    parents = {p: parent(p) for p in map(int, filter(str.isdigit, os.listdir("/proc")))}
    tree, grew = {pid}, True
    while grew:
        more = {p for p, q in parents.items() if q in tree} - tree
        tree |= more
        grew = bool(more)
    return tree


def listening_addresses(pids: set[int]) -> set[str]:
    """The local addresses (IPv4 or IPv6, without the port) on which these processes listen for
    TCP connections, from /proc: each socket's inode, matched to the processes' open files."""
    inodes = set()
    for pid in pids:
        try:
            for fd in os.listdir(f"/proc/{pid}/fd"):
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
                if target.startswith("socket:["):
                    inodes.add(target[8:-1])
        except OSError:  # the process ended meanwhile
            continue
    listening = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            local, state, inode = fields[1], fields[3], fields[9]
            if state == "0A" and inode in inodes:  # 0A: LISTEN
                listening.add(hex_address(local.split(":")[0]))
    return listening


def hex_address(word: str) -> str:
    """/proc/net/tcp's address: little-endian 32-bit words of hex. 0100007F -> 127.0.0.1; an
    IPv6 address of an IPv4 one (::ffff:a.b.c.d) -> a.b.c.d."""
    raw = b"".join(bytes.fromhex(word[i:i + 8])[::-1] for i in range(0, len(word), 8))
    if len(raw) == 16 and raw[:12] == bytes(10) + b"\xff\xff":
        raw = raw[12:]
    return socket.inet_ntop(socket.AF_INET if len(raw) == 4 else socket.AF_INET6, raw)
