#!/usr/bin/env python3
"""Train ECFusion (same as ``ecfusion train``); see ``--help``."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from ECFusionLib.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))
