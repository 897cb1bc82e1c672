"""The ``ecfusion`` command: fuse, train, evaluate.

Exit codes: 0 success; 2 bad input or usage; 3 missing/corrupt weights; 4 some batch rows failed;
130 cancelled (Ctrl-C or SIGTERM); 1 unexpected error.
"""
from __future__ import annotations

import argparse
import logging
import math
import sys

from .batch import add_batch_parser, cmd_batch
from .colour import COLORMAPS
from .errors import ECFusionError
from .intensity import DEFAULT_CT_LEVEL, DEFAULT_CT_WINDOW
from .tasks import AXES, DEVICES, PRECISIONS, REGISTRATION_INITS, REGISTRATION_MODES, TASK_NAMES, check_task

TASK_HELP = ", ".join(TASK_NAMES)

EPILOG_FUSE = """examples:
  ecfusion fuse --anatomical MRI.nii.gz --functional PET.nii.gz --task PET-MRI --output fused.nrrd
  ecfusion fuse --anatomical MRI.nrrd --functional SPECT.nrrd --task SPECT-MRI --colormap PET-Rainbow2 --window 40 --level 20 --output fused.nrrd
  ecfusion fuse --anatomical MRI.nii.gz --functional CT.nii.gz --task CT-MRI --ct-window 1800 --ct-level 400 --output fused.nii.gz
  ecfusion fuse --input-dir pairs/ --output fused_pngs/     (2D: pairs/<task>/{CT|PET|SPECT,MRI}/<name>.png)
"""

EPILOG_TRAIN = """examples:
  ecfusion train --data ../shared/data/aanlib --task PET-MRI --out runs/pet
  ecfusion train --data my_pairs --task CT-MRI --out runs/ct --init-weights bundled --epochs 5 --lr 1e-4   (fine-tune)
  ecfusion train --data ../shared/data/aanlib --task CT-MRI --out runs/ct-f0 --holdout-fold 0 --salient-weight 2 \\
      --ssim-weight 1 --ssim-reference variance --ema 0.999   (next-round recipe, CV fold 0 held out)
  the bundled weights' recipes (reduced CPU schedule) and the next round's are in ECFusionLib/weights/MODEL_CARD.md;
  all folds and tasks on a GPU: scripts/gpu_train.sh
Re-running the same command resumes from OUT/last.pt.
"""


def _number(kind, low=None, strict=False):
    """An argparse type: ``kind`` (int/float), finite, and >= ``low`` (> ``low`` when ``strict``)."""
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"'{text}' is not a {'whole ' if kind is int else ''}number") from None
        if kind is float and not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"'{text}' is not a finite number")
        if low is not None and (value < low or (strict and value == low)):
            raise argparse.ArgumentTypeError(f"{text} must be {'>' if strict else '>='} {low:g}")
        return value
    parse.__name__ = f"{'positive ' if strict else ''}{kind.__name__}"
    return parse


POSITIVE_INT = _number(int, 1)
COUNT = _number(int, 0)
FINITE = _number(float)
POSITIVE = _number(float, 0, strict=True)
NONNEGATIVE = _number(float, 0)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ecfusion", description="ECFusion: fuse MRI with CT, PET or SPECT (slice by slice).")
    sub = p.add_subparsers(dest="command", required=True)

    f = sub.add_parser("fuse", help="fuse two volumes, or a folder of 2D PNG pairs", epilog=EPILOG_FUSE,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    f.add_argument("--anatomical", help="MRI volume (NRRD, NIfTI, MHA, or DICOM: a folder or one file of the "
                                        "series); the output is on its grid")
    f.add_argument("--functional", help="CT, PET or SPECT volume (scalar, or RGB pseudocolour; or DICOM)")
    f.add_argument("--task", help=f"{TASK_HELP} (default for DICOM: from the functional series' Modality; 2D mode: "
                                  "taken from the folder names)")
    f.add_argument("--anatomical-series", metavar="UID", help="the DICOM series to read when the folder holds several")
    f.add_argument("--functional-series", metavar="UID", help="the DICOM series to read when the folder holds several")
    f.add_argument("--pet-units", default="native", choices=["native", "suv"],
                   help="suv: convert DICOM PET to body-weight SUV first (window/level then in SUV); default: as stored")
    f.add_argument("--input-dir", help="2D mode: ROOT/<task>/{CT|PET|SPECT,MRI}/<name>.png")
    f.add_argument("--output", required=True, help="output volume (.nrrd, .nii.gz, .mha) or, in 2D mode, a folder")
    f.add_argument("--device", default="auto", choices=DEVICES, help="default: CUDA when available")
    f.add_argument("--precision", default="auto", choices=PRECISIONS,
                   help="auto (default): bf16 on GPUs and on CPUs with native bf16 (~1.7x faster, ~0.15 grey "
                        "levels from fp32 on average), else fp32")
    f.add_argument("--batch-size", type=POSITIVE_INT, help="slices per batch (default: about 256k pixels per batch on CPU, fitted to free memory on CUDA)")
    f.add_argument("--axis", default="auto", choices=list(AXES), help="slice direction (default: auto, the axis closest to superior-inferior)")
    f.add_argument("--colormap", help=f"PET/SPECT colour map: {', '.join(COLORMAPS)}, or a 256x3 table file "
                                      "(default: PET-Heat for PET, PET-Rainbow2 for SPECT)")
    f.add_argument("--window", type=POSITIVE, help="PET/SPECT display window, > 0 (default: robust range)")
    f.add_argument("--level", type=FINITE, help="PET/SPECT display level")
    f.add_argument("--ct-window", type=POSITIVE, help=f"CT window in HU, > 0 (default {DEFAULT_CT_WINDOW:g})")
    f.add_argument("--ct-level", type=FINITE, help=f"CT level in HU (default {DEFAULT_CT_LEVEL:g})")
    f.add_argument("--weights", help="weights file (default: the bundled weights of the task)")
    f.add_argument("--register", default="none", choices=REGISTRATION_MODES,
                   help="register the functional volume onto the MRI first (mutual information; default none)")
    f.add_argument("--transform", help="an ITK transform file (MRI space -> functional space, e.g. from "
                                      "'ecfusion register') applied before fusion")
    f.add_argument("--no-keep-salient", dest="keep_salient", action="store_false",
                   help="do not apply the rule that keeps the CT bone / the hottest PET-SPECT uptake at least as bright as "
                        "in the source (salient.py; on by default)")
    f.add_argument("--quiet", action="store_true", help="no progress bar")

    r = sub.add_parser("register", help="rigid/affine registration of the functional volume onto the MRI",
                       epilog="example:\n  ecfusion register --anatomical MRI.nii.gz --functional PET.nii.gz --output pet_to_mri.tfm",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    r.add_argument("--anatomical", required=True)
    r.add_argument("--functional", required=True)
    r.add_argument("--output", required=True, help="transform file (.tfm, .txt or .h5): MRI space -> functional space, "
                                                   "ITK convention; in Slicer, apply it to the functional volume")
    r.add_argument("--mode", default="rigid", choices=REGISTRATION_MODES[1:])
    r.add_argument("--init", default="geometry", choices=REGISTRATION_INITS,
                   help="start from the image centres (geometry) or the centres of mass (moments)")

    e = sub.add_parser("evaluate", help="fusion metrics of fused PNGs against their source pairs, or of a 3D fusion "
                                        "against a 50/50 blend (--anatomical, --functional)")
    e.add_argument("--input-dir", help="source pairs: ROOT/<task>/{CT|PET|SPECT,MRI}/<name>.png")
    e.add_argument("--fused", help="fused images: FUSED/<task>/<name>.png")
    e.add_argument("--anatomical", help="3D: the MRI; fuses it with --functional at the default settings and prints "
                                        "anatomy kept (fused and a 50/50 blend), bone kept (CT-MRI) and, with "
                                        "--lesions, focal uptake kept (volume_quality.py)")
    e.add_argument("--functional", help="3D: the CT, PET or SPECT volume")
    e.add_argument("--lesions", action="store_true", help="3D PET/SPECT: also write eight lesions (radius 3-10 mm, "
                                                          "1.3-3x their surroundings, MNI places) and measure them")
    e.add_argument("--no-keep-salient", dest="keep_salient", action="store_false", help="3D: the rule off")
    e.add_argument("--task", nargs="*", help="tasks to evaluate (default: all present)")
    e.add_argument("--names", nargs="*", help="only these file stems (e.g. a validation split)")
    e.add_argument("--baselines", action="store_true", help="also score pixel-max and pixel-average fusion")
    e.add_argument("--checks", action="store_true",
                   help="also print the image checks: bone_kept (CT-MRI: fused/CT where CT >= 200 and MRI < 100) and "
                        "hot_kept (PET/SPECT-MRI: fused Y / functional Y over its brightest 1 %%); target >= 0.95")
    e.add_argument("--csv", help="write the per-image metrics to this CSV file")

    add_batch_parser(sub)

    d = sub.add_parser("demo", help="fuse the bundled digital phantom (MRI + PET) on the CPU")
    d.add_argument("--output", default="demo_output", help="folder for the phantom and the fused volume")
    d.add_argument("--task", default="PET-MRI", help=TASK_HELP)
    d.add_argument("--device", default="cpu", choices=DEVICES)

    t = sub.add_parser("train", help="train or fine-tune the network on 2D pairs", epilog=EPILOG_TRAIN,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    t.add_argument("--data", required=True, help="folder with <task>/{CT|PET|SPECT,MRI}/<name>.png, or a .npz from "
                                                 "scripts/pack_pairs.py (read without SimpleITK)")
    t.add_argument("--task", required=True, help=TASK_HELP)
    t.add_argument("--out", required=True, help="run folder: checkpoints, log.csv, best.pt")
    t.add_argument("--epochs", type=POSITIVE_INT, default=50)
    t.add_argument("--batch-size", type=POSITIVE_INT, default=4)
    t.add_argument("--lr", type=POSITIVE, default=1e-3)
    t.add_argument("--lr-schedule", choices=["constant", "cosine"], default="constant")
    t.add_argument("--warmup-steps", type=COUNT, default=0, help="linear learning-rate warm-up")
    t.add_argument("--clip-grad", type=POSITIVE, help="clip the gradient norm to this value")
    t.add_argument("--grad-weight", type=NONNEGATIVE, default=1.0)
    t.add_argument("--intensity-weight", type=NONNEGATIVE, default=0.0, help="weight of L1(F, max(A,B))")
    t.add_argument("--ssim-weight", type=NONNEGATIVE, default=0.0, help="weight of 1 - SSIM(F, reference)")
    t.add_argument("--ssim-reference", choices=["mean", "max", "variance"], default="mean",
                   help="SSIM term's reference per pixel: both sources averaged (default), the closer source (max), "
                        "or the source with the larger local variance")
    t.add_argument("--salient-weight", type=NONNEGATIVE, default=0.0,
                   help="weight of mean(w |F - A|), w = the keep-salient rule's mask (CT bone where the MRI is dark; "
                        "the PET/SPECT top range), with the rule's thresholds (salient.py)")
    t.add_argument("--salient-threshold", type=NONNEGATIVE, help="override the task's salient threshold (0-255)")
    t.add_argument("--salient-dark", type=NONNEGATIVE, help="override the task's MRI-dark level (0-255)")
    t.add_argument("--ema", type=POSITIVE, metavar="DECAY",
                   help="exponential moving average of the weights (e.g. 0.999): validated and saved instead of the raw weights")
    t.add_argument("--perceptual-weight", type=NONNEGATIVE, default=0.0, help="lambda of the VGG19 perceptual loss (paper: 0.02)")
    t.add_argument("--vgg-weights", help="torchvision vgg19-dcbbabfd.pth (needed when --perceptual-weight > 0)")
    t.add_argument("--no-upsample", dest="upsample", action="store_false",
                   help="train on 128x128 patches directly (reduced CPU schedule) instead of upsampling them to 256")
    t.add_argument("--val-cases", nargs="*", help="case numbers held out for validation (default: seeded 15%% of cases)")
    t.add_argument("--folds", help="cross-validation folds file (default: the bundled weights/cv_folds.json)")
    t.add_argument("--holdout-fold", type=COUNT, metavar="K",
                   help="validate on exactly fold K of --folds and train on every other case")
    t.add_argument("--all-cases", action="store_true",
                   help="train on every case without validation (final weights: the last epoch is written)")
    t.add_argument("--steps-per-epoch", type=POSITIVE_INT, help="at most this many batches per epoch (smoke runs)")
    t.add_argument("--val-every", type=POSITIVE_INT, default=1, help="validate every N epochs (and after the last)")
    t.add_argument("--init-weights", help="start from these weights ('bundled' = the shipped weights of --task)")
    t.add_argument("--device", default="auto", choices=DEVICES)
    t.add_argument("--bf16", action="store_true", help="bf16 autocast (faster; diverged in our CPU runs, see the model card)")
    t.add_argument("--seed", type=int, default=0, help="patch order, occluding squares, initial weights")
    t.add_argument("--split-seed", type=int, default=0, help="which cases are held out for validation (default 0)")
    t.add_argument("--threads", type=POSITIVE_INT)
    t.add_argument("--max-minutes", type=POSITIVE, help="stop (resumably) after this much training time")

    sub.add_parser("models", help="list the network architectures and the bundled weights of each task")
    return p


def cmd_models(args) -> int:
    """Registered architectures (name, parameters, description), then the bundled weights per task."""
    from .network import count_parameters
    from .registry import create_model, model_entries
    from .weights import catalogue

    print("architectures:")
    for name, entry in sorted(model_entries().items()):
        print(f"  {name:16s} {count_parameters(create_model(name)):>9,d} parameters  {entry.description}")
    print("bundled weights:")
    entries = catalogue()
    if not entries:
        print("  (none)")
    for task, entry in sorted(entries.items()):
        source = entry.get("source") or entry.get("description", "")
        print(f"  {task:10s} {entry['file']:24s} {entry.get('architecture', '?'):16s} sha256 {entry['sha256']}\n"
              f"  {'':10s} source: {source}")
    return 0


def cmd_train(args) -> int:
    from .training import TrainConfig, train
    from .weights import bundled_weights

    init = args.init_weights
    if init == "bundled":
        init = str(bundled_weights(args.task)[0])
    cfg = TrainConfig(data=args.data, task=args.task, out=args.out, epochs=args.epochs, batch_size=args.batch_size,
                      lr=args.lr, lr_schedule=args.lr_schedule, warmup_steps=args.warmup_steps, clip_grad=args.clip_grad, grad_weight=args.grad_weight,
                      intensity_weight=args.intensity_weight, ssim_weight=args.ssim_weight,
                      ssim_reference=args.ssim_reference, salient_weight=args.salient_weight,
                      salient_threshold=args.salient_threshold, salient_dark=args.salient_dark, ema=args.ema,
                      folds=args.folds, holdout_fold=args.holdout_fold, all_cases=args.all_cases,
                      steps_per_epoch=args.steps_per_epoch, val_every=args.val_every,
                      perceptual_weight=args.perceptual_weight,
                      vgg_weights=args.vgg_weights, upsample=args.upsample, val_cases=args.val_cases,
                      init_weights=init, device=args.device, bf16=args.bf16, seed=args.seed, split_seed=args.split_seed, threads=args.threads,
                      max_minutes=args.max_minutes)
    best = train(cfg)
    if best is None:
        print(f"no epoch finished within the time budget; no weights were written (run folder: {args.out})")
        return 0
    print(f"best weights: {best}")
    return 0


class _ProgressBar:
    """A tqdm bar driven by the engine's (done, total) callback, created at the first call (when the total is
    known: no "0slice [00:00, ?slice/s]" line). A context manager that closes it."""

    def __init__(self, quiet: bool, desc: str):
        self.quiet, self.desc, self.bar = quiet, desc, None

    def __call__(self, done: int, total: int) -> None:
        if self.quiet:
            return
        if self.bar is None:
            from tqdm import tqdm

            self.bar = tqdm(total=total, unit="slice", desc=self.desc, file=sys.stderr)
        self.bar.total = total
        self.bar.n = done
        self.bar.refresh()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if self.bar is not None:
            self.bar.close()
        return False


def cmd_fuse(args) -> int:
    if args.input_dir:
        if args.anatomical or args.functional:
            raise ECFusionError("use either --input-dir (2D PNG pairs) or --anatomical/--functional (volumes), not both")
        return fuse_png_folder(args)
    if not (args.anatomical and args.functional):
        raise ECFusionError("volume mode needs --anatomical and --functional (and --task unless the functional input "
                            "is DICOM), or --input-dir for 2D pairs")
    from .fuse_files import FuseRequest, fuse_files

    with _ProgressBar(args.quiet, "fusing") as progress:
        done = fuse_files(FuseRequest.from_args(args), progress=progress,
                          status=None if args.quiet else lambda m: print(m, file=sys.stderr))
    if not args.quiet:
        reg = f", registration {args.register} included" if args.register != "none" else ""
        print(f"wrote {done.output} ({done.task}, {done.metadata['output']}, {done.seconds:.1f} s on "
              f"{done.metadata['device']}{reg})")
    return 0


def cmd_register(args) -> int:
    import time

    import SimpleITK as sitk

    from .registration import alignment_check, register
    from .geometry import resample_onto
    from .volume_io import read_image

    from .safe_files import atomic_write, refuse_overwriting_inputs

    out = refuse_overwriting_inputs(args.output, [args.anatomical, args.functional])
    if out.suffix.lower() not in (".tfm", ".txt", ".h5", ".hdf5"):
        raise ECFusionError(f"transform output {out}: use a .tfm, .txt or .h5 file name")
    if out.is_dir():
        raise ECFusionError(f"output {out} is an existing folder; give a file name")
    if not out.parent.is_dir():
        raise ECFusionError(f"output folder {out.parent} does not exist; create it first")
    anatomical = read_image(args.anatomical, what="anatomical image")
    second = read_image(args.functional, allow_rgb=True, what="functional image")
    t0 = time.time()
    before = alignment_check(anatomical, resample_onto(second, anatomical))
    tx = register(anatomical, second, args.mode, args.init, progress=lambda m: print(m, file=sys.stderr))
    after = alignment_check(anatomical, resample_onto(second, anatomical, tx))
    atomic_write(out, lambda tmp: sitk.WriteTransform(tx, tmp))
    print(f"wrote {out} ({args.mode}, {time.time() - t0:.1f} s); head containment {before.containment:.3f} -> "
          f"{after.containment:.3f}, mask Dice {before.dice:.3f} -> {after.dice:.3f}, "
          f"normalised MI {before.nmi:.3f} -> {after.nmi:.3f}")
    return 0


def _settings(args, task: str):
    from .fusion import FusionSettings

    return FusionSettings(task=task, device=args.device, batch_size=args.batch_size, axis=args.axis, precision=args.precision,
                          keep_salient=args.keep_salient,
                          colormap=args.colormap, window=args.window, level=args.level,
                          ct_window=args.ct_window, ct_level=args.ct_level, weights=args.weights)


def fuse_png_folder(args) -> int:
    """2D mode: every pair ROOT/<task>/{CT|PET|SPECT,MRI}/<name>.png -> OUT/<task>/<name>.png (+ <name>.json).

    Checked before anything is written: the layout, the sizes of every pair, the numeric options, the
    weights. A run that fails or is cancelled part-way removes what it wrote (files and the folders it made)."""
    from pathlib import Path

    import SimpleITK as sitk
    from tqdm import tqdm

    from .fusion import fuse_images
    from .input_checks import check_numbers
    from .pairs import check_pair_sizes, find_pairs
    from .safe_files import refuse_overwriting_inputs
    from .volume_io import read_image, sidecar_path, write_image_atomic
    from .weights import load_model

    out_root = Path(args.output)
    if out_root.exists() and not out_root.is_dir():
        raise ECFusionError(f"output {out_root} is an existing file; in 2D mode (--input-dir) --output is a folder")
    check_numbers(batch_size=args.batch_size, window=args.window, level=args.level, ct_window=args.ct_window,
                  ct_level=args.ct_level)
    pairs = find_pairs(args.input_dir, [args.task] if args.task else None)
    check_pair_sizes(pairs)
    targets = {pair: out_root / pair.task / f"{pair.name}.png" for pair in pairs}
    for pair, target in targets.items():
        for path in (target, sidecar_path(target)):
            refuse_overwriting_inputs(path, [pair.second, pair.mri, args.weights])
    models = {task: load_model(task, args.weights) for task in dict.fromkeys(p.task for p in pairs)}
    made_dirs, written = [], []
    try:
        for folder in [out_root, *(out_root / t for t in models)]:
            if not folder.is_dir():
                folder.mkdir(parents=True)
                made_dirs.append(folder)
        for pair in tqdm(pairs, unit="pair", desc="fusing", disable=args.quiet, file=sys.stderr):
            model, info = models[pair.task]
            mri = read_image(pair.mri, allow_rgb=True, what="MRI image")
            if mri.GetNumberOfComponentsPerPixel() == 3:  # some collections store grey MRI as RGB
                mri = sitk.VectorIndexSelectionCast(mri, 0)
            second = read_image(pair.second, allow_rgb=True, what=f"{pair.task} image")
            second.CopyInformation(mri)  # same size (checked): pixel for pixel, whatever the PNG headers say
            settings = _settings(args, pair.task)
            settings.as_is = mri.GetPixelID() == sitk.sitkUInt8  # 8-bit PNGs: grey levels as they are, as in training
            result = fuse_images(mri, second, settings, model=model, weights_info=info, label=f"{pair.task}/{pair.name}")
            write_image_atomic(result.image, targets[pair], sidecar=result.metadata)
            written.append(targets[pair])
    except BaseException:
        for target in written:
            for path in (target, sidecar_path(target)):
                path.unlink(missing_ok=True)
        for folder in reversed(made_dirs):
            try:
                folder.rmdir()
            except OSError:
                pass
        raise
    if not args.quiet:
        print(f"fused {len(pairs)} pairs into {out_root}")
    return 0


def cmd_evaluate_3d(args) -> int:
    """``ecfusion evaluate --anatomical --functional``: the measures of volume_quality.evaluate_volumes."""
    from .fusion import FusionSettings
    from .volume_io import read_image
    from .volume_quality import DEFAULT_LESIONS, evaluate_volumes

    if not args.task or len(args.task) != 1:
        raise ECFusionError("3D evaluation needs one --task (CT-MRI, PET-MRI or SPECT-MRI)")
    task = check_task(args.task[0])
    mri = read_image(args.anatomical, what="anatomical image")
    second = read_image(args.functional, what="functional image")
    if mri.GetDimension() != 3 or second.GetDimension() != 3:
        raise ECFusionError("3D evaluation needs 3D volumes; for 2D pairs use --input-dir and --fused")
    report = evaluate_volumes(mri, second, FusionSettings(task=task, keep_salient=args.keep_salient),
                              lesions=DEFAULT_LESIONS if args.lesions else None)
    a = report["anatomy"]
    print(f"{'measure':24s} {'fused':>8s} {'blend':>8s} {'ratio':>8s}")
    for key in ("head", "bright"):
        print(f"{'anatomy_kept_' + key:24s} {a[key]:8.4f} {a['blend_' + key]:8.4f} {a['ratio_' + key]:8.4f}")
    if "bone_kept" in report:
        b = report["bone_kept"]
        print(f"{'bone_kept':24s} {b['fused']:8.4f} {b['blend']:8.4f} {b['fused'] / b['blend']:8.4f}")
    for row in report.get("lesions", []):
        name = f"lesion_r{row['radius']:g}mm_x{row['factor']:g}"
        print(f"{name:24s} {row['fused']:8.2f} {row['blend']:8.2f} {row['ratio']:8.4f}")
    return 0


def cmd_evaluate(args) -> int:
    if args.anatomical or args.functional:
        if not (args.anatomical and args.functional):
            raise ECFusionError("3D evaluation needs both --anatomical and --functional")
        return cmd_evaluate_3d(args)
    if not (args.input_dir and args.fused):
        raise ECFusionError("evaluate needs --input-dir and --fused (2D pairs), or --anatomical and --functional (3D)")
    import csv
    from pathlib import Path

    import numpy as np

    from .metrics import METRICS, all_metrics, bone_kept, hot_spots_kept
    from .pairs import find_pairs, read_pair
    from .volume_io import read_image
    from .colour import luminance
    import SimpleITK as sitk

    from .safe_files import atomic_write

    if args.csv:
        csv_path = Path(args.csv)
        if csv_path.is_dir():
            raise ECFusionError(f"--csv {csv_path} is a folder; give a file name")
        if not (csv_path.parent if str(csv_path.parent) else Path(".")).is_dir():
            raise ECFusionError(f"--csv {csv_path}: folder {csv_path.parent} does not exist; create it first")
    pairs = find_pairs(args.input_dir, args.task)
    if args.names:
        pairs = [p for p in pairs if p.name in set(args.names)]
    rows = []
    for pair in pairs:
        fused_path = Path(args.fused) / pair.task / f"{pair.name}.png"
        a, b, _ = read_pair(pair)
        fused = sitk.GetArrayFromImage(read_image(fused_path, allow_rgb=True, what="fused image"))
        f = luminance(fused) if fused.ndim == 3 else fused.astype(np.float32)
        candidates = {"ecfusion": np.rint(f)}
        if args.baselines:
            candidates.update({"pixel-max": np.maximum(a, b), "pixel-average": (a + b) / 2})
        for method, img in candidates.items():
            m = all_metrics(np.rint(a), b, np.rint(img))
            if args.checks:
                m["bone_kept"] = bone_kept(np.rint(a), b, np.rint(img)) if pair.task == "CT-MRI" else float("nan")
                m["hot_kept"] = hot_spots_kept(np.rint(a), np.rint(img)) if pair.task != "CT-MRI" else float("nan")
            bg = (a <= 0.5) & (b <= 0.5)
            m["bg"] = float(img[bg].mean()) if bg.any() else 0.0
            rows.append({"task": pair.task, "name": pair.name, "method": method, **m})
    names = [*METRICS, "bg", *(["bone_kept", "hot_kept"] if args.checks else [])]
    if args.csv:
        def write_csv(tmp: str) -> None:
            with open(tmp, "w", newline="") as fh:
                w = csv.DictWriter(fh, ["task", "name", "method", *names])
                w.writeheader()
                w.writerows(rows)
        atomic_write(args.csv, write_csv)
    from .metrics import LOWER_IS_BETTER

    better = {n: "lower" if n in LOWER_IS_BETTER else "higher" for n in METRICS}
    print("better: " + ", ".join(f"{n} {d}" for n, d in better.items())
          + "; bg = mean fused grey level where both sources are black (0-255, lower is better: 0 keeps air black)",
          file=sys.stderr)  # a note for people: stdout stays a plain table
    print(f"{'task':10s} {'method':14s} " + " ".join(f"{n:>8s}" for n in names))
    for task in sorted({r["task"] for r in rows}):
        for method in dict.fromkeys(r["method"] for r in rows):
            sel = [r for r in rows if r["task"] == task and r["method"] == method]
            print(f"{task:10s} {method:14s} " + " ".join(f"{_nanmean([r[n] for r in sel]):8.4f}" for n in names))
    return 0


def _nanmean(values) -> float:
    """Mean ignoring NaN (an image check that does not apply, e.g. a slice without bone); NaN if none applies."""
    import numpy as np

    v = np.asarray(values, float)
    return float(v[~np.isnan(v)].mean()) if (~np.isnan(v)).any() else float("nan")


def cmd_demo(args) -> int:
    from pathlib import Path

    from .phantom import write_phantom
    from .tasks import check_task, second_modality

    task = check_task(args.task)
    out = Path(args.output)
    if out.exists() and not out.is_dir():
        raise ECFusionError(f"demo output {out} is an existing file; --output is a folder for the phantom and the result")
    paths = {k: out / f"phantom_{k.lower()}.nrrd" for k in ("MRI", "CT", "PET", "SPECT")}
    if not all(p.is_file() for p in paths.values()):
        print(f"writing the digital phantom to {out}/ ...")
        paths = write_phantom(out)
    fused = out / f"fused_{task.lower()}.nrrd"
    ns = build_parser().parse_args(["fuse", "--anatomical", str(paths["MRI"]), "--functional",
                                    str(paths[second_modality(task)]), "--task", task, "--output", str(fused),
                                    "--device", args.device])
    return cmd_fuse(ns)


COMMANDS = {"fuse": cmd_fuse, "register": cmd_register, "train": cmd_train, "evaluate": cmd_evaluate, "demo": cmd_demo,
            "models": cmd_models, "batch": cmd_batch}


class _WarningHandler(logging.Handler):
    """Library warnings (misalignment, implausible inputs, unverified weights) once each, on stderr, on their
    own line even while a progress bar is drawn."""

    def emit(self, record: logging.LogRecord) -> None:
        from tqdm import tqdm

        tqdm.write(f"ecfusion: warning: {record.getMessage()}", file=sys.stderr)


def _need_extras(command: str) -> None:
    """``evaluate`` and ``train`` need the metrics extra (scipy, scikit-image); fusion does not."""
    import importlib.util

    missing = [m for m in ("scipy", "skimage") if importlib.util.find_spec(m) is None]
    if missing:
        raise ECFusionError(f"'ecfusion {command}' needs scipy and scikit-image (not needed for fusion): "
                            "pip install 'ecfusion[metrics]'")


def main(argv=None) -> int:
    from .safe_files import Terminated, install_sigterm_handler

    args = build_parser().parse_args(argv)
    from .runtime import tune_cpu

    tune_cpu()  # this process is ours: OpenMP wait policy, allocator (before torch starts its threads)
    install_sigterm_handler()  # SIGTERM cleans up temporaries exactly as Ctrl-C does
    lib = logging.getLogger("ECFusionLib")
    handler, propagate = _WarningHandler(logging.WARNING), lib.propagate
    lib.addHandler(handler)
    lib.propagate = False  # printed once, not a second time by the root logger's last-resort handler
    try:
        if args.command in ("evaluate", "train"):
            _need_extras(args.command)
        return COMMANDS[args.command](args)
    except ECFusionError as exc:
        print(f"ecfusion: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except Terminated:
        print("ecfusion: terminated (SIGTERM); nothing half-written was left", file=sys.stderr)
        return 130
    except KeyboardInterrupt:
        print("ecfusion: cancelled; nothing half-written was left", file=sys.stderr)
        return 130
    except MemoryError:
        print("ecfusion: error: out of memory; try a smaller --batch-size, or a machine with more memory",
              file=sys.stderr)
        return 2
    except OSError as exc:  # the user's environment: disk full, permissions, a vanished file
        where = f" {exc.filename}" if exc.filename else ""
        print(f"ecfusion: error: cannot access{where}: {exc.strerror or exc}", file=sys.stderr)
        return 2
    finally:
        lib.removeHandler(handler)
        lib.propagate = propagate


if __name__ == "__main__":
    sys.exit(main())
