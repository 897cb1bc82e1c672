"""Network weights: the bundled model catalogue (with SHA-256 checksums), reading with checks, saving.

A weights file is an uncompressed ``.npz`` read with ``numpy.load(allow_pickle=False)`` (no code can run from
it, whatever the torch version, and no torch is needed to read it):
- one float32 array per tensor of the network's state dict, under its name ("eam.head.0.weight", ...);
- ``HEADER_KEY``: a JSON header as a uint8 array: {"format": 1, "architecture": "ecfusion-v1", "config": {...},
  "meta": {...}, "tensor_sha256": "..."}: the architecture's registered name (``registry``) and its constructor
  arguments (widths), so that the loader builds the network the file was made for.
``tensor_sha256`` (``array_checksum``) is a SHA-256 of every tensor's name, dtype, shape and bytes, written by
``save_weights`` and verified on load: a flipped byte is refused (WeightsError, exit 3). Files without it load
with a warning that they are unverified. Bundled files are also checked against the catalogue's file SHA-256.
Older ``.pt`` files (a ``torch.save`` dict with the same entries and a "state_dict") are still read, with
``torch.load(weights_only=True)``, but only with torch >= 2.6 (older versions have published bypasses);
``scripts/convert_weights.py`` turns them into ``.npz``.

The catalogue (``weights/catalogue.json``) lists the bundled models by name ("ecfusion-v1.pet-mri": task,
architecture, file, sha256, ...), the default model of each task (``models``, ``default_model``) and the
ONNX graph of each architecture with its SHA-256 (``graph_file``; the graphs hold no weights: ``onnx_backend``).
"""
from __future__ import annotations

import hashlib
import io
import json
import logging
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .errors import ECFusionError, WeightsError
from .registry import architecture_of, create_model
from .runtime import TORCH_MINIMUM
from .safe_files import atomic_write, sha256_files
from .tasks import check_task

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
CATALOGUE = WEIGHTS_DIR / "catalogue.json"
CHECKSUM_KEY = "tensor_sha256"
HEADER_KEY = "__ecfusion__"  # the .npz entry holding the JSON header
FORMAT = 1
SUFFIX = ".npz"
# numpy dtype -> the torch dtype name hashed by ``array_checksum`` (the checksum predates the .npz format)
_TORCH_DTYPE_NAMES = {"float32": "torch.float32", "float64": "torch.float64", "float16": "torch.float16",
                      "int64": "torch.int64", "int32": "torch.int32", "uint8": "torch.uint8", "bool": "torch.bool"}
log = logging.getLogger(__name__)


@dataclass
class WeightsFile:
    """A read and checked weights file: the arrays (name -> float32 ndarray) and what they are for."""

    path: Path
    architecture: str
    config: dict
    arrays: dict[str, np.ndarray]
    meta: dict = field(default_factory=dict)
    tensor_sha256: str | None = None


def sha256(path: str | Path) -> str:
    """SHA-256 (hex) of a file's bytes."""
    return sha256_files([path])


def torch_too_old(version: str | None = None) -> bool:
    """True for torch < 2.6 (``torch.load(weights_only=True)`` bypasses were published for those)."""
    if version is None:
        import torch

        version = torch.__version__
    parts = version.split("+")[0].split(".")
    try:
        return (int(parts[0]), int(parts[1])) < TORCH_MINIMUM
    except (ValueError, IndexError):
        return False


def array_checksum(arrays: dict[str, np.ndarray]) -> str:
    """SHA-256 over named arrays, in name order: name, dtype (torch's name), shape, then the raw bytes (C order).
    Equal to ``tensor_checksum`` of the same tensors."""
    h = hashlib.sha256()
    for name in sorted(arrays):
        a = np.ascontiguousarray(arrays[name])
        dtype = _TORCH_DTYPE_NAMES.get(a.dtype.name, f"numpy.{a.dtype.name}")
        h.update(f"{name}|{dtype}|{tuple(a.shape)}|".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def tensor_checksum(state) -> str:
    """``array_checksum`` of a torch state dict (name -> tensor); bf16 tensors are hashed by their bytes."""
    import torch

    h = hashlib.sha256()
    for name in sorted(state):
        t = state[name].detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).clone().view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


# ---- the catalogue ---------------------------------------------------------------------------------------

def read_catalogue() -> dict:
    """{"models": {name: entry}, "defaults": {task: name}}; a catalogue in the older by-task layout
    ({task: entry}) is read as models named "<architecture>.<task in lower case>"."""
    if not CATALOGUE.is_file():
        return {"models": {}, "defaults": {}, "graphs": {}}
    data = json.loads(CATALOGUE.read_text())
    if "models" in data:
        return {"models": data["models"], "defaults": data.get("defaults", {}), "graphs": data.get("graphs", {})}
    models, defaults = {}, {}
    for task, entry in data.items():
        name = f"{entry.get('architecture', 'ecfusion-v1')}.{task.lower()}"
        models[name], defaults[task] = {**entry, "task": task}, name
    return {"models": models, "defaults": defaults, "graphs": {}}


def write_catalogue(models: dict, defaults: dict, graphs: dict) -> Path:
    """Write catalogue.json (release and export scripts): entries sorted, without their "name"."""
    from .safe_files import write_text_atomic

    data = {"defaults": dict(sorted(defaults.items())),
            "models": {k: {x: y for x, y in e.items() if x != "name"} for k, e in sorted(models.items())},
            "graphs": dict(sorted(graphs.items()))}
    return write_text_atomic(CATALOGUE, json.dumps(data, indent=2) + "\n")


def graph_file(architecture: str) -> tuple[Path, str | None]:
    """The shipped ONNX graph of ``architecture`` and its catalogue SHA-256 (None when not listed)."""
    entry = read_catalogue()["graphs"].get(architecture, {})
    return WEIGHTS_DIR / entry.get("file", f"{architecture}.onnx"), entry.get("sha256")


def models() -> dict[str, dict]:
    """The bundled models by name: {name: {"task", "architecture", "file", "sha256", "description", ...}}."""
    return {name: {**entry, "name": name} for name, entry in read_catalogue()["models"].items()}


def default_model(task: str) -> str:
    """The name of the bundled model used for ``task`` when none is named; WeightsError if there is none."""
    task = check_task(task)
    name = read_catalogue()["defaults"].get(task)
    if not name:
        raise WeightsError(
            f"no trained weights are bundled for {task}; train them with 'ecfusion train' or pass --weights PATH. "
            "Random weights are never used."
        )
    return name


def model_entry(name: str) -> dict:
    """The catalogue entry of the bundled model ``name``; WeightsError naming the known ones otherwise."""
    entries = models()
    if name not in entries:
        raise WeightsError(f"unknown model '{name}': bundled are {', '.join(sorted(entries)) or 'none'} "
                           "(see 'ecfusion models')")
    return entries[name]


def catalogue() -> dict:
    """{task: entry of its default model} (the entry has its "name")."""
    cat = read_catalogue()
    entries = models()
    return {task: entries[name] for task, name in cat["defaults"].items() if name in entries}


def bundled_weights(task: str | None = None, model: str | None = None) -> tuple[Path, str]:
    """Path and expected SHA-256 of a bundled model's weights: ``model`` by name, else the task's default.

    Raises:
        WeightsError: no such model, none for the task, the model is for another task, or its file is missing.
    """
    name = model or default_model(task)
    entry = model_entry(name)
    if task is not None and entry.get("task") not in (None, check_task(task)):
        raise WeightsError(f"model '{name}' is for {entry['task']}, not {check_task(task)}: choose one of "
                           f"{', '.join(n for n, e in models().items() if e.get('task') == check_task(task))}")
    path = WEIGHTS_DIR / entry["file"]
    if not path.is_file():
        raise WeightsError(f"bundled weights file of {name} is missing: {path}; reinstall ECFusion or pass --weights PATH")
    return path, entry["sha256"]


def task_of_model(model: str) -> str:
    """The task a bundled model was trained for."""
    return check_task(model_entry(model)["task"])


SUPPORTED = ("ECFusion weights files: .npz (written by 'ecfusion train', save_weights or "
             "scripts/convert_weights.py) and older ECFusion .pt files")


def check_weights_file(path: Path) -> None:
    """WeightsError for what cannot be a weights file: missing, a folder, empty, or a format ECFusion does not
    read (safetensors, ONNX, an image, an HTML page): says what it is and which format is needed."""
    from .file_kind import describe, sniff

    if path.is_dir():
        found = sorted(p.name for p in path.iterdir() if p.suffix in (".npz", ".pt"))
        hint = f"; it holds {', '.join(found[:5])}" if found else ""
        raise WeightsError(f"--weights {path} is a folder; give the weights file itself{hint}")
    if not path.is_file() and path.exists():
        raise WeightsError(f"--weights {path} is not a regular file (a pipe such as <(...), or a device): save the "
                           "weights to a file and give that file")
    if not path.is_file():
        raise WeightsError(f"weights file not found: {path}")
    kind = "onnx" if path.suffix.lower() == ".onnx" else sniff(path)
    if kind == "empty":
        raise WeightsError(f"weights file {path} is empty (0 bytes): the copy or download did not finish; copy it again")
    if kind not in (None, "zip", "pickle"):
        shown = "an ONNX model" if kind == "onnx" else describe(kind)
        raise WeightsError(f"weights file {path} is {shown}, a format ECFusion does not read: it reads {SUPPORTED}")


# ---- reading ---------------------------------------------------------------------------------------------

def is_npz_weights(path: str | Path) -> bool:
    """True when ``path`` is a zip archive holding the ``HEADER_KEY`` entry (the .npz weights format)."""
    try:
        with zipfile.ZipFile(path) as z:
            return f"{HEADER_KEY}.npy" in z.namelist()
    except (zipfile.BadZipFile, OSError):
        return False


def read_weights_file(path: str | Path, expected_sha256: str | None = None) -> WeightsFile:
    """Read and check a weights file (``.npz``, or a legacy ``.pt`` where torch >= 2.6 is installed).

    Args:
        path: the file.
        expected_sha256: its catalogue checksum (of the file's bytes), or None (not listed).
    Returns:
        The ``WeightsFile`` (arrays as float32). The tensor checksum inside, if any, has been verified.
    Raises:
        WeightsError: missing, corrupt, not a weights file, or a .pt file without a new enough torch.
    """
    path = Path(path)
    check_weights_file(path)
    if expected_sha256 is not None:
        actual = sha256(path)
        if actual != expected_sha256:
            raise WeightsError(f"weights file {path} is corrupt: SHA-256 {actual[:12]}... does not match the catalogue's {expected_sha256[:12]}...")
    wf = _read_npz(path) if path.suffix == SUFFIX or is_npz_weights(path) else _read_pt(path)
    if wf.tensor_sha256 is not None and array_checksum(wf.arrays) != wf.tensor_sha256:
        raise WeightsError(f"weights file {path} is corrupt: its tensors do not match the checksum stored inside it "
                           "(the file was damaged after it was written); copy it again or re-export it")
    if wf.tensor_sha256 is None and expected_sha256 is None:
        log.warning("weights file %s carries no ECFusion checksum (written by another tool): it is loaded "
                    "unverified", path)
    return wf


def _bad(path: Path, why: str) -> WeightsError:
    return WeightsError(f"{path} is not an ECFusion weights file ({why})")


def _read_npz(path: Path) -> WeightsFile:
    try:
        with np.load(path, allow_pickle=False) as z:
            header = json.loads(z[HEADER_KEY].tobytes().decode())
            arrays = {k: z[k] for k in z.files if k != HEADER_KEY}
    except Exception as exc:  # noqa: BLE001 - any zip/npy/JSON failure means a bad file
        raise WeightsError(f"weights file {path} cannot be read ({type(exc).__name__}): it is corrupt or not an "
                           "ECFusion weights file") from exc
    if not isinstance(header, dict) or not isinstance(header.get("config", {}), dict):
        raise _bad(path, "its header is not a JSON object with a 'config' object")
    if header.get("format", FORMAT) > FORMAT:
        raise WeightsError(f"{path} is in weights format {header['format']}, newer than this ECFusion reads ({FORMAT}); update ECFusion")
    if not arrays or any(a.dtype.kind not in "fiub" for a in arrays.values()):
        raise _bad(path, "it holds no numeric tensors")
    return WeightsFile(path, str(header.get("architecture")), header.get("config") or {}, arrays,
                       header.get("meta") or {}, header.get(CHECKSUM_KEY))


def _read_pt(path: Path) -> WeightsFile:
    try:
        import torch
    except ImportError:
        raise WeightsError(f"{path} is a PyTorch (.pt) weights file, which needs PyTorch >= 2.6 to be read safely; "
                           "convert it to .npz with scripts/convert_weights.py where torch is installed") from None
    if torch_too_old():
        raise WeightsError(f"{path} is a PyTorch (.pt) weights file and PyTorch {torch.__version__} is older than 2.6: "
                           "its weights_only loading has published bypasses, so the file is not loaded. Convert it "
                           "to .npz with scripts/convert_weights.py (where torch >= 2.6 is installed)")
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unpickling failure means a bad file
        raise WeightsError(f"weights file {path} cannot be read ({type(exc).__name__}): it is corrupt or not an ECFusion weights file") from exc
    if not isinstance(blob, dict) or "state_dict" not in blob:
        raise _bad(path, "no 'state_dict' entry")
    state = blob["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise _bad(path, "its 'state_dict' does not hold tensors")
    config = blob.get("config") or {}
    if not isinstance(config, dict):
        raise _bad(path, "its 'config' entry is not a dict")
    stored = blob.get(CHECKSUM_KEY)
    if stored is not None and tensor_checksum(state) != stored:
        raise WeightsError(f"weights file {path} is corrupt: its tensors do not match the checksum stored inside it "
                           "(the file was damaged after it was written); copy it again or re-export it")
    arrays = {k: v.detach().float().cpu().numpy() for k, v in state.items()}
    return WeightsFile(path, str(blob.get("architecture")), config, arrays, blob.get("meta") or {},
                       array_checksum(arrays) if stored is not None else None)


def load_state_dict(path: str | Path, expected_sha256: str | None = None) -> dict:
    """Read and check a weights file; returns a torch state dict (fp32) for the network it names (``read_weights``)."""
    return read_weights(path, expected_sha256)[0]


def read_weights(path: str | Path, expected_sha256: str | None = None):
    """Read and check a weights file and build its network (needs torch).

    Returns:
        (state dict of fp32 tensors, a new network of the file's architecture and config, not yet loaded).
    Raises:
        WeightsError: as ``read_weights_file``; also an unknown architecture, or tensors that do not fit it.
    """
    import torch

    wf = read_weights_file(path, expected_sha256)
    try:
        model = create_model(wf.architecture, **wf.config)
    except ECFusionError as exc:
        raise WeightsError(f"{path} holds weights for architecture '{wf.architecture}' that this ECFusion "
                           f"cannot build: {exc}") from exc
    check_shapes(wf, {k: tuple(v.shape) for k, v in model.state_dict().items()}, f"the {wf.architecture} network")
    return {k: torch.from_numpy(np.array(v, np.float32)) for k, v in wf.arrays.items()}, model


def check_shapes(wf: WeightsFile, expected: dict[str, tuple], what: str) -> None:
    """WeightsError unless ``wf`` has exactly the tensors ``expected`` (name -> shape) of ``what``."""
    missing = sorted(set(expected) - set(wf.arrays))
    extra = sorted(set(wf.arrays) - set(expected))
    wrong = [k for k in expected if k in wf.arrays and tuple(wf.arrays[k].shape) != tuple(expected[k])]
    if missing or extra or wrong:
        raise WeightsError(f"{wf.path} does not fit {what}: missing {missing[:3]}, unexpected {extra[:3]}, "
                           f"wrong shape {wrong[:3]}")


def weights_meta(path: str | Path) -> dict:
    """The "meta" entry of a weights file (training epoch, scores, ...)."""
    return read_weights_file(path).meta


def has_checksum(path: str | Path) -> bool:
    """True when the weights file carries the tensor checksum of ``save_weights``."""
    return read_weights_file(path).tensor_sha256 is not None


def resolve_weights(task: str | None, weights: str | Path | None = None,
                    model: str | None = None) -> tuple[Path, str | None, str | None]:
    """Which file to load: (path, expected file SHA-256 or None, bundled model name or None).

    ``weights`` (a file) wins; else the bundled ``model``; else the task's default model."""
    if weights is not None:
        if model is not None:
            raise WeightsError("give either a weights file or a bundled model name, not both")
        return Path(weights), None, None
    name = model or default_model(task)
    path, expected = bundled_weights(task, name)
    return path, expected, name


def load_model(task: str | None = None, weights: str | Path | None = None, model: str | None = None):
    """The torch network a weights file names, in eval mode with its weights.

    Args:
        task: a task name; its default bundled model is used when neither ``weights`` nor ``model`` is given.
        weights: a weights file (any registered architecture).
        model: a bundled model's name (``models``), e.g. "ecfusion-v1.pet-mri".
    Returns:
        (model, info) with info = {"weights": path, "sha256": checksum, "architecture": name, "model": name or None}.
    Raises:
        WeightsError: no bundled weights for the task, an unknown model or one of another task, or a bad file.
    """
    path, expected, name = resolve_weights(task, weights, model)
    state, net = read_weights(path, expected)
    listed = model_entry(name).get("architecture", net.architecture) if name else net.architecture
    if listed != net.architecture:
        raise WeightsError(f"{path} holds {net.architecture} weights but the catalogue lists {listed}; reinstall ECFusion")
    net.load_state_dict(state)
    return net.eval(), {"weights": str(path), "sha256": expected or sha256(path), "architecture": net.architecture,
                        "model": name}


# ---- writing ---------------------------------------------------------------------------------------------

def write_weights_file(path: str | Path, architecture: str, config: dict, arrays: dict[str, np.ndarray],
                       meta: dict | None = None) -> Path:
    """Write an ``.npz`` weights file atomically, with the tensor checksum in its header. The bytes depend on
    the content only (sorted entries, fixed zip timestamps), so one set of weights gives one file SHA-256."""
    arrays = {k: np.ascontiguousarray(v, np.float32) for k, v in arrays.items()}
    header = {"format": FORMAT, "architecture": architecture, "config": _plain(config), "meta": _plain(meta or {}),
              CHECKSUM_KEY: array_checksum(arrays)}
    entries = {HEADER_KEY: np.frombuffer(json.dumps(header, sort_keys=True).encode(), np.uint8),
               **dict(sorted(arrays.items()))}

    def write(tmp: str) -> None:
        with zipfile.ZipFile(tmp, "w", zipfile.ZIP_STORED) as z:
            for name, array in entries.items():
                buf = io.BytesIO()
                np.lib.format.write_array(buf, array, allow_pickle=False)
                z.writestr(zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0)), buf.getvalue())

    return atomic_write(path, write)


def save_weights(model, path: str | Path, meta: dict | None = None) -> Path:
    """Save a torch model's weights atomically with its registered architecture and ``model.config`` (the
    constructor arguments) and the tensor checksum: as ``.npz`` when ``path`` ends in .npz, else in the
    legacy ``torch.save`` format (training checkpoints)."""
    architecture = architecture_of(model)
    state = {k: v.detach().float().cpu().contiguous() for k, v in model.state_dict().items()}
    config = getattr(model, "config", {})
    if Path(path).suffix == SUFFIX:
        return write_weights_file(path, architecture, config, {k: v.numpy() for k, v in state.items()}, meta)
    import torch

    blob = {"architecture": architecture, "config": _plain(config), "state_dict": state,
            "meta": _plain(meta or {}), CHECKSUM_KEY: tensor_checksum(state)}
    return atomic_write(path, lambda tmp: torch.save(blob, tmp))


def _plain(obj):
    """Make metadata plain (Python numbers, strings, lists, dicts) for JSON and weights_only loading."""
    if isinstance(obj, dict):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    if hasattr(obj, "item"):
        return obj.item()
    return obj
