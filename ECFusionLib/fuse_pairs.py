"""2D mode: every PNG pair of a folder ROOT/<task>/{CT|PET|SPECT,MRI}/<name>.png fused into
OUT/<task>/<name>.png (+ <name>.json, the provenance), as ``ecfusion fuse --input-dir ROOT --output OUT`` does.

    written = fuse_pair_folder("pairs/", "fused_pngs/", device="cpu")

Checked before anything is written: the layout, the sizes of every pair, the numeric options, the weights.
A run that fails or is cancelled part-way removes what it wrote (files and the folders it made).
"""
from __future__ import annotations

import sys
from dataclasses import fields
from pathlib import Path

import SimpleITK as sitk

from . import fusion
from .errors import ECFusionError
from .fusion import FusionSettings
from .input_checks import check_numbers
from .pairs import check_pair_sizes, find_pairs
from .safe_files import refuse_overwriting_inputs
from .volume_io import read_image, sidecar_path, write_image_atomic
from .backends import load_network

SETTINGS = tuple(f.name for f in fields(FusionSettings) if f.name not in ("task", "as_is"))


def fuse_pair_folder(input_dir, output, *, task: str | None = None, quiet: bool = False, **settings) -> list[Path]:
    """Fuse every 2D pair under ``input_dir`` (of ``task``, or of every task folder present) into ``output``.

    Args:
        input_dir: ROOT of the 2D layout ROOT/<task>/{CT|PET|SPECT,MRI}/<name>.png.
        output: the output folder (made if needed); each pair gives OUT/<task>/<name>.png and its .json.
        task: only this task's folder (default: all present).
        quiet: no progress bar.
        **settings: ``FusionSettings`` fields (device, precision, batch_size, window, level, ct_window, ct_level,
            colormap, keep_salient, weights, ...); unknown names are refused (TypeError).
    Returns:
        The written PNG files, in the order of the pairs.
    """
    unknown = sorted(set(settings) - set(SETTINGS))
    if unknown:
        raise TypeError(f"fuse_pair_folder() got unknown settings {unknown}; known: {', '.join(SETTINGS)}")
    out_root = Path(output)
    if out_root.exists() and not out_root.is_dir():
        raise ECFusionError(f"output {out_root} is an existing file; in 2D mode (--input-dir) --output is a folder")
    check_numbers(**{k: settings.get(k) for k in ("batch_size", "window", "level", "ct_window", "ct_level")})
    pairs = find_pairs(input_dir, [task] if task else None)
    check_pair_sizes(pairs)
    targets = {pair: out_root / pair.task / f"{pair.name}.png" for pair in pairs}
    for pair, target in targets.items():
        for path in (target, sidecar_path(target)):
            refuse_overwriting_inputs(path, [pair.second, pair.mri, settings.get("weights")])
    models = {t: load_network(t, settings.get("weights"), settings.get("model"), settings.get("backend", "auto"),
                              settings.get("device", "auto"), settings.get("precision", "auto"))
              for t in dict.fromkeys(p.task for p in pairs)}
    made_dirs, written = [], []
    try:
        for folder in [out_root, *(out_root / t for t in models)]:
            if not folder.is_dir():
                folder.mkdir(parents=True)
                made_dirs.append(folder)
        from tqdm import tqdm

        for pair in tqdm(pairs, unit="pair", desc="fusing", disable=quiet, file=sys.stderr):
            _fuse_pair(pair, targets[pair], models[pair.task], settings)
            written.append(targets[pair])
    except BaseException:
        _remove(written, made_dirs)
        raise
    return written


def _fuse_pair(pair, target: Path, model_info, settings: dict) -> None:
    """Fuse one pair pixel for pixel (8-bit PNGs: grey levels as they are, as in training) and write it."""
    model, info = model_info
    mri = read_image(pair.mri, allow_rgb=True, what="MRI image")
    if mri.GetNumberOfComponentsPerPixel() == 3:  # some collections store grey MRI as RGB
        mri = sitk.VectorIndexSelectionCast(mri, 0)
    second = read_image(pair.second, allow_rgb=True, what=f"{pair.task} image")
    second.CopyInformation(mri)  # same size (checked): pixel for pixel, whatever the PNG headers say
    pair_settings = FusionSettings(task=pair.task, **settings)
    pair_settings.as_is = mri.GetPixelID() == sitk.sitkUInt8  # 8-bit PNGs: grey levels as they are, as in training
    result = fusion.fuse_images(mri, second, pair_settings, model=model, weights_info=info,
                                label=f"{pair.task}/{pair.name}")
    write_image_atomic(result.image, target, sidecar=result.metadata)


def _remove(written: list[Path], made_dirs: list[Path]) -> None:
    """Undo a part-way run: the files written (and their sidecars), then the folders made, innermost first."""
    for target in written:
        for path in (target, sidecar_path(target)):
            path.unlink(missing_ok=True)
    for folder in reversed(made_dirs):
        try:
            folder.rmdir()
        except OSError:
            pass
