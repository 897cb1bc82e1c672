#!/usr/bin/env python3
"""Score weights on held-out whole cases with `ecfusion fuse` + `ecfusion evaluate`, next to pixel-max and
pixel-average fusion computed by the same code; prints a Markdown table.

    python scripts/validate_weights.py --data ../shared/data/aanlib --task PET-MRI --val-cases 30 [--weights W.pt]
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from ECFusionLib.pairs import find_pairs  # noqa: E402
from ECFusionLib.tasks import PRECISIONS, TASKS, check_task  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True)
    p.add_argument("--task", required=True)
    p.add_argument("--val-cases", nargs="+", required=True)
    p.add_argument("--weights", help="default: the bundled weights of the task")
    p.add_argument("--csv", help="per-image metrics")
    p.add_argument("--precision", default="auto", choices=PRECISIONS, help="passed to ecfusion fuse")
    args = p.parse_args(argv)
    task = check_task(args.task)
    pairs = [x for x in find_pairs(args.data, [task]) if x.case in set(args.val_cases)]
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "pairs"
        for sub in (TASKS[task], "MRI"):
            (src / task / sub).mkdir(parents=True)
        for x in pairs:  # links: the data set is read in place, never copied
            os.symlink(x.second.resolve(), src / task / TASKS[task] / x.second.name)
            os.symlink(x.mri.resolve(), src / task / "MRI" / x.mri.name)
        out = Path(tmp) / "fused"
        exe = [sys.executable, "-m", "ECFusionLib.cli"]
        fuse = [*exe, "fuse", "--input-dir", str(src), "--output", str(out), "--quiet", "--precision", args.precision]
        if args.weights:
            fuse += ["--weights", args.weights]
        subprocess.run(fuse, check=True)
        ev = [*exe, "evaluate", "--input-dir", str(src), "--fused", str(out), "--baselines"]
        if args.csv:
            ev += ["--csv", args.csv]
        res = subprocess.run(ev, check=True, capture_output=True, text=True)
    lines = res.stdout.strip().splitlines()
    head = lines[0].split()
    print(f"{task}: {len(pairs)} validation pairs, cases {', '.join(args.val_cases)}\n")
    print("| " + " | ".join(head[1:]) + " |")
    print("|" + "---|" * (len(head) - 1))
    for line in lines[1:]:
        print("| " + " | ".join(line.split()[1:]) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
