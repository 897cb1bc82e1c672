"""The ``ecfusion`` command: fuse, train, evaluate.

Exit codes: 0 success; 2 bad input or usage; 3 missing/corrupt weights; 4 some batch rows failed;
130 cancelled (Ctrl-C or SIGTERM); 1 unexpected error.
"""
from __future__ import annotations

import argparse
import csv
import importlib.util
import logging
import sys
from pathlib import Path

from .batch import add_batch_parser, cmd_batch
from .errors import ECFusionError
from .options import COUNT, NONNEGATIVE, POSITIVE, POSITIVE_INT, TASK_HELP, add_fuse_options
from .registry import DEFAULT_ARCHITECTURE
from .tasks import DEFAULT_TASK, DEVICES, REGISTRATION_INITS, REGISTRATION_MODES

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


def build_parser() -> argparse.ArgumentParser:
    """The ``ecfusion`` parser: one sub-parser per command (``fuse``'s options come from ``options.FUSE_OPTIONS``)."""
    p = argparse.ArgumentParser(prog="ecfusion", description="ECFusion: fuse MRI with CT, PET or SPECT (slice by slice).")
    sub = p.add_subparsers(dest="command", required=True)

    f = sub.add_parser("fuse", help="fuse two volumes, or a folder of 2D PNG pairs", epilog=EPILOG_FUSE,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    add_fuse_options(f)

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
                   help="also bone_kept (CT-MRI) or hot_kept (PET/SPECT), target >= 0.95, and anatomy, anat_bright: "
                        "the MRI's structure kept outside bone; pixel-average is the 50/50 blend (evaluation.py)")
    e.add_argument("--csv", help="write the per-image metrics to this CSV file")

    add_batch_parser(sub)

    d = sub.add_parser("demo", help="fuse the bundled digital phantom (MRI + PET) on the CPU")
    d.add_argument("--output", default="demo_output", help="folder for the phantom and the fused volume")
    d.add_argument("--task", default=DEFAULT_TASK, help=TASK_HELP)
    d.add_argument("--device", default="cpu", choices=DEVICES)
    _add_train_parser(sub)
    sub.add_parser("models", help="list the bundled models (task, architecture, backends) and the architectures")
    return p


def _add_train_parser(sub) -> None:
    """``ecfusion train``: the options are ``training.TrainConfig``'s fields (``TrainConfig.from_args``)."""
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
    t.add_argument("--init-weights", help="start from these weights: a file, a bundled model's name, or 'bundled' "
                                          "(the default model of --task)")
    t.add_argument("--architecture", default=DEFAULT_ARCHITECTURE,
                   help=f"the network to train (a name from 'ecfusion models'; default {DEFAULT_ARCHITECTURE}); with "
                        "--init-weights, "
                        "the architecture those weights hold")
    t.add_argument("--device", default="auto", choices=DEVICES)
    t.add_argument("--bf16", action="store_true", help="bf16 autocast (faster; diverged in our CPU runs, see the model card)")
    t.add_argument("--seed", type=int, default=0, help="patch order, occluding squares, initial weights")
    t.add_argument("--split-seed", type=int, default=0, help="which cases are held out for validation (default 0)")
    t.add_argument("--threads", type=POSITIVE_INT)
    t.add_argument("--max-minutes", type=POSITIVE, help="stop (resumably) after this much training time")


def cmd_models(args) -> int:
    """The bundled models (task, default or not, architecture, backends it runs on here, file, SHA-256), then
    the registered architectures (name, parameters, description; listed where torch is installed)."""
    from .backends import installed, model_backends
    from .weights import catalogue, models

    print("bundled models:")
    defaults = {entry["name"] for entry in catalogue().values()}
    if not models():
        print("  (none)")
    for name, entry in sorted(models().items()):
        runs = model_backends(entry.get("architecture", "?"))
        backends = ", ".join(b if ok == "yes" else f"{b} ({ok})" for b, ok in runs.items())
        source = entry.get("source") or entry.get("description", "")
        print(f"  {name:24s} {entry.get('task', '?'):10s} {'default' if name in defaults else '':8s}"
              f"{entry.get('architecture', '?'):16s} backends: {backends}\n"
              f"  {'':24s} {entry['file']} sha256 {entry['sha256']}\n  {'':24s} source: {source}")
    print("architectures:")
    if not installed("torch"):
        print("  (listed where PyTorch is installed; fusing needs only ONNX Runtime)")
        return 0
    from .network import count_parameters
    from .registry import create_model, model_entries

    for name, entry in sorted(model_entries().items()):
        print(f"  {name:16s} {count_parameters(create_model(name)):>9,d} parameters  {entry.description}")
    return 0


def cmd_train(args) -> int:
    from .training import TrainConfig, train
    from .weights import bundled_weights, models

    init = args.init_weights
    if init == "bundled" or init in models():
        init = str(bundled_weights(args.task, None if init == "bundled" else init)[0])
    cfg = TrainConfig.from_args(args, init_weights=init)
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
    from .registration import register_files

    done = register_files(args.anatomical, args.functional, args.output, args.mode, args.init,
                          progress=lambda m: print(m, file=sys.stderr))
    before, after = done.before, done.after
    print(f"wrote {done.output} ({args.mode}, {done.seconds:.1f} s); head containment {before.containment:.3f} -> "
          f"{after.containment:.3f}, mask Dice {before.dice:.3f} -> {after.dice:.3f}, "
          f"normalised MI {before.nmi:.3f} -> {after.nmi:.3f}")
    return 0


def fuse_png_folder(args) -> int:
    """2D mode (``fuse_pairs.fuse_pair_folder``): every pair ROOT/<task>/{CT|PET|SPECT,MRI}/<name>.png ->
    OUT/<task>/<name>.png (+ <name>.json)."""
    from .fuse_pairs import SETTINGS, fuse_pair_folder

    written = fuse_pair_folder(args.input_dir, args.output, task=args.task, quiet=args.quiet,
                               **{k: getattr(args, k) for k in SETTINGS if hasattr(args, k)})
    if not args.quiet:
        print(f"fused {len(written)} pairs into {args.output}")
    return 0


def cmd_evaluate(args) -> int:
    if args.anatomical or args.functional:  # 3D: the fusion at the defaults against a 50/50 blend
        if not (args.anatomical and args.functional):
            raise ECFusionError("3D evaluation needs both --anatomical and --functional")
        if not args.task or len(args.task) != 1:
            raise ECFusionError(f"3D evaluation needs one --task ({TASK_HELP})")
        from .volume_quality import evaluate_files, report_table

        print(report_table(evaluate_files(args.anatomical, args.functional, args.task[0],
                                          keep_salient=args.keep_salient, lesions=args.lesions)))
        return 0
    if not (args.input_dir and args.fused):
        raise ECFusionError("evaluate needs --input-dir and --fused (2D pairs), or --anatomical and --functional (3D)")
    from .evaluation import column_names, evaluate_pairs, summary_table
    from .metrics import LOWER_IS_BETTER, METRICS

    if args.csv:
        csv_path = Path(args.csv)
        if csv_path.is_dir():
            raise ECFusionError(f"--csv {csv_path} is a folder; give a file name")
        if not (csv_path.parent if str(csv_path.parent) else Path(".")).is_dir():
            raise ECFusionError(f"--csv {csv_path}: folder {csv_path.parent} does not exist; create it first")
    rows = evaluate_pairs(args.input_dir, args.fused, args.task, args.names, args.baselines, args.checks)
    names = column_names(args.checks)
    if args.csv:
        _write_csv(args.csv, rows, ["task", "name", "method", *names])
    better = {n: "lower" if n in LOWER_IS_BETTER else "higher" for n in METRICS}
    print("better: " + ", ".join(f"{n} {d}" for n, d in better.items())
          + "; bg = mean fused grey level where both sources are black (0-255, lower is better: 0 keeps air black)",
          file=sys.stderr)  # a note for people: stdout stays a plain table
    print(summary_table(rows, names))
    return 0


def _write_csv(path, rows: list[dict], columns: list[str]) -> None:
    """``rows`` as a CSV file with a header, written atomically."""
    from .safe_files import atomic_write

    def write(tmp: str) -> None:
        with open(tmp, "w", newline="") as fh:
            w = csv.DictWriter(fh, columns)
            w.writeheader()
            w.writerows(rows)
    atomic_write(path, write)


def cmd_demo(args) -> int:
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
    missing = [m for m in ("scipy", "skimage") if importlib.util.find_spec(m) is None]
    if missing:
        raise ECFusionError(f"'ecfusion {command}' needs scipy and scikit-image (not needed for fusion): "
                            "pip install 'ecfusion[metrics]'")


def _runs_torch(args) -> bool:
    """True when this command computes with torch here (train, or fusing on the torch backend): only then is the
    allocator tuned (``runtime.tune_cpu_allocator``: its retained heap, up to 512 MB, buys torch's CPU path
    ~15 %; ONNX Runtime keeps its own arena)."""
    from .backends import resolve_backend

    if args.command == "train":
        return True
    try:
        return resolve_backend(getattr(args, "backend", "auto"), getattr(args, "device", "auto"),
                               getattr(args, "precision", "auto")) == "torch"
    except ECFusionError:  # reported when the command runs
        return False


def main(argv=None) -> int:
    from .safe_files import Terminated, install_sigterm_handler

    args = build_parser().parse_args(argv)
    from .runtime import tune_cpu

    tune_cpu(allocator=_runs_torch(args))  # this process is ours: OpenMP wait policy, allocator (before torch starts its threads)
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
