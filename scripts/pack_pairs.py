#!/usr/bin/env python3
"""Pack 2D training pairs (PNG folders) into one compressed .npz that ``ecfusion train --data FILE.npz`` reads with
numpy alone: for the GPU machine, whose image has no SimpleITK (``scripts/gpu_train.sh``).

    python scripts/pack_pairs.py --data ../shared/data/aanlib --out .gpu_data/aanlib.npz [--task CT-MRI ...]
    python scripts/pack_pairs.py --data .gpu_data/aanlib.npz --out /tmp/tiny.npz --per-case 2   # a smoke-test subset

The pixels are stored as read (uint8; RGB stays RGB) with the file stems; training takes the Y (BT.601) of RGB
images exactly as it does from the PNGs.
"""
import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ECFusionLib.training import pack_pairs, subset_packed  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, help="folder with <task>/{CT|PET|SPECT,MRI}/<name>.png, or a packed .npz")
    p.add_argument("--out", required=True, help="the .npz to write")
    p.add_argument("--task", nargs="*", help="tasks to pack (default: every task folder present)")
    p.add_argument("--per-case", type=int, help="keep only the first N pairs of every case (smoke tests)")
    args = p.parse_args(argv)
    if args.data.endswith(".npz"):
        if not args.per_case:
            p.error("an .npz input is only subset: give --per-case N")
        out = subset_packed(args.data, args.out, args.per_case)
    else:
        out = pack_pairs(args.data, args.out, args.task)
        if args.per_case:
            out = subset_packed(out, out, args.per_case)
    print(f"{out}: {out.stat().st_size / 2**20:.1f} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
