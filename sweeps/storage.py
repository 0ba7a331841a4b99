"""The sweep's folder in its storage: a local folder (or NFS), or cloud storage (s3://, gs://).

Ray Tune writes a sweep's trials, checkpoints and search state wherever `--storage-path` points,
through pyarrow's file systems. The sweep's own steps around the trials (its saved options for
`--resume`, setting orphaned trials aside, the test split of the chosen trials) read and write the
same folder through the same file systems, so they work on cloud storage as they do on a disk:

    folder = SweepFolder("s3://bucket/sweeps/vae-sweep")   # or "/mnt/nfs/runs/vae-sweep"
    folder.exists("tuner.pkl")
    mirror = folder.download_records(Path(tmp))              # the small files, for reading
    folder.fetch_final_model(mirror / "train_trial_...")      # one trial's model, when needed

Credentials and endpoints are pyarrow's (and so Ray's): for S3 the usual AWS_ACCESS_KEY_ID,
AWS_SECRET_ACCESS_KEY and AWS_ENDPOINT_URL (an S3-compatible server such as MinIO or SeaweedFS). A
URI's query (`?endpoint_override=...`) is refused: the sweep's own folders are paths joined under it.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from pathlib import Path

import pyarrow.fs as pafs

from genmodels.files import write_json
from genmodels.names import CHECKPOINT_FILE, MODEL_CONFIG_FILE, MODEL_WEIGHTS_FILE
from results.folder import EXPERIMENT_STATE_PREFIX, statuses_in_state

CHECKPOINT_PREFIX = "checkpoint_"  # Ray Tune's checkpoint folders: checkpoint_000000, ...
# What reading a sweep needs (results, parameters, statuses, Tune's state, options, errors): small
# files. Checkpoints, weights and images stay in the storage unless asked for.
RECORD_SUFFIXES = (".json", ".csv", ".txt")
LOCAL_URI = "file://"
# How long a sweep (or the analysis) waits for its storage's first answer. Cloud file systems retry
# a store they cannot reach for many minutes before they fail: GCS without credentials (none in
# GOOGLE_APPLICATION_CREDENTIALS, no `gcloud auth application-default login`, not on a GCP machine)
# retries for 15. A listing that answers at all answers within seconds.
REACH_SECONDS = 30.0
# A URI's query would be read as options by pyarrow, while the sweep (and the analysis) join folder
# names under the URI: both refuse one, in these words.
QUERY_REFUSED = ("a URI with a query (?...) is not supported; give the endpoint and credentials in "
                 "the environment instead (for S3: AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, "
                 "AWS_SECRET_ACCESS_KEY)")


def storage_uri(path: str) -> str:
    """--storage-path (or a sweep's folder) as Ray's storage: a local folder made absolute, or a
    cloud URI as given. A file:// URI is a local folder (Ray's pyarrow reads it so), and the sweep's
    own steps after the trials (the test split, setting orphans aside, its log) need it as one too."""
    if path.startswith(LOCAL_URI):
        path = path[len(LOCAL_URI):]
    return path if "://" in path else str(Path(path).expanduser().resolve())


def answer_within(seconds: float, call: Callable):
    """call()'s result, or TimeoutError when it has not returned within `seconds`. The call goes
    on in a daemon thread (pyarrow's calls cannot be cancelled) that the process's exit ends."""
    outcome: dict = {}

    def attempt() -> None:
        try:
            outcome["value"] = call()
        except BaseException as err:  # handed to the caller's thread, raised there
            outcome["error"] = err

    thread = threading.Thread(target=attempt, name="storage-probe", daemon=True)
    thread.start()
    thread.join(seconds)
    if thread.is_alive():
        raise TimeoutError(f"no answer in {seconds:g} s")
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]


class SweepFolder:
    """One sweep's folder, by its local path or cloud URI (pyarrow resolves which)."""

    def __init__(self, location: str):
        self.location = location.rstrip("/")
        self.fs, self.path = pafs.FileSystem.from_uri(self.location)

    @classmethod
    def reached(cls, location: str, seconds: float | None = None) -> SweepFolder:
        """The folder, once its storage has answered whether it exists, within `seconds`
        (REACH_SECONDS); else OSError (TimeoutError, or pyarrow's own error). No credentials, a
        wrong key or nothing listening is found now, not after minutes of retries."""
        def reach() -> SweepFolder:
            folder = cls(location)  # for S3 this may already ask the store for the bucket's region
            folder.exists("")
            return folder

        return answer_within(REACH_SECONDS if seconds is None else seconds, reach)

    @property
    def local(self) -> bool:
        return isinstance(self.fs, pafs.LocalFileSystem)

    def _path(self, relative: str = "") -> str:
        return f"{self.path}/{relative}" if relative else self.path

    def exists(self, relative: str) -> bool:
        return self.fs.get_file_info(self._path(relative)).type != pafs.FileType.NotFound

    def read_json(self, relative: str):
        with self.fs.open_input_stream(self._path(relative)) as stream:
            return json.loads(stream.read())

    def write_json(self, relative: str, obj) -> None:
        if self.local:
            write_json(Path(self._path(relative)), obj)  # atomic: never half a file
            return
        # An object store's upload is atomic: the object appears whole, or not at all.
        with self.fs.open_output_stream(self._path(relative)) as stream:
            stream.write(json.dumps(obj, indent=2).encode())

    def ray_statuses(self) -> dict[str, str]:
        """Trial folder name -> Ray's status, from the newest experiment state Tune saved here."""
        entries = self.fs.get_file_info(pafs.FileSelector(self.path, allow_not_found=True))
        states = sorted(e.base_name for e in entries if e.base_name.startswith(EXPERIMENT_STATE_PREFIX)
                        and e.base_name.endswith(".json"))
        if not states:
            return {}
        with self.fs.open_input_stream(self._path(states[-1])) as stream:
            return statuses_in_state(stream.read().decode())

    def subfolders(self) -> list[str]:
        """The names of the folders directly in the sweep's folder (trials, groups, ...)."""
        entries = self.fs.get_file_info(pafs.FileSelector(self.path, allow_not_found=True))
        return sorted(e.base_name for e in entries if e.type == pafs.FileType.Directory)

    def move(self, relative: str, destination: str) -> None:
        """Move a folder within the sweep's folder. An object store has no folders to rename:
        there it is a copy of every object, then a delete of the originals."""
        source, target = self._path(relative), self._path(destination)
        if self.local:
            Path(target).parent.mkdir(parents=True, exist_ok=True)
            self.fs.move(source, target)
            return
        pafs.copy_files(source, target, source_filesystem=self.fs, destination_filesystem=self.fs)
        self.fs.delete_dir(source)

    def download_records(self, into: Path) -> Path:
        """A local copy of the sweep's small files (RECORD_SUFFIXES) in `into`/<sweep name>: what
        `analysis.read_ray_folder` reads. Returns that copy's folder."""
        return self.download(into, RECORD_SUFFIXES)

    def download(self, into: Path, suffixes: tuple[str, ...]) -> Path:
        """A local copy of the folder's files whose names end with one of `suffixes`, in
        `into`/<the folder's name>; returns that copy's folder."""
        mirror = into / Path(self.path).name
        mirror.mkdir(parents=True, exist_ok=True)
        mirror = mirror.resolve()  # as analysis.read_ray_folder names the trial folders
        selector = pafs.FileSelector(self.path, recursive=True)
        for entry in self.fs.get_file_info(selector):
            if entry.type == pafs.FileType.File and entry.base_name.endswith(suffixes):
                self._download(entry.path, mirror / Path(entry.path).relative_to(self.path))
        return mirror

    def fetch_final_model(self, mirror: Path, trial: Path) -> None:
        """Into the local copy `mirror` (download_records), the files of the trial folder `trial`
        (a folder in the copy) that `results.folder.trained_model` looks for: a fused member's
        weights, or an unfused trial's newest checkpoint."""
        relative = trial.relative_to(mirror).as_posix()
        if (trial / MODEL_CONFIG_FILE).exists():
            self._download(self._path(f"{relative}/{MODEL_WEIGHTS_FILE}"), trial / MODEL_WEIGHTS_FILE)
            return
        entries = self.fs.get_file_info(pafs.FileSelector(self._path(relative), allow_not_found=True))
        checkpoints = sorted(e.base_name for e in entries if e.type == pafs.FileType.Directory
                             and e.base_name.startswith(CHECKPOINT_PREFIX))
        newest = f"{relative}/{checkpoints[-1]}/{CHECKPOINT_FILE}" if checkpoints else None
        if newest and self.exists(newest):
            self._download(self._path(newest), mirror / newest)

    def upload(self, file: Path, relative: str) -> None:
        pafs.copy_files(str(file), self._path(relative),
                        source_filesystem=pafs.LocalFileSystem(), destination_filesystem=self.fs)

    def _download(self, source: str, target: Path) -> None:
        target.parent.mkdir(parents=True, exist_ok=True)
        pafs.copy_files(source, str(target), source_filesystem=self.fs,
                        destination_filesystem=pafs.LocalFileSystem())
