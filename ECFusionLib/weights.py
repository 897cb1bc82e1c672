"""Network weights: the bundled catalogue (with SHA-256 checksums), loading with checks, saving.

A weights file is a ``torch.save`` dict: {"architecture": "ecfusion-v1", "config": {...}, "state_dict": {...},
"meta": {...}}: the architecture's registered name (``registry``) and its constructor arguments (widths; older
files have none: the defaults), so the loader builds the network the file was made for.
Loading uses ``weights_only=True`` (no code runs from the file), checks the checksum when the file is
listed in the catalogue, and checks that every tensor matches the network's shapes.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import torch

from .errors import ECFusionError, WeightsError
from .registry import architecture_of, create_model
from .tasks import check_task

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
CATALOGUE = WEIGHTS_DIR / "catalogue.json"


def sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def catalogue() -> dict:
    """{task: {"file", "sha256", "architecture", "description", ...}} of the bundled weights."""
    if not CATALOGUE.is_file():
        return {}
    return json.loads(CATALOGUE.read_text())


def bundled_weights(task: str) -> tuple[Path, str]:
    """Path and expected SHA-256 of the bundled weights for ``task``; WeightsError if there are none."""
    task = check_task(task)
    entry = catalogue().get(task)
    if not entry:
        raise WeightsError(
            f"no trained weights are bundled for {task}; train them with 'ecfusion train' or pass --weights PATH. "
            "Random weights are never used."
        )
    path = WEIGHTS_DIR / entry["file"]
    if not path.is_file():
        raise WeightsError(f"bundled weights file for {task} is missing: {path}; reinstall ECFusion or pass --weights PATH")
    return path, entry["sha256"]


def load_state_dict(path: str | Path, expected_sha256: str | None = None) -> dict[str, torch.Tensor]:
    """Read and check a weights file; returns a state dict (fp32) for the network it names (``read_weights``)."""
    return read_weights(path, expected_sha256)[0]


def read_weights(path: str | Path, expected_sha256: str | None = None) -> tuple[dict[str, torch.Tensor], torch.nn.Module]:
    """Read and check a weights file.

    Args:
        path: the file.
        expected_sha256: its catalogue checksum, or None (not listed).
    Returns:
        (state dict in fp32, a new network of the file's architecture and config, not yet loaded).
    Raises:
        WeightsError: missing, corrupt, unknown architecture, or tensors that do not fit it.
    """
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"weights file not found: {path}")
    if expected_sha256 is not None:
        actual = sha256(path)
        if actual != expected_sha256:
            raise WeightsError(f"weights file {path} is corrupt: SHA-256 {actual[:12]}... does not match the catalogue's {expected_sha256[:12]}...")
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unpickling failure means a bad file
        raise WeightsError(f"weights file {path} cannot be read ({type(exc).__name__}): it is corrupt or not an ECFusion weights file") from exc
    if not isinstance(blob, dict) or "state_dict" not in blob:
        raise WeightsError(f"{path} is not an ECFusion weights file (no 'state_dict' entry)")
    config = blob.get("config") or {}
    if not isinstance(config, dict):
        raise WeightsError(f"{path} is not an ECFusion weights file (its 'config' entry is not a dict)")
    try:
        model = create_model(str(blob.get("architecture")), **config)
    except ECFusionError as exc:
        raise WeightsError(f"{path} holds weights for architecture '{blob.get('architecture')}' that this ECFusion "
                           f"cannot build: {exc}") from exc
    state = blob["state_dict"]
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    extra = sorted(set(state) - set(expected))
    wrong = [k for k in expected if k in state and tuple(state[k].shape) != tuple(expected[k].shape)]
    if missing or extra or wrong:
        raise WeightsError(f"{path} does not fit the {blob['architecture']} network: missing {missing[:3]}, unexpected {extra[:3]}, wrong shape {wrong[:3]}")
    return {k: v.float() for k, v in state.items()}, model


def weights_meta(path: str | Path) -> dict:
    blob = torch.load(path, map_location="cpu", weights_only=True)
    return blob.get("meta", {})


def load_model(task: str | None = None, weights: str | Path | None = None) -> tuple[torch.nn.Module, dict]:
    """The network a weights file names, in eval mode with its weights.

    Args:
        task: a task name; its bundled weights are used when ``weights`` is None.
        weights: a weights file (any registered architecture).
    Returns:
        (model, info) with info = {"weights": path, "sha256": checksum, "architecture": name}.
    Raises:
        WeightsError: no bundled weights for the task, or a bad file (``read_weights``).
    """
    if weights is not None:
        path, expected = Path(weights), None
    else:
        path, expected = bundled_weights(task)
    state, model = read_weights(path, expected)
    if weights is None and catalogue()[check_task(task)].get("architecture", model.architecture) != model.architecture:
        raise WeightsError(f"{path} holds {model.architecture} weights but the catalogue lists "
                           f"{catalogue()[check_task(task)]['architecture']}; reinstall ECFusion")
    model.load_state_dict(state)
    return model.eval(), {"weights": str(path), "sha256": expected or sha256(path), "architecture": model.architecture}


def save_weights(model: torch.nn.Module, path: str | Path, meta: dict | None = None) -> Path:
    """Save a model's weights atomically in the ECFusion weights format (its registered architecture and
    ``model.config``, the constructor arguments)."""
    path = Path(path)
    architecture = architecture_of(model)
    state = {k: v.detach().float().cpu().contiguous() for k, v in model.state_dict().items()}
    tmp = path.with_name(path.name + ".partial")
    torch.save({"architecture": architecture, "config": _plain(getattr(model, "config", {})), "state_dict": state,
                "meta": _plain(meta or {})}, tmp)
    os.replace(tmp, path)
    return path


def _plain(obj):
    """Make metadata safe for weights_only loading (plain Python numbers, strings, lists, dicts)."""
    if isinstance(obj, dict):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    if hasattr(obj, "item"):
        return obj.item()
    return obj
