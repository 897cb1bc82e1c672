#!/usr/bin/env python3
"""Copy a training run's best weights into ECFusionLib/weights as a pickle-free .npz and list the model in
catalogue.json (task, architecture, file SHA-256, tensor SHA-256), by name: "<architecture>.<task>" unless
--name is given. The first model of a task, or one released with --default, becomes the task's default.

    python scripts/release_weights.py --task PET-MRI --run /path/to/run [--name ecfusion-v1.pet-mri] [--default] [--description "..."]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from ECFusionLib.tasks import check_task  # noqa: E402
from ECFusionLib.weights import (WEIGHTS_DIR, read_catalogue, read_weights, read_weights_file, sha256,  # noqa: E402
                                 write_catalogue, write_weights_file)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--task", required=True)
    p.add_argument("--run", required=True, help="training run folder (its best.pt or best.npz is released)")
    p.add_argument("--name", help="model name (default: <architecture>.<task in lower case>)")
    p.add_argument("--default", action="store_true", help="make it the task's default model")
    p.add_argument("--description", default="")
    args = p.parse_args(argv)
    task = check_task(args.task)
    best = next((Path(args.run) / f for f in ("best.npz", "best.pt") if (Path(args.run) / f).is_file()),
                Path(args.run) / "best.pt")
    read_weights(best)  # refuse anything that is not valid weights of a registered architecture
    wf = read_weights_file(best)
    name = args.name or f"{wf.architecture}.{task.lower()}"
    target = WEIGHTS_DIR / f"{name}.npz"
    write_weights_file(target, wf.architecture, wf.config, wf.arrays, wf.meta)  # with the tensor checksum inside
    cat = read_catalogue()
    cat["models"][name] = {"task": task, "architecture": wf.architecture, "file": target.name,
                           "sha256": sha256(target), "tensor_sha256": read_weights_file(target).tensor_sha256,
                           "epoch": wf.meta.get("epoch"), "description": args.description}
    if args.default or task not in cat["defaults"]:
        cat["defaults"][task] = name
    write_catalogue(cat["models"], cat["defaults"], cat["graphs"])
    print(f"{name} ({task}): {target.name} sha256 {cat['models'][name]['sha256']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
