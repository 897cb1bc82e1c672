#!/usr/bin/env python3
"""Copy a training run's best weights into ECFusionLib/weights and list them in catalogue.json with SHA-256.

The file is re-saved through ``save_weights`` so that it carries the tensor checksum verified on every load.

    python scripts/release_weights.py --task PET-MRI --run /path/to/run [--description "..."]
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from ECFusionLib.tasks import check_task  # noqa: E402
from ECFusionLib.safe_files import write_text_atomic  # noqa: E402
from ECFusionLib.weights import CATALOGUE, WEIGHTS_DIR, read_weights, save_weights, sha256, weights_meta  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--task", required=True)
    p.add_argument("--run", required=True, help="training run folder (its best.pt is released)")
    p.add_argument("--description", default="")
    args = p.parse_args(argv)
    task = check_task(args.task)
    best = Path(args.run) / "best.pt"
    state, model = read_weights(best)  # refuse anything that is not valid weights of a registered architecture
    model.load_state_dict(state)
    target = WEIGHTS_DIR / f"ecfusion_{task.lower()}.pt"
    meta = weights_meta(best)
    save_weights(model, target, meta)  # with the tensor checksum inside
    cat = json.loads(CATALOGUE.read_text()) if CATALOGUE.is_file() else {}
    cat[task] = {"file": target.name, "sha256": sha256(target), "architecture": model.architecture,
                 "epoch": meta.get("epoch"), "description": args.description}
    write_text_atomic(CATALOGUE, json.dumps(dict(sorted(cat.items())), indent=2) + "\n")
    print(f"{task}: {target.name} sha256 {cat[task]['sha256']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
