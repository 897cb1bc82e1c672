#!/usr/bin/env python3
"""Pack 2D training pairs (PNG folders) into one compressed .npz that ``ecfusion train --data FILE.npz`` reads with
numpy alone: for the GPU machine, whose image has no SimpleITK (``scripts/gpu_train.sh``).

    python scripts/pack_pairs.py --data ../shared/data/aanlib --out .gpu_data/aanlib.npz [--task CT-MRI ...]

The pixels are stored as read (uint8; RGB stays RGB) with the file stems; training takes the Y (BT.601) of RGB
images exactly as it does from the PNGs.
"""
import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ECFusionLib.training import pack_pairs  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, help="folder with <task>/{CT|PET|SPECT,MRI}/<name>.png")
    p.add_argument("--out", required=True, help="the .npz to write")
    p.add_argument("--task", nargs="*", help="tasks to pack (default: every task folder present)")
    args = p.parse_args(argv)
    out = pack_pairs(args.data, args.out, args.task)
    print(f"{out}: {out.stat().st_size / 2**20:.1f} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
