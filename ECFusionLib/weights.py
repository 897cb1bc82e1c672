"""Network weights: the bundled catalogue (with SHA-256 checksums), loading with checks, saving.

A weights file is a ``torch.save`` dict: {"architecture": "ecfusion-v1", "config": {...}, "state_dict": {...},
"meta": {...}, "tensor_sha256": "..."}: the architecture's registered name (``registry``) and its constructor arguments (widths; older
files have none: the defaults), so the loader builds the network the file was made for.
``tensor_sha256`` (``tensor_checksum``) is a SHA-256 of every tensor's name, dtype, shape and bytes, written
by ``save_weights`` (training, release scripts) and verified on load: a flipped byte in the weights is refused
(WeightsError, exit 3). Files without it (saved by other tools) load with a warning that they are unverified.
Loading uses ``weights_only=True`` (no code runs from the file), checks the checksum when the file is
listed in the catalogue, and checks that every tensor matches the network's shapes.
"""
from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import torch

from .errors import ECFusionError, WeightsError
from .registry import architecture_of, create_model
from .runtime import TORCH_MINIMUM
from .safe_files import atomic_write, sha256_files
from .tasks import check_task

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
CATALOGUE = WEIGHTS_DIR / "catalogue.json"
CHECKSUM_KEY = "tensor_sha256"
log = logging.getLogger(__name__)


def sha256(path: str | Path) -> str:
    """SHA-256 (hex) of a file's bytes."""
    return sha256_files([path])


def torch_too_old(version: str | None = None) -> bool:
    """True for torch < 2.6 (``torch.load(weights_only=True)`` bypasses were published for those)."""
    parts = (version or torch.__version__).split("+")[0].split(".")
    try:
        return (int(parts[0]), int(parts[1])) < TORCH_MINIMUM
    except (ValueError, IndexError):
        return False


def tensor_checksum(state: dict[str, torch.Tensor]) -> str:
    """SHA-256 over the tensors of a state dict, in name order: name, dtype, shape, then the raw bytes."""
    h = hashlib.sha256()
    for name in sorted(state):
        t = state[name].detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).clone().view(torch.uint8).numpy().tobytes() if t.numel() else b"")
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


SUPPORTED = "ECFusion's own PyTorch weights files (.pt, written by 'ecfusion train' or save_weights)"


def check_weights_file(path: Path) -> None:
    """WeightsError for what cannot be a weights file: missing, a folder, empty, or a format ECFusion does not
    read (safetensors, ONNX, an image, an HTML page): says what it is and which format is needed."""
    from .file_kind import describe, sniff

    if path.is_dir():
        found = sorted(p.name for p in path.glob("*.pt"))
        hint = f"; it holds {', '.join(found[:5])}" if found else ""
        raise WeightsError(f"--weights {path} is a folder; give the weights file itself{hint}")
    if not path.is_file():
        raise WeightsError(f"weights file not found: {path}" + (" (it exists but is not a regular file: a pipe or a "
                                                                  "device)" if path.exists() else ""))
    kind = "onnx" if path.suffix.lower() == ".onnx" else sniff(path)
    if kind == "empty":
        raise WeightsError(f"weights file {path} is empty (0 bytes): the copy or download did not finish; copy it again")
    if kind not in (None, "zip", "pickle"):
        shown = "an ONNX model" if kind == "onnx" else describe(kind)
        raise WeightsError(f"weights file {path} is {shown}, a format ECFusion does not read: it reads {SUPPORTED}")


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
    check_weights_file(path)
    if expected_sha256 is not None:
        actual = sha256(path)
        if actual != expected_sha256:
            raise WeightsError(f"weights file {path} is corrupt: SHA-256 {actual[:12]}... does not match the catalogue's {expected_sha256[:12]}...")
    if expected_sha256 is None and torch_too_old():
        raise WeightsError(f"PyTorch {torch.__version__} is older than 2.6: its weights_only loading has published "
                           f"bypasses, so the unverified file {path} is not loaded. Install torch >= 2.6")
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unpickling failure means a bad file
        raise WeightsError(f"weights file {path} cannot be read ({type(exc).__name__}): it is corrupt or not an ECFusion weights file") from exc
    if not isinstance(blob, dict) or "state_dict" not in blob:
        raise WeightsError(f"{path} is not an ECFusion weights file (no 'state_dict' entry)")
    if not isinstance(blob["state_dict"], dict) or not all(isinstance(v, torch.Tensor) for v in blob["state_dict"].values()):
        raise WeightsError(f"{path} is not an ECFusion weights file (its 'state_dict' does not hold tensors)")
    stored = blob.get(CHECKSUM_KEY)
    if stored is not None and tensor_checksum(blob["state_dict"]) != stored:
        raise WeightsError(f"weights file {path} is corrupt: its tensors do not match the checksum stored inside it "
                           "(the file was damaged after it was written); copy it again or re-export it")
    if stored is None and expected_sha256 is None:
        log.warning("weights file %s carries no ECFusion checksum (written by another tool): it is loaded "
                    "unverified", path)
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


def has_checksum(path: str | Path) -> bool:
    """True when the weights file carries the tensor checksum of ``save_weights``."""
    blob = torch.load(path, map_location="cpu", weights_only=True)
    return isinstance(blob, dict) and CHECKSUM_KEY in blob


def save_weights(model: torch.nn.Module, path: str | Path, meta: dict | None = None) -> Path:
    """Save a model's weights atomically in the ECFusion weights format (its registered architecture and
    ``model.config``, the constructor arguments), with the tensor checksum inside."""
    architecture = architecture_of(model)
    state = {k: v.detach().float().cpu().contiguous() for k, v in model.state_dict().items()}
    blob = {"architecture": architecture, "config": _plain(getattr(model, "config", {})), "state_dict": state,
            "meta": _plain(meta or {}), CHECKSUM_KEY: tensor_checksum(state)}
    return atomic_write(path, lambda tmp: torch.save(blob, tmp))


def _plain(obj):
    """Make metadata safe for weights_only loading (plain Python numbers, strings, lists, dicts)."""
    if isinstance(obj, dict):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    if hasattr(obj, "item"):
        return obj.item()
    return obj
