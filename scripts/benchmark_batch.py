"""Rows per minute of ``ecfusion batch`` for 1, 2, ... local workers on small phantom volumes (not a test).

    python scripts/benchmark_batch.py --rows 8 --size 64 --workers 1 2

Each configuration runs the same manifest (MRI + PET phantom pairs, ``--force``) end to end, as a user
would: cluster start-up, model loading and the report included. The cores are shared out among the
workers (1 worker: all cores as torch threads; 2 workers: half each), so the comparison is at equal
hardware. Prints one line per configuration and a Markdown table.
"""
from __future__ import annotations

import argparse
import csv
import os
import tempfile
import time
from pathlib import Path

import SimpleITK as sitk

from ECFusionLib.cli import main as ecfusion
from ECFusionLib.phantom import make_phantom
from ECFusionLib.runtime import usable_cores


def make_cohort(folder: Path, rows: int, size: int) -> Path:
    """``rows`` PET-MRI pairs (different phantom seeds) on grids of ``size`` x 1.2 size x size voxels."""
    spacing = 181.0 / size
    lines = ["id,anatomical,functional,task"]
    for k in range(rows):
        ph = make_phantom(size=(size, round(size * 1.2), size), seed=k, spacing=spacing)
        for name in ("MRI", "PET"):
            sitk.WriteImage(ph[name], str(folder / f"case{k}_{name.lower()}.nrrd"))
        lines.append(f"case{k},case{k}_mri.nrrd,case{k}_pet.nrrd,PET-MRI")
    manifest = folder / "cohort.csv"
    manifest.write_text("\n".join(lines) + "\n")
    return manifest


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=8)
    ap.add_argument("--size", type=int, default=64, help="phantom MRI grid: SIZE x 1.2 SIZE x SIZE voxels")
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, help="torch threads per worker (default: the cores shared out)")
    args = ap.parse_args()
    cores = usable_cores()
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        manifest = make_cohort(Path(tmp), args.rows, args.size)
        for n in args.workers:
            out = Path(tmp) / f"out{n}"
            t0 = time.perf_counter()
            threads = args.threads or max(1, cores // n)
            code = ecfusion(["batch", str(manifest), "--output-dir", str(out), "--workers", str(n), "--device",
                             args.device, "--threads", str(threads), "--force", "--quiet"])
            wall = time.perf_counter() - t0
            with open(out / "report.csv", newline="") as fh:
                report = list(csv.DictReader(fh))
            busy = sum(float(r["seconds"]) for r in report)
            ok = sum(r["status"] == "ok" for r in report)
            results.append((n, threads, wall, 60 * ok / wall, busy / ok if ok else float("nan")))
            print(f"{n} worker(s) x {threads} thread(s): {ok}/{args.rows} rows ok (exit {code}) in "
                  f"{wall:.1f} s = {60 * ok / wall:.1f} rows/min; {busy / max(ok, 1):.2f} s per row in the worker")
    base = results[0][3]
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"\n{args.rows} rows, MRI {args.size}x{round(args.size * 1.2)}x{args.size}, {cores} cores, device "
          f"{args.device}, load average {load:.1f} at the end\n")
    print("| workers x torch threads | wall (s) | rows/min | speed-up | s per row in a worker |")
    print("|---|---|---|---|---|")
    for n, t, wall, rate, per_row in results:
        print(f"| {n} x {t} | {wall:.1f} | {rate:.1f} | {rate / base:.2f} | {per_row:.2f} |")


if __name__ == "__main__":
    main()
