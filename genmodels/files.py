"""Writing a run's files so that a crash never leaves a torn one, and the one status.json schema.

    from genmodels.files import write_json, write_status, read_status
    write_status(out, "finished", epoch=10)
    read_status(out)  # {"status": "finished", "epoch": 10, "ended_at": 1.7e9, "message": None}

Standard library only: `analysis/` reads status files without torch.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from pathlib import Path

from genmodels.names import STATUS_FILE, STATUSES


def atomic_write(path: str | os.PathLike, write: Callable[[Path], object]) -> Path:
    """`write(tmp)` writes the content to a temporary file beside `path`, which then replaces
    `path` in one rename: readers see the old file or the new one, never half of one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")  # per process: no two writers share it
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def write_json(path: str | os.PathLike, obj) -> Path:
    return atomic_write(path, lambda tmp: tmp.write_text(json.dumps(obj, indent=2)))


def write_status(folder: str | os.PathLike, status: str, epoch: int,
                 message: str | None = None) -> Path:
    """How a run or trial ended: `status` (finished | diverged | ...), the last epoch it completed
    or reached, when, and for a failure, why. The same schema from `genmodels.train` and Ray."""
    if status not in STATUSES:
        raise ValueError(f"status must be one of {STATUSES}, got {status!r}")
    return write_json(Path(folder) / STATUS_FILE, {"status": status, "epoch": epoch,
                                                   "ended_at": time.time(), "message": message})


def read_status(folder: str | os.PathLike) -> dict:
    """The folder's status.json, or {} when the run has not ended (or never wrote one)."""
    path = Path(folder) / STATUS_FILE
    return json.loads(path.read_text()) if path.exists() else {}
