#!/usr/bin/env python3
"""Convert PyTorch (.pt) ECFusion weights files to the pickle-free .npz format (``ECFusionLib.weights``).

The tensors are copied as they are (float32, same names): the network gives bit-identical outputs and the
tensor checksum stays the same. Needs torch >= 2.6 (to read the .pt safely).

    python scripts/convert_weights.py best.pt [more.pt ...]          # writes best.npz beside each
    python scripts/convert_weights.py best.pt --out my_weights.npz
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from ECFusionLib.errors import ECFusionError  # noqa: E402
from ECFusionLib.weights import SUFFIX, read_weights_file, write_weights_file  # noqa: E402


def convert(source: Path, target: Path) -> str:
    """Write ``source``'s tensors, architecture, config and meta to ``target`` (.npz); returns the tensor SHA-256."""
    wf = read_weights_file(source)
    write_weights_file(target, wf.architecture, wf.config, wf.arrays, wf.meta)
    back = read_weights_file(target)
    if back.tensor_sha256 != (wf.tensor_sha256 or back.tensor_sha256):
        raise ECFusionError(f"{target}: tensor checksum changed in the conversion")
    return back.tensor_sha256


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("files", nargs="+", type=Path)
    p.add_argument("--out", type=Path, help="output file (only with one input; default: the input with .npz)")
    args = p.parse_args(argv)
    if args.out and len(args.files) > 1:
        p.error("--out takes one input file")
    try:
        for source in args.files:
            target = args.out or source.with_suffix(SUFFIX)
            print(f"{source} -> {target}: tensor sha256 {convert(source, target)}")
    except ECFusionError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
