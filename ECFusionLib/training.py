"""Training ECFusion on 2D pairs: the paper's preprocessing, gradient (+ intensity / perceptual) loss,
checkpoints every epoch with resume, validation of whole held-out cases with the fusion metrics.

The parts: ``training_data`` (pairs, packed .npz, splits, patches), ``losses`` (``LossConfig``, ``FusionLoss``),
``evaluation`` (metrics, image check, selection score); this module holds the run's settings (``TrainConfig``)
and the loop, cut into steps: load the data, build the model and optimiser, resume, train an epoch, validate and
keep the best, checkpoint. The names of those modules used by the command line and scripts are re-exported here.

Options for the next training round (model card, "Next training round"): an exponential moving average of the
weights (``ema``: validated and saved instead of the raw weights), training on every case but one cross-validation
fold (``folds`` + ``holdout_fold``: validation scores exactly that fold), ``all_cases`` (final weights: no
validation, the last epoch is written), shorter epochs (``steps_per_epoch``), validation every N epochs, and data
packed into one ``.npz`` (``pack_pairs``; read without SimpleITK, for machines that lack it).

A run folder holds one run: resuming checks that the task, the architecture and the data (their values) are the
ones the checkpoint was trained with, and refuses otherwise (nothing in the folder is changed).
"""
from __future__ import annotations

import copy
import csv
import itertools
import json
import math
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np
import torch
from torch import nn

from . import metrics as M
from .engine import cpu_has_bf16, fuse_volume, resolve_device
from .errors import ECFusionError
from .evaluation import CHECK_TARGET, evaluate_arrays, image_check, selection_score  # noqa: F401 (re-exported)
from .losses import (SSIM_REFERENCES, FusionLoss, LossConfig, VGG19Features, gradient_map,  # noqa: F401
                     local_variance, ssim_map)
from .registry import DEFAULT_ARCHITECTURE, architecture_of, create_model
from .safe_files import atomic_write, write_text_atomic
from .training_data import (DEFAULT_FOLDS, PatchSampler, TrainData, load_data, load_images,  # noqa: F401
                            pack_pairs, patch_grid, read_folds, read_packed, split_for, subset_packed, to_unit)
from .weights import load_model, save_weights


@dataclass(kw_only=True)
class TrainConfig(LossConfig):
    """A training run's settings: the loss's (``LossConfig``: weights, SSIM reference, salient thresholds, VGG19)
    plus the data, the split, the schedule and the machine. Saved as the run folder's config.json."""

    data: str  # PNG folder (ROOT/<task>/...) or packed .npz
    task: str
    out: str  # the run folder
    architecture: str = DEFAULT_ARCHITECTURE  # a registered network (registry.create_model), default widths
    epochs: int = 50
    batch_size: int = 4
    lr: float = 1e-3
    lr_schedule: str = "constant"  # constant | cosine (to 1 % of lr)
    warmup_steps: int = 0  # linear warm-up from 5 % of lr
    clip_grad: float | None = None  # max gradient norm (None: no clipping)
    ema: float | None = None  # decay of an exponential moving average of the weights (validated and saved)
    upsample: bool = True
    val_fraction: float = 0.15
    val_cases: list[str] | None = None
    folds: str | None = None  # cross-validation folds file (None: the bundled weights/cv_folds.json)
    holdout_fold: int | None = None  # validate on exactly this fold of ``folds``, train on the others
    all_cases: bool = False  # train on every case, no validation (final weights: the last epoch is written)
    steps_per_epoch: int | None = None  # at most this many batches per epoch (smoke runs; a random subset)
    val_every: int = 1  # validate every N epochs (and after the last)
    init_weights: str | None = None  # a weights file to start from (its architecture must be ``architecture``)
    device: str = "auto"
    bf16: bool = False  # bf16 autocast: faster on CPU, but training diverged with it (see MODEL_CARD.md)
    seed: int = 0  # patch order, occluding squares, initial weights
    split_seed: int = 0  # which cases are held out (kept apart from ``seed`` so reruns validate on the same cases)
    threads: int | None = None
    max_minutes: float | None = None
    select_check: bool = True  # selection: +1 when the image check (bone / hot kept) is >= 0.95
    select_metrics: list[str] = field(default_factory=lambda: ["MI", "Qabf", "VIF", "SSIM", "Qcb", "Qcv"])

    @classmethod
    def from_args(cls, args, **overrides) -> "TrainConfig":
        """From an ``argparse`` namespace whose option names are the fields' (``ecfusion train``)."""
        values = {f.name: getattr(args, f.name) for f in fields(cls) if hasattr(args, f.name)}
        return cls(**{**values, **overrides})


class EMA:
    """Exponential moving average of a model's weights, kept in a copy of the model (validated and saved in place
    of the raw weights). Decay warms up as min(decay, (1 + n) / (10 + n)) over the n updates so far."""

    def __init__(self, model: nn.Module, decay: float):
        self.decay, self.updates = decay, 0
        self.model = copy.deepcopy(model).eval().requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        self.updates += 1
        d = min(self.decay, (1 + self.updates) / (10 + self.updates))
        for (k, e), v in zip(self.model.state_dict().items(), model.state_dict().values()):
            if e.dtype.is_floating_point:
                e.mul_(d).add_(v.detach(), alpha=1 - d)
            else:
                e.copy_(v)


# ------------------------------------------------------------------ loop
def lr_factor(step: int, total: int, schedule: str, warmup: int) -> float:
    """Multiplier of the base learning rate at ``step``: linear warm-up, then constant or cosine to 1 %."""
    if warmup and step < warmup:
        return 0.05 + 0.95 * step / warmup
    if schedule == "cosine":
        t = min(max(step - warmup, 0), max(total - warmup, 1)) / max(total - warmup, 1)
        return 0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * t))
    return 1.0


def check_config(cfg: TrainConfig) -> None:
    """ECFusionError for settings that cannot train (before any work or any folder is created)."""
    ints = {"epochs": (cfg.epochs, 1), "batch size": (cfg.batch_size, 1), "warm-up steps": (cfg.warmup_steps, 0),
            "validation interval (epochs)": (cfg.val_every, 1)}
    if cfg.steps_per_epoch is not None:
        ints["steps per epoch"] = (cfg.steps_per_epoch, 1)
    if cfg.holdout_fold is not None:
        ints["held-out fold"] = (cfg.holdout_fold, 0)
    if cfg.threads is not None:
        ints["threads"] = (cfg.threads, 1)
    for name, (value, low) in ints.items():
        if value < low:
            raise ECFusionError(f"{name} must be at least {low}, got {value}")
    floats = {"learning rate": (cfg.lr, False), "gradient weight": (cfg.grad_weight, False),
              "intensity weight": (cfg.intensity_weight, False), "SSIM weight": (cfg.ssim_weight, False),
              "perceptual weight": (cfg.perceptual_weight, False), "salient weight": (cfg.salient_weight, False)}
    if cfg.clip_grad is not None:
        floats["gradient clipping norm"] = (cfg.clip_grad, True)
    if cfg.max_minutes is not None:
        floats["time budget (minutes)"] = (cfg.max_minutes, True)
    for name, (value, strict) in floats.items():
        if not math.isfinite(value) or value < 0 or (strict and value == 0):
            raise ECFusionError(f"{name} must be a finite number {'> 0' if strict else '>= 0'}, got {value}")
    if cfg.ema is not None and not (0.0 < cfg.ema < 1.0):
        raise ECFusionError(f"EMA decay must be between 0 and 1 (e.g. 0.999), got {cfg.ema}")
    if cfg.ssim_reference not in SSIM_REFERENCES:
        raise ECFusionError(f"SSIM reference must be one of {', '.join(SSIM_REFERENCES)}, got {cfg.ssim_reference!r}")
    if cfg.all_cases and (cfg.holdout_fold is not None or cfg.val_cases):
        raise ECFusionError("--all-cases trains on every case: it cannot be combined with --holdout-fold or --val-cases")


def checkpoint(model, opt, sched, sampler, state, ema: EMA | None = None) -> dict:
    """Everything needed to resume, as tensors and plain Python values only (loadable with weights_only=True)."""
    version, internal, gauss = sampler.rng.getstate()
    ck = {"model": model.state_dict(), "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
          "sampler_rng": [version, list(internal), gauss], "torch_rng": torch.get_rng_state(),
          "state": dict(state)}
    if ema is not None:
        ck["ema"] = ema.model.state_dict()
        ck["ema_updates"] = ema.updates
    return ck


def load_checkpoint(path: Path, device) -> dict:
    """Read a checkpoint with ``weights_only=True``: a file that needs code to load (a pickle with objects)
    is refused, never executed."""
    try:
        return torch.load(path, map_location=device, weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any failure means the file cannot be trusted
        raise ECFusionError(f"cannot resume from {path}: it is not a checkpoint this version wrote, or it is "
                            f"damaged ({type(exc).__name__}). Nothing from it was run. Delete it (or use another "
                            "--out) to start over") from exc


# ------------------------------------------------------------------ the run
@dataclass
class Run:
    """What the loop's steps share: the settings, the model and its optimiser, the sampler, the loss, the EMA, and
    the resumable state (epoch, step, best score, seconds, and the run's identity)."""

    cfg: TrainConfig
    out: Path
    device: torch.device
    bf16: bool
    model: nn.Module
    opt: torch.optim.Optimizer
    sched: torch.optim.lr_scheduler.LambdaLR
    sampler: PatchSampler
    loss_fn: FusionLoss
    ema: EMA | None
    steps_per_epoch: int
    state: dict


def train(cfg: TrainConfig, log=print) -> Path | None:
    """Train (or resume) into ``cfg.out``; returns the path of the best weights file, or None when no epoch
    finished (time budget). A run that fails before its first checkpoint leaves no folder behind."""
    check_config(cfg)
    out = Path(cfg.out)
    if out.exists() and not out.is_dir():
        raise ECFusionError(f"--out {out} is a file; give a folder for the run")
    created = not out.exists()
    try:
        best = _train(cfg, out, log)
    except BaseException:
        if created:
            _remove_unfinished_run(out)
        raise
    if best is None and created:
        _remove_unfinished_run(out)
    return best


def _remove_unfinished_run(out: Path) -> None:
    """Remove a run folder this call created, if it holds no checkpoint (only the files training writes)."""
    if (out / "last.pt").exists():
        return
    for name in ("config.json", "log.csv", "best.pt"):
        (out / name).unlink(missing_ok=True)
    try:
        out.rmdir()
    except OSError:  # something else is in it: leave it
        pass


def _train(cfg: TrainConfig, out: Path, log) -> Path | None:
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    data = load_data(cfg, log)
    run = _build(cfg, out, data)
    out.mkdir(parents=True, exist_ok=True)
    if data.ref is not None:
        log("pixel-max on validation: " + ", ".join(f"{k}={v:.4f}" for k, v in data.ref.items()))
    if cfg.init_weights:
        log(f"fine-tuning from {cfg.init_weights}")
    _resume(run, log)
    write_text_atomic(out / "config.json", json.dumps(asdict(cfg), indent=2))
    _loop(run, data, log)
    best = out / "best.pt"
    return best if best.is_file() else None


def _build_model(cfg: TrainConfig) -> nn.Module:
    """A new network of ``cfg.architecture`` (registry), or the one ``cfg.init_weights`` holds, with its weights."""
    if not cfg.init_weights:
        return create_model(cfg.architecture)
    model, _ = load_model(weights=cfg.init_weights)
    if model.architecture != cfg.architecture:
        raise ECFusionError(f"--init-weights {cfg.init_weights} holds a {model.architecture} network, but this run "
                            f"trains {cfg.architecture}; give --architecture {model.architecture} or other weights")
    return model.train()


def _build(cfg: TrainConfig, out: Path, data: TrainData) -> Run:
    """The model (channels-last), Adam, the LR schedule, the sampler, the loss and the EMA; ECFusionError when
    the training patches do not fill one batch."""
    device = resolve_device(cfg.device)
    loss_fn = FusionLoss(cfg).to(device)  # first: its settings (VGG19 weights, salient thresholds) are checked
    model = _build_model(cfg).to(device).to(memory_format=torch.channels_last)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    sampler = PatchSampler(data.ta, data.tb, upsample=cfg.upsample, seed=cfg.seed)
    if len(sampler) < cfg.batch_size:
        raise ECFusionError(f"--batch-size {cfg.batch_size} is more than the {len(sampler)} training patches of "
                            f"{len(data.train_pairs)} training pairs: not one batch could be trained. Use --batch-size "
                            f"{len(sampler)} or less, or more data")
    steps = len(sampler) // cfg.batch_size
    if cfg.steps_per_epoch:
        steps = min(steps, cfg.steps_per_epoch)
    total = steps * cfg.epochs
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(s, total, cfg.lr_schedule, cfg.warmup_steps))
    identity = {"task": cfg.task, "architecture": architecture_of(model),
                "model_config": json.loads(json.dumps(getattr(model, "config", {}))), "data_sha256": data.digest}
    state = {"epoch": 0, "step": 0, "best_score": -1e9, "best_epoch": None, "seconds": 0.0, "run": identity}
    return Run(cfg, out, device, cfg.bf16 and (device.type == "cuda" or cpu_has_bf16()), model, opt, sched, sampler,
               loss_fn, EMA(model, cfg.ema) if cfg.ema else None, steps, state)


def _check_same_run(run: Run, stored: dict | None) -> None:
    """ECFusionError when the checkpoint in the run folder was trained for another task, architecture or data.
    ``stored``: the checkpoint's identity (older checkpoints have none: the folder's config.json is compared)."""
    now, last = run.state["run"], run.out / "last.pt"
    if stored is None:
        try:
            old = json.loads((run.out / "config.json").read_text())
        except (OSError, ValueError):
            old = {}
        stored = {"task": old.get("task", now["task"])}
        now = {**now, "data": str(run.cfg.data)}
        stored["data"] = str(old.get("data", run.cfg.data))
    labels = {"task": "task", "architecture": "architecture", "model_config": "network widths",
              "data_sha256": "training/validation data", "data": "--data"}
    diffs = [f"{labels[k]}: {stored[k] if k != 'data_sha256' else 'other images'} (this command: "
             f"{now[k] if k != 'data_sha256' else 'other images'})"
             for k in now if k in stored and stored[k] != now[k]]
    if diffs:
        raise ECFusionError(f"{run.out} holds another training run ({'; '.join(diffs)}): it was not resumed and "
                            f"nothing in it was changed. Give another --out for this run (or delete {last} to start "
                            "this folder over)")


def _resume(run: Run, log) -> None:
    """Continue from the run folder's last.pt when there is one (refused if it is another run's)."""
    last = run.out / "last.pt"
    if not last.is_file():
        return
    ck = load_checkpoint(last, run.device)
    _check_same_run(run, ck.get("state", {}).get("run") if isinstance(ck.get("state"), dict) else None)
    try:
        run.model.load_state_dict(ck["model"])
        run.opt.load_state_dict(ck["optimizer"])
        run.sched.load_state_dict(ck["scheduler"])
        version, internal, gauss = ck["sampler_rng"]
        run.sampler.rng.setstate((version, tuple(internal), gauss))
        torch.set_rng_state(ck["torch_rng"].cpu())
        run.state = {**ck["state"], "run": run.state["run"]}
        if run.ema is not None:
            run.ema.model.load_state_dict(ck["ema"] if "ema" in ck else run.model.state_dict())
            run.ema.updates = int(ck.get("ema_updates", 0))
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:
        raise ECFusionError(f"cannot resume from {last}: it does not match this run ({type(exc).__name__}: "
                            f"{str(exc)[:120]}); delete it or use another --out") from exc
    log(f"resumed from {last} at epoch {run.state['epoch']}")
    if run.state["epoch"] >= run.cfg.epochs:
        log(f"the run in {run.out} already finished its {run.cfg.epochs} epochs; give more --epochs to continue it")


def _loop(run: Run, data: TrainData, log) -> None:
    """Epochs until ``cfg.epochs`` (or the time budget): train, validate / keep the best, checkpoint."""
    cfg, state = run.cfg, run.state
    log_path = run.out / "log.csv"
    new_log = not log_path.exists()
    t_start = time.time() - state["seconds"]
    with open(log_path, "a", newline="") as fh:
        writer = csv.writer(fh)
        if new_log:
            writer.writerow(["epoch", "step", "seconds", "lr", "train_loss", *cfg.select_metrics, "bg", "check", "score"])
        while state["epoch"] < cfg.epochs:
            if cfg.max_minutes and (time.time() - t_start) / 60 > cfg.max_minutes:
                log(f"time budget of {cfg.max_minutes} min reached after {state['epoch']} epochs; resume to continue")
                break
            losses, parts = train_epoch(run)
            state["epoch"] += 1
            state["seconds"] = time.time() - t_start
            row = _end_epoch(run, data, losses, parts, t_start, log)
            writer.writerow([state["epoch"], state["step"], round(state["seconds"], 1), run.sched.get_last_lr()[0],
                             float(np.mean(losses)), *row])
            fh.flush()
            ck = checkpoint(run.model, run.opt, run.sched, run.sampler, state, run.ema)
            atomic_write(run.out / "last.pt", lambda tmp: torch.save(ck, tmp))


def train_epoch(run: Run) -> tuple[list[float], dict[str, list[float]]]:
    """One epoch of at most ``steps_per_epoch`` batches; returns the total losses and each term's, per step."""
    from tqdm import tqdm

    cfg, device = run.cfg, run.device
    run.model.train()
    losses, parts = [], {}
    batches = itertools.islice(run.sampler.batches(cfg.batch_size), run.steps_per_epoch)
    bar = tqdm(batches, total=run.steps_per_epoch, desc=f"{cfg.task} epoch {run.state['epoch'] + 1}/{cfg.epochs}",
               leave=False, disable=None)
    for pa, pb in bar:
        pa = pa.to(device).contiguous(memory_format=torch.channels_last)
        pb = pb.to(device).contiguous(memory_format=torch.channels_last)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=run.bf16):
            f = run.model(pa, pb)
        terms = run.loss_fn(pa, pb, f.float())
        run.opt.zero_grad(set_to_none=True)
        terms["total"].backward()
        if cfg.clip_grad:
            torch.nn.utils.clip_grad_norm_(run.model.parameters(), cfg.clip_grad)
        run.opt.step()
        run.sched.step()
        if run.ema is not None:
            run.ema.update(run.model)
        run.state["step"] += 1
        losses.append(float(terms["total"].detach()))
        for k, v in terms.items():
            parts.setdefault(k, []).append(float(v.detach()))
        bar.set_postfix(loss=f"{np.mean(losses[-50:]):.4f}")
    return losses, parts


def validate(run: Run, data: TrainData) -> tuple[dict[str, float], float]:
    """Fuse the validation images whole with the kept weights (EMA or raw); (metrics with 'bg' and 'check', score)."""
    cfg = run.cfg
    kept = run.ema.model if run.ema is not None else run.model
    fused, _ = fuse_volume(kept, data.va8, data.vb8, device=str(run.device), batch_size=8, fast=False,
                           precision="bf16" if run.bf16 else "fp32")  # full slices, as the paper scores them
    va255, vb255, f255 = data.va8.astype(np.float64), data.vb8.astype(np.float64), fused.astype(np.float64)
    val = evaluate_arrays(va255, vb255, f255, cfg.select_metrics)
    val["check"] = image_check(cfg.task, va255, vb255, f255)
    return val, selection_score(val, data.ref, cfg.select_metrics, val["check"] if cfg.select_check else None)


def _end_epoch(run: Run, data: TrainData, losses, parts, t_start: float, log) -> list:
    """Validate when due and keep the best weights (or, without validation, the latest); the log row's metric cells."""
    cfg, state = run.cfg, run.state
    run.model.eval()
    kept = run.ema.model if run.ema is not None else run.model  # the weights validated and written
    meta = {"task": cfg.task, "epoch": state["epoch"], "ema": cfg.ema}
    loss_text = f"loss {np.mean(losses):.4f} (" + ", ".join(f"{k} {np.mean(v):.4f}" for k, v in parts.items() if k != "total") + ")"
    if data.validate and (state["epoch"] % cfg.val_every == 0 or state["epoch"] == cfg.epochs):
        val, score = validate(run, data)
        state["seconds"] = time.time() - t_start  # validation included, as before
        log(f"epoch {state['epoch']}: {loss_text}, " + ", ".join(f"{k}={v:.4f}" for k, v in val.items())
            + f", beats pixel-max on {M.beats(val, data.ref, cfg.select_metrics)}")
        if score > state["best_score"]:
            state["best_score"], state["best_epoch"] = score, state["epoch"]
            save_weights(kept, run.out / "best.pt", {**meta, "val": val, "pixel_max": data.ref})
        return [*[round(val[n], 5) for n in cfg.select_metrics], round(val["bg"], 3), round(val["check"], 4), round(score, 4)]
    log(f"epoch {state['epoch']}: {loss_text}")
    if not data.validate:  # every case trained on: the latest epoch is the result
        state["best_epoch"] = state["epoch"]
        save_weights(kept, run.out / "best.pt", meta)
    return [*[""] * len(cfg.select_metrics), "", "", ""]
