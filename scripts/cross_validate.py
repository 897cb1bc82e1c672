#!/usr/bin/env python3
"""Cross-validate fusion over whole AANLIB cases: the six metrics and the image checks, per task, per fold and
mean ± spread (standard deviation over folds), for ECFusion (with and without the keep-salient rule), pixel-max
and pixel-average; and the keep-salient rule's parameters chosen by cross-validation (chosen on the other folds, scored
on the held-out fold).

    python scripts/cross_validate.py --data ../shared/data/aanlib --cache /tmp/ecf-cv [--weights W.pt] [--workers 2]
        [--show salient@128/dark45 ...]

Rule variants: ``salient@T`` / ``salient@T/darkD`` (fixed source level T, for CT-MRI with the MRI below D), and
for PET/SPECT-MRI ``focal`` (the shipped relative rule, ``salient.focal_weight``, computed as ``ecfusion fuse``
computes it for 2D 8-bit pairs: from the functional's 8-bit Y on the pair's own grid, PNG spacing). The table
lists the network alone, the old default rule (until issue 18: ``OLD_RULE``), the shipped rule (``tasks``), the
CV-chosen one, the ``--show`` variants, pixel-max and pixel-average.

Folds: ``ECFusionLib/weights/cv_folds.json`` (fixed; fold 0 = the cases the bundled weights were selected on and
never trained on; the bundled weights were trained on every other fold, so their numbers there are optimistic).
Every image is fused once by ``ecfusion fuse --input-dir ... --no-keep-salient`` (as a user would: bf16 where the
CPU has it, air skipping), reading the data in place; the fused PNGs and the per-image scores are cached under
``--cache`` (delete it, or use another, after changing weights). The rule is then applied to the cached fused Y
(``salient.keep_salient``), which is what ``ecfusion fuse`` does with it on (the recoloured output's Y equals the
fused Y within 0.5 grey level).
Image checks: CT-MRI "bone" = ``metrics.bone_kept``; PET/SPECT-MRI "hot" = ``metrics.hot_spots_kept`` (target >= 0.95).
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from ECFusionLib import evaluation  # noqa: E402 - CHECK_TARGET, the image checks' target (issue 14)
from ECFusionLib.tasks import TASK_NAMES  # noqa: E402

FOLDS_FILE = ROOT / "ECFusionLib" / "weights" / "cv_folds.json"
SIX = ("MI", "Qabf", "VIF", "SSIM", "Qcb", "Qcv")
THRESHOLDS = (128.0, 160.0, 192.0)
DARK = (10.0, 20.0, 30.0, 45.0, 50.0, 60.0)  # CT-MRI only: the rule's MRI condition (salient.py)
FOCAL = "focal"  # the relative PET/SPECT rule (salient.focal_weight), shipped since issue 18
# The fixed-level defaults until issue 18 (issue 14's model card): (threshold, dark) per task, by its second
# modality (task names live in tasks.py only).
OLD_RULE = {"CT": (128.0, 30.0), "PET": (208.0, None), "SPECT": (128.0, None)}
BASE = ("ecfusion", "pixel-max", "pixel-average")


def old_rule(task: str):
    """(threshold, dark) of ``task``'s fixed-level default until issue 18, or None."""
    from ECFusionLib.tasks import second_modality

    return OLD_RULE.get(second_modality(task))


def load_folds(path=FOLDS_FILE) -> dict[str, list[list[str]]]:
    """{task: [[case, ...] per fold]} from the fixed folds file."""
    data = json.loads(Path(path).read_text())
    return {task: v["folds"] for task, v in data["tasks"].items()}


def check_name(task: str) -> str:
    """"bone" or "hot": the task's image check (``evaluation.check_name``)."""
    from ECFusionLib.evaluation import check_name as full_name

    return full_name(task).split("_")[0]


def variant_name(threshold: float, dark: float | None) -> str:
    return f"salient@{threshold:g}" + ("" if dark is None else f"/dark{dark:g}")


def shipped_rule(task: str) -> str:
    """The method name of ``task``'s shipped keep-salient rule (``tasks.TaskSpec``): ``focal``, a
    ``variant_name`` or ``ecfusion`` (no rule)."""
    from ECFusionLib.tasks import task_spec

    spec = task_spec(task)
    if spec.salient_focal:
        return FOCAL
    return "ecfusion" if spec.salient_threshold is None else variant_name(spec.salient_threshold, spec.salient_dark)


def method_names(task: str, thresholds, dark) -> list[str]:
    """Every method scored for ``task``: the base ones, the fixed-level variants tried, the old default and the
    shipped rule (each once)."""
    names = [*BASE, *(variant_name(t, d) for t, d in variants(task, thresholds, dark))]
    if old_rule(task):
        names.append(variant_name(*old_rule(task)))
    names.append(shipped_rule(task))
    return list(dict.fromkeys(names))


def variants(task: str, thresholds, dark) -> list[tuple[float, float | None]]:
    """(threshold, dark) pairs tried for ``task``: the MRI condition only where the task has one (CT-MRI)."""
    from ECFusionLib.tasks import task_spec

    has_dark = task_spec(task).salient_dark is not None
    return [(t, d) for t in thresholds for d in ([None, *dark] if has_dark else [None])]


def apply_variant(method: str, f, a, b, task: str | None = None, spacing=None):
    """The fused Y of ``method`` (a base method, ``focal`` or a ``variant_name``) from the network's f (H x W,
    0-255) and sources a (CT / functional Y, 8-bit grey levels), b (MRI). ``focal`` needs the PET/SPECT ``task``
    and the pair's pixel ``spacing`` (mm, array order; default 1): ``fusion._focal_weights`` on a 2D 8-bit pair."""
    from ECFusionLib.salient import keep_salient
    from ECFusionLib.tasks import task_spec

    if method == "ecfusion":
        return f
    if method == "pixel-max":
        return np.maximum(a, b)
    if method == "pixel-average":
        return (a + b) / 2
    if method == FOCAL:
        if task is None or not task_spec(task).salient_focal:
            raise ValueError(f"the focal rule is for a PET/SPECT task, not {task}")
        return keep_salient(f, a, task, anatomical=b, spacing=spacing)
    spec = method.split("@", 1)[1].split("/dark")
    return keep_salient(f, a, anatomical=b, threshold=float(spec[0]), dark=float(spec[1]) if len(spec) > 1 else None)


def load_pair(pair, fused_png) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(a, b, f): the pair's CT / functional Y (8-bit grey levels, as ``ecfusion fuse`` maps it), its MRI and
    the cached fused PNG's Y (rounded; the network's fused Y within 0.5), each H x W float 0-255."""
    import SimpleITK as sitk

    from ECFusionLib.colour import luminance
    from ECFusionLib.pairs import read_pair

    a, b, _ = read_pair(pair)
    fused = sitk.GetArrayFromImage(sitk.ReadImage(str(fused_png)))
    f = np.rint(luminance(fused) if fused.ndim == 3 else fused.astype(np.float32))
    return np.rint(a), b, f


def score_image(job) -> list[dict]:
    """The given methods on one pair: rows {name, case, method, six metrics, check}.
    ``job`` = (pair, fused_png, method names)."""
    from ECFusionLib import metrics as M
    from ECFusionLib.evaluation import check_value

    pair, fused_png, names = job
    a, b, f = load_pair(pair, fused_png)
    spacing = pair_spacing(pair) if FOCAL in names else None
    methods = {m: apply_variant(m, f, a, b, pair.task, spacing) for m in names}
    ca, cb = M.qcb_contrast(a), M.qcb_contrast(b)
    rows = []
    for method, img in methods.items():
        img = np.rint(img)
        row = {"name": pair.name, "case": pair.case, "method": method,
               "MI": M.mi(a, b, img), "Qabf": M.qabf(a, b, img), "VIF": M.vif(a, b, img), "SSIM": M.ssim(a, b, img),
               "Qcb": M.qcb_cached(ca, cb, img), "Qcv": M.qcv(a, b, img)}
        row["check"] = check_value(pair.task, a, b, img)
        rows.append(row)
    return rows


def pair_spacing(pair) -> tuple[float, ...]:
    """The pair's pixel spacing (mm, array axis order) as ``ecfusion fuse`` sees it: the MRI file's (the second
    image is put on the MRI's grid pixel for pixel)."""
    import SimpleITK as sitk

    reader = sitk.ImageFileReader()
    reader.SetFileName(str(pair.mri))
    reader.ReadImageInformation()
    return tuple(reader.GetSpacing()[::-1])


def fuse_task(data: Path, task: str, cache: Path, weights: str | None, fuse_options=()) -> float:
    """Fuse every pair of ``task`` into cache/fused/<task>/ with `ecfusion fuse` (rule off; ``fuse_options``
    added, e.g. ``--precision bf16``); returns seconds."""
    cmd = [sys.executable, "-m", "ECFusionLib.cli", "fuse", "--input-dir", str(data), "--task", task,
           "--output", str(cache / "fused"), "--no-keep-salient", "--quiet", *fuse_options]
    if weights:
        cmd += ["--weights", weights]
    t0 = time.time()
    subprocess.run(cmd, check=True, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    return time.time() - t0


def score_task(data: Path, task: str, cache: Path, weights: str | None, workers: int, names,
               fuse_options=()) -> tuple[list[dict], dict]:
    """Per-image rows for every method in ``names``; cached in cache/scores_<task>.csv (only missing ones computed)."""
    from ECFusionLib.pairs import find_pairs

    pairs = find_pairs(data, [task])
    fused_dir = cache / "fused" / task
    timing = json.loads((cache / "timing.json").read_text()) if (cache / "timing.json").is_file() else {}
    if not all((fused_dir / f"{p.name}.png").is_file() for p in pairs):
        secs = fuse_task(data, task, cache, weights, fuse_options)
        timing[task] = {"fuse_s": round(secs, 1), "images": len(pairs), "s_per_image": round(secs / len(pairs), 3)}
        (cache / "timing.json").write_text(json.dumps(timing, indent=1))
    scores = cache / f"scores_{task}.csv"
    wanted = set(names)
    rows = []
    if scores.is_file():
        with open(scores) as fh:
            rows = [{k: (v if k in ("name", "case", "method") else float(v)) for k, v in r.items()} for r in csv.DictReader(fh)]
    have = {(r["name"], r["method"]) for r in rows}
    jobs = [(p, fused_dir / f"{p.name}.png", tuple(m for m in names if (p.name, m) not in have)) for p in pairs]
    jobs = [j for j in jobs if j[2]]
    if not jobs:
        return [r for r in rows if r["method"] in wanted], timing.get(task, {})
    t0 = time.time()
    if workers > 1:
        from multiprocessing import Pool

        with Pool(workers) as pool:
            rows += [r for rs in pool.imap(score_image, jobs, chunksize=4) for r in rs]
    else:
        rows += [r for job in jobs for r in score_image(job)]
    print(f"{task}: scored {len(jobs)} images in {time.time() - t0:.0f} s", file=sys.stderr)
    with open(scores, "w", newline="") as fh:
        w = csv.DictWriter(fh, ["name", "case", "method", *SIX, "check"])
        w.writeheader()
        w.writerows(rows)
    return [r for r in rows if r["method"] in wanted], timing.get(task, {})


def mean_over(rows: list[dict], method: str, cases, keys=(*SIX, "check")) -> dict[str, float]:
    """Mean per key over the images of ``cases`` for ``method`` (NaN checks, e.g. no bone in a slice, skipped)."""
    sel = [r for r in rows if r["method"] == method and r["case"] in set(cases)]
    return {k: float(np.nanmean([r[k] for r in sel])) if sel else float("nan") for k in keys}


def n_better(cand: dict, ref: dict) -> tuple[int, float]:
    """(metrics of the six better than ``ref``, mean relative margin over the six)."""
    from ECFusionLib.metrics import LOWER_IS_BETTER

    wins, margins = 0, []
    for k in SIX:
        rel = (cand[k] - ref[k]) / abs(ref[k]) if ref[k] else 0.0
        rel = -rel if k in LOWER_IS_BETTER else rel
        wins += rel > 0
        margins.append(rel)
    return wins, float(np.mean(margins))


def choose(rows: list[dict], cases, candidates) -> str:
    """The candidate with the best (six metrics beating pixel-max + 1 if the image check >= 0.95, mean relative
    margin over pixel-max), on the images of ``cases``."""
    ref = mean_over(rows, "pixel-max", cases)

    def key(method):
        m = mean_over(rows, method, cases)
        wins, margin = n_better(m, ref)
        return wins + (m["check"] >= evaluation.CHECK_TARGET), margin

    return max(candidates, key=key)


def cross_validate(rows: list[dict], folds: list[list[str]], names) -> dict:
    """Per fold: each method's means, and the rule variant (or none) chosen on the other folds and scored here."""
    candidates = ["ecfusion", *(m for m in names if m.startswith("salient@") or m == FOCAL)]
    out = {"folds": [], "chosen": []}
    for k, held in enumerate(folds):
        train = [c for j, f in enumerate(folds) if j != k for c in f]
        pick = choose(rows, train, candidates)
        per = {m: mean_over(rows, m, held) for m in dict.fromkeys((*BASE, *names))}
        per["ecfusion+rule (CV)"] = per[pick]
        out["folds"].append(per)
        out["chosen"].append(pick)
    out["chosen_on_all"] = choose(rows, [c for f in folds for c in f], candidates)
    return out


def fmt(vals) -> str:
    vals = np.asarray(vals, float)
    return f"{np.nanmean(vals):.3f} ± {np.nanstd(vals):.3f}" if np.abs(np.nanmean(vals)) < 100 else f"{np.nanmean(vals):.1f} ± {np.nanstd(vals):.1f}"


def table_rows(task: str, names, show=()) -> dict[str, str]:
    """{method: label} of the rows reported for ``task``, in order; a method listed twice (e.g. the old default
    rule is the shipped one) gets one row with both labels. ``show``: extra scored methods to list."""
    rows: dict[str, list[str]] = {"ecfusion": ["ECFusion (network alone)"]}
    if old_rule(task):
        rows.setdefault(variant_name(*old_rule(task)), []).append("old default until issue 18")
    rows.setdefault(shipped_rule(task), []).append("shipped")
    rows["ecfusion+rule (CV)"] = ["rule chosen by CV per fold"]
    for m in show:
        if m in names:
            rows.setdefault(m, [])
    rows["pixel-max"], rows["pixel-average"] = [], []
    named = ("ecfusion", "ecfusion+rule (CV)")  # labelled by words alone; the others by method name (+ words)
    return {m: labels[0] if m in named else f"{m} ({'; '.join(labels)})" if labels else m for m, labels in rows.items()}


def report(task: str, cv: dict, timing: dict, folds, rows: dict[str, str]) -> str:
    """Markdown: the fold-mean table (mean ± spread over folds) and the per-fold table, for the methods of ``rows``
    ({method: label}, ``table_rows``)."""
    chk = check_name(task)
    ref = {k: float(np.nanmean([f["pixel-max"][k] for f in cv["folds"]])) for k in SIX}
    lines = [f"### {task} ({len(folds)} folds; rule chosen per fold: {', '.join(cv['chosen'])}; "
             f"on all folds: {cv['chosen_on_all']})", "",
             f"| method | {' | '.join(SIX)} | {chk} kept | beats pixel-max on (fold means) |",
             "|---|" + "---|" * (len(SIX) + 2)]
    for m, label in rows.items():
        per = [f[m] for f in cv["folds"]]
        avg = {k: float(np.nanmean([p[k] for p in per])) for k in (*SIX, "check")}
        wins = "" if m == "pixel-max" else n_better(avg, ref)[0]
        lines.append(f"| {label} | " + " | ".join(fmt([p[k] for p in per]) for k in (*SIX, "check")) + f" | {wins} |")
    lines += ["", "Per fold (fold 0 = the bundled weights' own validation cases; the others were in their training):", "",
              f"| fold (cases) | method | {' | '.join(SIX)} | {chk} kept |", "|---|---|" + "---|" * (len(SIX) + 1)]
    for k, (f, cases) in enumerate(zip(cv["folds"], folds)):
        for m in rows:
            lines.append(f"| {k} ({' '.join(cases)}) | {m} | " + " | ".join(f"{f[m][x]:.4g}" for x in (*SIX, "check")) + " |")
    if timing:
        lines += ["", f"Fusing: {timing.get('images')} images in {timing.get('fuse_s')} s "
                      f"({timing.get('s_per_image')} s per 256x256 image incl. start-up and PNG I/O)."]
    return "\n".join(lines)


def threshold_table(task: str, rows: list[dict], names) -> str:
    """Mean over all images of the task, per rule threshold (for reading, not for choosing)."""
    lines = [f"| {task}: method (all images) | {' | '.join(SIX)} | check |", "|---|" + "---|" * (len(SIX) + 1)]
    cases = sorted({r["case"] for r in rows})
    for m in ("ecfusion", *(m for m in names if m.startswith("salient@") or m == FOCAL), "pixel-max"):
        mm = mean_over(rows, m, cases)
        lines.append(f"| {m} | " + " | ".join(f"{mm[k]:.4g}" for k in (*SIX, "check")) + " |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, help="AANLIB folder (read in place)")
    p.add_argument("--cache", required=True, help="folder for fused PNGs and per-image scores (outside the repository)")
    p.add_argument("--tasks", nargs="*", default=list(TASK_NAMES))
    p.add_argument("--weights", help="weights file (default: the bundled weights); use a fresh --cache per weights")
    p.add_argument("--folds", default=str(FOLDS_FILE))
    p.add_argument("--thresholds", nargs="*", type=float, default=list(THRESHOLDS), help="keep-salient thresholds to try")
    p.add_argument("--dark", nargs="*", type=float, default=list(DARK),
                   help="CT-MRI: MRI levels of the rule's dark-MRI condition to try (besides none)")
    p.add_argument("--precision", choices=("auto", "fp32", "bf16"),
                   help="passed to ecfusion fuse (issue 14's run: bf16 through torch; use a fresh --cache)")
    p.add_argument("--backend", choices=("auto", "torch", "onnxruntime"), help="passed to ecfusion fuse")
    p.add_argument("--show", nargs="*", default=[], help="more scored methods to list in the table, e.g. salient@128/dark45")
    p.add_argument("--workers", type=int, default=1, help="scoring processes (1 thread each)")
    p.add_argument("--json", help="write the fold results here")
    args = p.parse_args(argv)
    cache = Path(args.cache)
    cache.mkdir(parents=True, exist_ok=True)
    folds = load_folds(args.folds)
    results = {}
    for task in args.tasks:
        names = method_names(task, args.thresholds, args.dark)
        fuse_options = [f"--{k}={getattr(args, k)}" for k in ("precision", "backend") if getattr(args, k)]
        rows, timing = score_task(Path(args.data), task, cache, args.weights, args.workers, names, fuse_options)
        cv = cross_validate(rows, folds[task], names)
        results[task] = cv
        print(report(task, cv, timing, folds[task], table_rows(task, names, args.show)), "\n", flush=True)
        print(threshold_table(task, rows, names), "\n", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
