"""``ecfusion batch``: every row of a manifest (``manifest.py``) fused on a Dask cluster.

The client (this module) checks the manifest, submits one task per row and records each result as it
arrives (``batch_report.py``: DIR/report.csv, then DIR/report.html). The workers run
``batch_worker.run_row``: the same ``fuse_files`` as ``ecfusion fuse``, with the network loaded once per
worker process, or a skip when the row's output already records the same inputs, settings and weights.

Cluster: a ``LocalCluster`` of ``--workers`` processes with one Dask thread each and the cores shared out
as torch threads (one GPU per worker where there are GPUs), or an existing cluster at ``--scheduler``.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from .errors import ECFusionError
from .runtime import usable_cores
from .tasks import BACKENDS

BATCH_FAILED = 4  # exit code: some rows failed (the others are done; see DIR/report.csv)
EPILOG = """examples:
  ecfusion batch cohort.csv --output-dir fused/ --workers 4
  ecfusion batch cohort.csv --output-dir fused/ --scheduler tcp://10.0.0.5:8786     (an existing Dask cluster)
manifest: CSV with columns anatomical,functional,task and optionally id, output and any 'fuse' option
(window, level, colormap, ct_window, register, pet_units, functional_series, ...). Re-running skips rows
whose output is up to date; --force redoes them. Results: DIR/report.csv and DIR/report.html.
"""


def add_batch_parser(sub) -> None:
    b = sub.add_parser("batch", help="fuse every row of a CSV manifest on a Dask cluster", epilog=EPILOG,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    b.add_argument("manifest", help="CSV file: anatomical,functional,task[,id,output,<fuse options>]")
    b.add_argument("--output-dir", required=True, help="outputs, report.csv and report.html (created if needed)")
    b.add_argument("--workers", type=int, help="local worker processes (default: one per GPU; on CPUs one per 4 cores)")
    b.add_argument("--threads", type=int, help="torch threads per worker (default: the cores shared out among the workers)")
    b.add_argument("--scheduler", metavar="ADDRESS", help="use the Dask cluster at this address (tcp://host:8786) "
                                                          "instead of starting local workers")
    b.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="default: CUDA when available")
    b.add_argument("--weights", help="weights file for every row (default: the bundled weights of each row's task)")
    b.add_argument("--model", help="bundled model for every row that names no weights or model (see 'ecfusion models')")
    b.add_argument("--backend", default="auto", choices=BACKENDS,
                   help="inference backend of every worker (default auto: onnxruntime on CPUs, torch for GPUs)")
    b.add_argument("--force", action="store_true", help="redo rows whose output is up to date")
    b.add_argument("--quiet", action="store_true", help="no progress bar")


# ---- client side --------------------------------------------------------------------------------------

def default_workers(device: str) -> int:
    """One worker per GPU when fusing on GPUs; on CPUs one per 4 cores (at least 1)."""
    if device != "cpu":
        try:
            import torch

            if torch.cuda.is_available():
                return torch.cuda.device_count()
        except ImportError:
            pass
    return max(1, usable_cores() // 4)


def _start_cluster(args):
    """(client, cluster or None, description)."""
    import logging

    from dask.distributed import Client, LocalCluster

    from .batch_worker import WorkerSetup

    logging.getLogger("distributed").setLevel(logging.ERROR)
    if args.scheduler:
        if args.workers:
            raise ECFusionError("--workers starts local workers; with --scheduler the cluster's own workers are used")
        try:
            client = Client(args.scheduler, timeout="30s")
        except (OSError, TimeoutError, ValueError) as exc:
            raise ECFusionError(f"cannot connect to the Dask scheduler at {args.scheduler}: {exc}") from exc
        client.register_plugin(WorkerSetup(args.threads, args.device))
        n = len(client.scheduler_info()["workers"])
        return client, None, f"Dask cluster {args.scheduler} ({n} workers now)"
    workers = args.workers or default_workers(args.device)
    if workers < 1:
        raise ECFusionError("--workers must be at least 1")
    threads = args.threads or max(1, usable_cores() // workers)
    cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None)
    client = Client(cluster)
    client.register_plugin(WorkerSetup(threads, args.device))
    return client, cluster, f"{workers} local worker{'s' * (workers > 1)} x {threads} torch thread{'s' * (threads > 1)}"


def cmd_batch(args) -> int:
    from .manifest import read_manifest

    if args.threads is not None and args.threads < 1:
        raise ECFusionError("--threads must be at least 1")
    out_dir = Path(args.output_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise ECFusionError(f"--output-dir {out_dir} is a file; give a folder")
    weights = str(Path(args.weights).resolve()) if args.weights else None
    if args.model and args.weights:
        raise ECFusionError("give either --weights or --model, not both")
    if args.model:
        from .weights import model_entry

        model_entry(args.model)  # an unknown name: say so once, before anything runs
    if weights:
        from .weights import check_weights_file

        check_weights_file(Path(weights))  # a folder, a safetensors file: said once, not once per row
    from .backends import resolve_backend

    resolve_backend(args.backend, args.device)  # not installed: say so once
    rows = read_manifest(args.manifest, out_dir, device=args.device, weights=weights, model=args.model,
                         backend=args.backend)  # errors before anything runs
    if args.device == "cuda" and not args.scheduler:
        from .engine import resolve_device

        resolve_device("cuda")  # no GPU here: say so once, not once per row
    client = cluster = report = None
    try:  # the cluster first: a scheduler that cannot be reached leaves no folder and no empty report behind
        client, cluster, where = _start_cluster(args)
        report = _open_report(out_dir, rows, args.manifest)
        if not args.quiet:
            print(f"{len(rows)} rows on {where}", file=sys.stderr)
        counts = _run(client, rows, args, report)
    finally:
        if report is not None:
            report.close()
        if client is not None:
            client.close()
        if cluster is not None:
            cluster.close()
    if not args.quiet:
        print(f"{counts['ok']} fused, {counts['skipped']} skipped, {counts['failed']} failed; "
              f"report: {report.csv_path} and {report.html_path}")
    return BATCH_FAILED if counts["failed"] else 0


def _open_report(out_dir: Path, rows, manifest):
    """The output folders (``--output-dir`` and each row's) and the report writer."""
    from .batch_report import ReportWriter

    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        for row in rows:
            Path(row.request.output).parent.mkdir(parents=True, exist_ok=True)
        return ReportWriter(out_dir, manifest)
    except OSError as exc:
        raise ECFusionError(f"cannot write into {out_dir} ({exc.strerror}); choose another --output-dir") from exc


def _run(client, rows, args, report) -> dict:
    """Submit every row, record each as it finishes, one progress bar over rows; returns the status counts."""
    from dask.distributed import as_completed
    from tqdm import tqdm

    from .batch_worker import BatchJob, run_row

    counts = {"ok": 0, "failed": 0, "skipped": 0}
    futures = [client.submit(run_row, BatchJob(r.id, r.line, r.request, args.force), pure=False,
                             key=f"ecfusion-row-{i}-{r.id}-{time.time_ns()}") for i, r in enumerate(rows)]
    by_key = {f.key: row for f, row in zip(futures, rows)}
    with tqdm(total=len(rows), unit="row", desc="batch", disable=args.quiet, file=sys.stderr) as bar:
        try:
            for future in as_completed(futures):
                row = by_key[future.key]
                try:
                    record = future.result()
                except Exception as exc:  # noqa: BLE001 - the worker died (memory, crash): this row fails alone
                    record = {"id": row.id, "line": row.line, "output": str(row.request.output), "status": "failed",
                              "seconds": "", "message": f"the worker running it was lost ({type(exc).__name__}: {exc})"}
                report.add(record)
                counts[record["status"]] += 1
                if record["status"] != "ok" and (not args.quiet or record["status"] == "failed"):
                    first = (record["message"] or "").splitlines()[0] if record["message"] else ""
                    bar.write(f"{record['status']} {record['id']}: {first}", file=sys.stderr)
                bar.set_postfix(counts, refresh=False)
                bar.update(1)
        except KeyboardInterrupt:
            client.cancel(futures)
            raise
    return counts
