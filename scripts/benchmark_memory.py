#!/usr/bin/env python3
"""Peak memory (RSS) and time of a whole ``ecfusion fuse``, per phase: read, resample (and intensity mapping),
engine, post (keep-salient rule, colour, output image), write.

    python scripts/benchmark_memory.py --anatomical T1.nii.gz --functional PET.nii.gz --task PET-MRI
    python scripts/benchmark_memory.py --anatomical T1.nii.gz --functional PET.nii.gz --task PET-MRI --size 512x512x300

``--size`` first resamples the anatomical image (linear, int16, same physical extent) to that many voxels,
written to a temporary .nii.gz (not timed), e.g. a 512 x 512 x 300 MRI as a scanner exports it. Each run is a
fresh process: ``ecfusion fuse`` as a user runs it, with a logging handler that records, at the end of each
phase, the seconds and the peak RSS since the previous phase (Linux: VmHWM, reset through
/proc/self/clear_refs); the process's peak is the largest of them (the reset also resets what getrusage reports).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

CHILD = r"""
import json, logging, sys, time
t0 = time.perf_counter()
def status():
    fields = dict(line.split(":", 1) for line in open("/proc/self/status"))
    return {k: int(fields[k].split()[0]) / 1024 for k in ("VmHWM", "VmRSS")}
def reset_peak():
    try:
        open("/proc/self/clear_refs", "w").write("5")
    except OSError:
        pass
class Phase(logging.Handler):
    last = t0
    def emit(self, record):
        now, st = time.perf_counter(), status()
        print("PHASE " + json.dumps({"phase": record.getMessage(), "seconds": now - Phase.last,
                                     "peak_mb": st["VmHWM"], "rss_mb": st["VmRSS"]}), flush=True)
        Phase.last = now
        reset_peak()
reset_peak()
from ECFusionLib.cli import main
phase = logging.getLogger("ECFusionLib.phase")
phase.setLevel(logging.DEBUG)
phase.addHandler(Phase())
phase.debug("imports")
code = main(sys.argv[1:])
print("PHASE " + json.dumps({"phase": "total", "seconds": time.perf_counter() - t0, "peak_mb": None, "rss_mb": None}))
sys.exit(code)
"""


def make_anatomical(source: Path, size: tuple[int, int, int], folder: Path) -> Path:
    """``source`` resampled (linear, int16) to ``size`` voxels over the same physical extent."""
    import SimpleITK as sitk

    img = sitk.ReadImage(str(source))
    spacing = [sp * n / m for sp, n, m in zip(img.GetSpacing(), img.GetSize(), size)]
    ref = sitk.Image(list(size), sitk.sitkInt16)
    ref.SetSpacing(spacing)
    ref.SetOrigin(img.GetOrigin())
    ref.SetDirection(img.GetDirection())
    scaled = sitk.Cast(img, sitk.sitkFloat32) * (1000.0 / max(1.0, float(sitk.GetArrayViewFromImage(img).max())))
    out = sitk.Resample(scaled, ref, sitk.Transform(), sitk.sitkLinear, 0.0, sitk.sitkInt16)
    path = folder / f"mri_{'x'.join(map(str, size))}.nii.gz"
    sitk.WriteImage(out, str(path), useCompression=True)
    return path


def run(argv: list[str]) -> tuple[list[dict], float]:
    """One fresh ``ecfusion fuse`` process: (phase records, the process's peak RSS in MB over the phases)."""
    done = subprocess.run([sys.executable, "-c", CHILD, *argv], capture_output=True, text=True,
                          env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin", **_threads()})
    if done.returncode != 0:
        raise SystemExit(f"ecfusion fuse failed ({done.returncode}):\n{done.stderr[-3000:]}")
    phases = [json.loads(line[6:]) for line in done.stdout.splitlines() if line.startswith("PHASE ")]
    return phases, max(ph["peak_mb"] for ph in phases if ph["peak_mb"] is not None)


def _threads() -> dict:
    return {k: v for k, v in os.environ.items() if k in ("OMP_NUM_THREADS", "HOME")}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--anatomical", type=Path, required=True)
    p.add_argument("--functional", type=Path, required=True)
    p.add_argument("--task", required=True)
    p.add_argument("--size", help="resample the anatomical image to this many voxels first, e.g. 512x512x300")
    p.add_argument("--backend", default="auto")
    p.add_argument("--precision", default="auto")
    p.add_argument("--keep", type=Path, help="keep the fused output here (default: a temporary folder)")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        anatomical = args.anatomical
        if args.size:
            anatomical = make_anatomical(args.anatomical, tuple(int(v) for v in args.size.split("x")), Path(tmp))
        output = args.keep or Path(tmp) / "fused.nrrd"
        phases, peak = run(["fuse", "--anatomical", str(anatomical), "--functional", str(args.functional),
                            "--task", args.task, "--output", str(output), "--backend", args.backend,
                            "--precision", args.precision, "--quiet"])
    print(f"{anatomical.name} ({args.size or 'as stored'}) + {args.functional.name}, {args.task}, backend "
          f"{args.backend}, precision {args.precision}: peak RSS {peak:,.0f} MB (whole process)")
    print("| phase | seconds | peak RSS in the phase (MB) | RSS at its end (MB) |")
    print("|---|---|---|---|")
    for ph in phases:
        peak_text = "" if ph["peak_mb"] is None else f"{ph['peak_mb']:,.0f}"
        rss_text = "" if ph["rss_mb"] is None else f"{ph['rss_mb']:,.0f}"
        print(f"| {ph['phase']} | {ph['seconds']:.1f} | {peak_text} | {rss_text} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
