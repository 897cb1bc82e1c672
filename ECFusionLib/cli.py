"""The ``ecfusion`` command: fuse, train, evaluate.

Exit codes: 0 success; 2 bad input or usage; 3 missing/corrupt weights; 130 cancelled; 1 unexpected error.
"""
from __future__ import annotations

import argparse
import sys

from .errors import ECFusionError

EPILOG_FUSE = """examples:
  ecfusion fuse --anatomical MRI.nii.gz --functional PET.nii.gz --task PET-MRI --output fused.nrrd
  ecfusion fuse --anatomical MRI.nrrd --functional SPECT.nrrd --task SPECT-MRI --colormap PET-Rainbow2 --window 40 --level 20 --output fused.nrrd
  ecfusion fuse --anatomical MRI.nii.gz --functional CT.nii.gz --task CT-MRI --ct-window 1800 --ct-level 400 --output fused.nii.gz
  ecfusion fuse --input-dir pairs/ --output fused_pngs/     (2D: pairs/<task>/{CT|PET|SPECT,MRI}/<name>.png)
"""

EPILOG_TRAIN = """examples:
  ecfusion train --data ../shared/data/aanlib --task PET-MRI --out runs/pet
  ecfusion train --data my_pairs --task CT-MRI --out runs/ct --init-weights bundled --epochs 5 --lr 1e-4   (fine-tune)
Re-running the same command resumes from OUT/last.pt.
"""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ecfusion", description="ECFusion: fuse MRI with CT, PET or SPECT (slice by slice).")
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train or fine-tune the network on 2D pairs", epilog=EPILOG_TRAIN,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    t.add_argument("--data", required=True, help="folder with <task>/{CT|PET|SPECT,MRI}/<name>.png")
    t.add_argument("--task", required=True, help="CT-MRI, PET-MRI or SPECT-MRI")
    t.add_argument("--out", required=True, help="run folder: checkpoints, log.csv, best.pt")
    t.add_argument("--epochs", type=int, default=50)
    t.add_argument("--batch-size", type=int, default=4)
    t.add_argument("--lr", type=float, default=1e-3)
    t.add_argument("--lr-schedule", choices=["constant", "cosine"], default="constant")
    t.add_argument("--grad-weight", type=float, default=1.0)
    t.add_argument("--intensity-weight", type=float, default=0.0, help="weight of L1(F, max(A,B))")
    t.add_argument("--perceptual-weight", type=float, default=0.0, help="lambda of the VGG19 perceptual loss (paper: 0.02)")
    t.add_argument("--vgg-weights", help="torchvision vgg19-dcbbabfd.pth (needed when --perceptual-weight > 0)")
    t.add_argument("--no-upsample", dest="upsample", action="store_false",
                   help="train on 128x128 patches directly (reduced CPU schedule) instead of upsampling them to 256")
    t.add_argument("--val-cases", nargs="*", help="case numbers held out for validation (default: seeded 15%% of cases)")
    t.add_argument("--init-weights", help="start from these weights ('bundled' = the shipped weights of --task)")
    t.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    t.add_argument("--no-bf16", dest="bf16", action="store_false")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--threads", type=int)
    t.add_argument("--max-minutes", type=float, help="stop (resumably) after this much training time")
    return p


def cmd_train(args) -> int:
    from .training import TrainConfig, train
    from .weights import bundled_weights

    init = args.init_weights
    if init == "bundled":
        init = str(bundled_weights(args.task)[0])
    cfg = TrainConfig(data=args.data, task=args.task, out=args.out, epochs=args.epochs, batch_size=args.batch_size,
                      lr=args.lr, lr_schedule=args.lr_schedule, grad_weight=args.grad_weight,
                      intensity_weight=args.intensity_weight, perceptual_weight=args.perceptual_weight,
                      vgg_weights=args.vgg_weights, upsample=args.upsample, val_cases=args.val_cases,
                      init_weights=init, device=args.device, bf16=args.bf16, seed=args.seed, threads=args.threads,
                      max_minutes=args.max_minutes)
    best = train(cfg)
    print(f"best weights: {best}")
    return 0


COMMANDS = {"train": cmd_train}


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except ECFusionError as exc:
        print(f"ecfusion: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("ecfusion: cancelled", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
