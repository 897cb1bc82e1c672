#!/usr/bin/env python3
"""Regenerate the ONNX graphs shipped beside the weights (ECFusionLib/weights/<architecture>.onnx), one per
registered architecture, with dynamic batch, height and width and without weights (ONNX Runtime reads those
from the .npz weights files at load time; see ECFusionLib/onnx_export.py). Needs torch and the onnx package.

    python scripts/export_onnx.py [--out FOLDER]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from ECFusionLib.onnx_export import export_all  # noqa: E402
from ECFusionLib.weights import WEIGHTS_DIR, read_catalogue, sha256, write_catalogue  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=WEIGHTS_DIR, help="folder for the graphs (default: the package's weights)")
    args = p.parse_args(argv)
    paths = export_all(args.out)
    for path in paths:
        print(f"{path}: {path.stat().st_size:,d} bytes, sha256 {sha256(path)}")
    if args.out.resolve() == WEIGHTS_DIR.resolve():  # the shipped graphs: list them with their checksums
        cat = read_catalogue()
        cat["graphs"].update({p.stem: {"file": p.name, "sha256": sha256(p)} for p in paths})
        write_catalogue(cat["models"], cat["defaults"], cat["graphs"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
