"""Inference backends: PyTorch or ONNX Runtime, chosen by name, and the network loaded for one.

    net, info = load_network("PET-MRI")                              # default model, backend "auto"
    net, info = load_network(model="ecfusion-v1.pet-mri", backend="onnxruntime")
    fused, engine_info = engine.fuse_volume(net, second_u8, mri_u8)

"auto" (``tasks.BACKENDS``) = ONNX Runtime on the CPU (``scripts/benchmark.py``: as fast as torch's bf16 path on
a CPU with AMX, faster than its fp32 path, and fp32-exact; the README has the numbers), torch for a GPU or bf16;
whichever of the two is installed when only one is. Both read the same checked
weights file (``weights.read_weights_file``); ONNX Runtime runs the architecture's shipped graph
(``onnx_backend``). Nothing here imports torch unless the torch backend is used.
"""
from __future__ import annotations

import importlib.util
import os
import shutil
from pathlib import Path

from .errors import ECFusionError
from .tasks import BACKENDS, check_choice

INSTALL_HINT = {"torch": "pip install torch (see the README for the CPU or CUDA build)",
                "onnxruntime": "pip install onnxruntime"}


def installed(backend: str) -> bool:
    """True when the backend's package can be imported (checked without importing it)."""
    try:
        return importlib.util.find_spec(backend) is not None
    except (ImportError, ValueError):  # a package blocked with sys.modules[name] = None
        return False


def nvidia_gpu() -> bool:
    """True when an NVIDIA driver is present (checked without importing torch)."""
    return os.path.exists("/proc/driver/nvidia/version") or shutil.which("nvidia-smi") is not None


def resolve_backend(backend: str = "auto", device: str = "auto", precision: str = "auto") -> str:
    """The backend to use for a name of ``tasks.BACKENDS``: "torch" or "onnxruntime".

    "auto" (module docstring): torch for ``device`` "cuda", for "auto" where an NVIDIA GPU is present, and for
    ``precision`` "bf16"; ONNX Runtime otherwise; the installed one when only one is.
    Raises:
        ECFusionError: unknown name, or the backend (for "auto": both) is not installed.
    """
    check_choice(backend, BACKENDS, "backend")
    if backend == "auto":
        have = [name for name in BACKENDS[1:] if installed(name)]
        if not have:
            raise ECFusionError("neither PyTorch nor ONNX Runtime is installed: pip install onnxruntime (CPU, tens "
                                "of MB) or PyTorch")
        gpu_or_bf16 = precision == "bf16" or str(device).startswith("cuda") or (device == "auto" and nvidia_gpu())
        return "torch" if "torch" in have and (gpu_or_bf16 or len(have) == 1) else "onnxruntime"
    if not installed(backend):
        raise ECFusionError(f"backend {backend} was asked for but it is not installed: {INSTALL_HINT[backend]}, or "
                            "use --backend auto")
    return backend


def model_backends(architecture: str) -> dict[str, str]:
    """For each backend, whether a network of ``architecture`` can run on it here: {backend: "yes" or why not}."""
    from .onnx_backend import graph_path

    torch_state = "yes" if installed("torch") else "not installed"
    if torch_state == "yes":
        from .registry import model_names

        torch_state = "yes" if architecture in model_names() else "architecture not registered"
    ort_state = "yes" if graph_path(architecture).is_file() else "no ONNX graph shipped"
    if ort_state == "yes" and not installed("onnxruntime"):
        ort_state = "not installed"
    return {"torch": torch_state, "onnxruntime": ort_state}


def load_network(task: str | None = None, weights: str | Path | None = None, model: str | None = None,
                 backend: str = "auto", device: str = "auto", precision: str = "auto"):
    """The network for a task's default model, a bundled ``model`` or a ``weights`` file, on ``backend``.

    Args:
        task, weights, model: as ``weights.load_model``.
        backend: one of ``tasks.BACKENDS`` ("auto": ``resolve_backend`` with ``device`` and ``precision``).
        device: for ONNX Runtime, the device its session runs on (the torch network is placed by the engine).
        precision: the precision asked for (``tasks.PRECISIONS``; only chooses the backend here).
    Returns:
        (network, info): a torch network in eval mode or an ``onnx_backend.OnnxNetwork``; info = {"weights",
        "sha256", "architecture", "model", "backend"}.
    Raises:
        WeightsError: as ``weights.load_model``; ECFusionError: the backend is not installed.
    """
    chosen = resolve_backend(backend, device, precision)
    if chosen == "torch":
        from .weights import load_model

        net, info = load_model(task, weights, model)
        return net, {**info, "backend": chosen}
    from .onnx_backend import OnnxNetwork
    from .weights import model_entry, read_weights_file, resolve_weights, sha256

    path, expected, name = resolve_weights(task, weights, model)
    wf = read_weights_file(path, expected)
    if name and model_entry(name).get("architecture", wf.architecture) != wf.architecture:
        raise ECFusionError(f"{path} holds {wf.architecture} weights but the catalogue lists another; reinstall ECFusion")
    net = OnnxNetwork.load(wf, device)
    return net, {"weights": str(path), "sha256": expected or sha256(path), "architecture": wf.architecture,
                 "model": name, "backend": chosen}
