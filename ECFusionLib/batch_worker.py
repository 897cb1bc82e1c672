"""The worker side of ``ecfusion batch``: one row fused (or skipped), with the network loaded once per worker
process, and the plugin that sets up each Dask worker (torch threads, GPU)."""
from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass

from distributed import WorkerPlugin

from .errors import ECFusionError
from .runtime import usable_cores


@dataclass
class BatchJob:
    """What a worker needs for one row."""

    id: str
    line: int
    request: object  # fuse_files.FuseRequest
    force: bool = False


_MODELS: dict = {}  # (task, weights, model, backend, device) -> (network, info), per worker process
LOADS = 0  # how many times this process loaded a network (tests check it stays at one per task)
_MODELS_LOCK = threading.Lock()
_WEIGHTS_SHA: dict = {}  # (path, size, mtime) -> SHA-256


def cached_model(task: str, weights: str | None, model: str | None = None, backend: str = "auto",
                 device: str = "auto"):
    """``backends.load_network`` once per worker process and (task, weights, model, backend, device)."""
    from .backends import load_network

    global LOADS
    key = (task, weights, model, backend, device)
    with _MODELS_LOCK:
        if key not in _MODELS:
            _MODELS[key] = load_network(task, weights, model, backend, device)
            LOADS += 1
        return _MODELS[key]


def weights_sha256(task: str, weights: str | None, model: str | None = None) -> str:
    """The SHA-256 of the weights a row uses (the catalogue's for the bundled ones; cached per file)."""
    from .weights import bundled_weights, sha256

    if weights is None:
        return bundled_weights(task, model)[1]
    st = os.stat(weights)
    key = (weights, st.st_size, st.st_mtime_ns)
    if key not in _WEIGHTS_SHA:
        _WEIGHTS_SHA[key] = sha256(weights)
    return _WEIGHTS_SHA[key]


def _up_to_date(job: BatchJob) -> dict | None:
    """The output's recorded provenance when it matches the row's inputs, settings and weights now; else None."""
    from .fuse_files import current_job, recorded_metadata

    recorded = recorded_metadata(job.request.output)
    if not recorded or not isinstance(recorded.get("job"), dict):
        return None
    now = current_job(job.request)
    keys = ("anatomical_sha256", "functional_sha256", "settings_sha256")
    if any(recorded["job"].get(k) != now[k] for k in keys):
        return None
    try:
        if recorded.get("weights_sha256") != weights_sha256(recorded.get("task", ""), job.request.weights,
                                                            job.request.model):
            return None
    except (OSError, ECFusionError):
        return None
    return recorded


def run_row(job: BatchJob) -> dict:
    """Fuse (or skip) one row; never raises: a failure is a record with status "failed" and the message."""
    import base64

    from .fuse_files import fuse_files
    from .thumbnails import thumbnail_png

    t0 = time.perf_counter()
    record = {"id": job.id, "line": job.line, "output": str(job.request.output), "message": ""}
    try:
        recorded = None if job.force else _up_to_date(job)
        image, damage = _read_whole(job.request.output) if recorded is not None else (None, "")
        if image is not None:
            record.update(status="skipped", message="output up to date", task=recorded.get("task", ""),
                          weights_sha256=recorded.get("weights_sha256", ""), **_hashes(recorded["job"]))
        else:
            done = fuse_files(job.request, load_model=cached_model)
            notes = ([f"the previous output was damaged ({damage}) and was fused again"] if damage else []) + done.warnings
            record.update(status="ok", message="; ".join(notes), task=done.task,
                          weights_sha256=done.metadata.get("weights_sha256", ""), **_hashes(done.metadata["job"]))
            image = done.image
        record["thumbnail"] = base64.b64encode(thumbnail_png(image)).decode()
    except ECFusionError as exc:
        record.update(status="failed", message=str(exc))
    except Exception as exc:  # noqa: BLE001 - one row's unexpected failure must not stop the batch
        record.update(status="failed", message=f"unexpected error: {type(exc).__name__}: {exc}")
    record["seconds"] = round(time.perf_counter() - t0, 2)
    return record


def _read_whole(output) -> tuple[object | None, str]:
    """(the output image, "") when the whole file reads back: every byte of voxel data there, compressed streams
    complete with their checksums (``file_integrity.check_complete``), and SimpleITK reads all of it; else
    (None, what is wrong). An intact header over a damaged body is not up to date: it is fused again."""
    import SimpleITK as sitk

    from .file_integrity import check_complete

    try:
        check_complete(output, "output")
        return sitk.ReadImage(str(output)), ""
    except ECFusionError as exc:
        return None, str(exc).split(": ", 1)[-1].split(". It was")[0]
    except RuntimeError as exc:
        text = str(exc).strip().splitlines()
        return None, (text[-1] if text else type(exc).__name__)


def _hashes(job_record: dict) -> dict:
    return {k: job_record.get(k, "") for k in ("anatomical_sha256", "functional_sha256", "settings_sha256")}


class WorkerSetup(WorkerPlugin):
    """A Dask worker plugin: torch / ONNX Runtime threads and this worker's GPU, set once when each worker starts.

    threads None: the worker's cores (CPU affinity) divided by its Dask threads (concurrent rows).
    GPU: worker number modulo the GPUs it sees (LocalCluster names workers 0, 1, ...).
    """

    name = "ecfusion-worker-setup"

    def __init__(self, threads: int | None, device: str):
        self.threads, self.device = threads, device

    def setup(self, worker) -> None:
        import logging

        from . import onnx_backend
        from .backends import installed

        lib = logging.getLogger("ECFusionLib")  # warnings reach the report (fuse_files collects them), not stderr
        lib.addHandler(logging.NullHandler())
        lib.propagate = False

        nthreads = getattr(getattr(worker, "state", worker), "nthreads", 1) or 1
        threads = self.threads or max(1, usable_cores() // nthreads)
        onnx_backend.DEFAULT_THREADS = threads
        if not installed("torch"):
            return
        import torch

        torch.set_num_threads(threads)
        if self.device != "cpu" and torch.cuda.is_available():
            name = worker.name
            index = name if isinstance(name, int) else sum(map(ord, str(name)))
            torch.cuda.set_device(index % torch.cuda.device_count())
