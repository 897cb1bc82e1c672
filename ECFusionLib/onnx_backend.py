"""Inference with ONNX Runtime: fusing without PyTorch (numpy, SimpleITK and ``onnxruntime`` only).

An architecture's graph is shipped beside the weights (``weights/<architecture>.onnx``, made by
``scripts/export_onnx.py``; see ``onnx_export``). It holds no weights: its initializers are named like the
state-dict tensors and marked external, and ONNX Runtime takes their values from the ``.npz`` weights file
(``SessionOptions.add_external_initializers``), so the checked ``.npz`` is the only copy of the weights.

    net = OnnxNetwork.load(weights_file)             # a checked weights.WeightsFile
    fused = net(second, anatomical)                  # B x 1 x H x W float32 in [-1, 1] -> the same shape

Precision is fp32. Device: the CPU, or CUDA / DirectML where ``onnxruntime-gpu`` / ``onnxruntime-directml``
provide them ("auto" takes a GPU provider when there is one).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from .errors import ECFusionError, WeightsError
from .weights import WeightsFile, check_shapes, graph_file, sha256

# the graph's metadata, written by onnx_export
META_INITIALIZERS = "ecfusion.initializers"  # JSON {initializer name: shape}
META_ARCHITECTURE = "ecfusion.architecture"
META_MULTIPLE = "ecfusion.multiple"  # H and W given to the graph must be multiples of this (1: any)
GPU_PROVIDERS = {"cuda": "CUDAExecutionProvider", "directml": "DmlExecutionProvider"}
DEFAULT_THREADS: int | None = None  # intra-op threads of new sessions (None: ONNX Runtime's default, the cores)


def graph_path(architecture: str) -> Path:
    """The shipped graph of ``architecture`` (it may not exist)."""
    return graph_file(architecture)[0]


def available() -> bool:
    """True when ``onnxruntime`` can be imported."""
    import importlib.util

    return importlib.util.find_spec("onnxruntime") is not None


def providers_for(device: str) -> tuple[list[str], str]:
    """ONNX Runtime execution providers for a device name ("auto", "cpu", "cuda"): (providers, device used)."""
    import onnxruntime as ort

    have = ort.get_available_providers()
    if device == "cpu":
        return ["CPUExecutionProvider"], "cpu"
    for name, provider in GPU_PROVIDERS.items():
        if provider in have and device in ("auto", name):
            return [provider, "CPUExecutionProvider"], name
    if device == "auto":
        return ["CPUExecutionProvider"], "cpu"
    raise ECFusionError(f"device '{device}' was asked for but this ONNX Runtime has no GPU provider (it has "
                        f"{', '.join(have)}); install onnxruntime-gpu, or use device 'cpu' or 'auto'")


class OnnxNetwork:
    """A weights file run by ONNX Runtime with its architecture's graph; callable like the torch network on
    numpy arrays: (second, anatomical) B x 1 x H x W float32 in [-1, 1] -> fused B x 1 x H x W float32."""

    def __init__(self, weights: WeightsFile, graph: str | Path, device: str = "auto", threads: int | None = None,
                 graph_sha256: str | None = None):
        import onnxruntime as ort

        graph = Path(graph)
        if not graph.is_file():
            raise WeightsError(f"no ONNX graph for architecture '{weights.architecture}' ({graph}): run "
                               "scripts/export_onnx.py where torch is installed, or use --backend torch")
        if graph_sha256 is not None and sha256(graph) != graph_sha256:
            raise WeightsError(f"ONNX graph {graph} is corrupt: its SHA-256 does not match the catalogue's; "
                               "reinstall ECFusion")
        self.architecture, self.config, self.device_name = weights.architecture, weights.config, device
        self.providers, self.device = providers_for(device)
        options = ort.SessionOptions()
        # every slice's crop has its own size: memory patterns (planned per shape) only grow the arena here
        # (measured, 46 slices of the 1 mm head: peak RSS +800 MB with them, +560 MB without, no slower)
        options.enable_mem_pattern = False
        threads = threads or DEFAULT_THREADS
        if threads:
            options.intra_op_num_threads = int(threads)
        names = sorted(weights.arrays)
        self._values = [ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(weights.arrays[n], np.float32))
                        for n in names]  # kept alive: the session reads them
        options.add_external_initializers(names, self._values)
        try:
            self.session = ort.InferenceSession(graph.read_bytes(), options, providers=self.providers)
        except Exception as exc:  # noqa: BLE001 - ONNX Runtime raises its own exception types
            raise WeightsError(f"{weights.path} does not fit the ONNX graph {graph.name} of {weights.architecture} "
                               f"({str(exc).splitlines()[0][:200]}); re-export it with scripts/export_onnx.py") from exc
        meta = self.session.get_modelmeta().custom_metadata_map
        if meta.get(META_ARCHITECTURE) != weights.architecture:
            raise WeightsError(f"{graph} is the graph of '{meta.get(META_ARCHITECTURE)}', not of "
                               f"'{weights.architecture}'; re-export it with scripts/export_onnx.py")
        check_shapes(weights, {k: tuple(v) for k, v in json.loads(meta[META_INITIALIZERS]).items()},
                     f"the ONNX graph {graph.name}")
        self.multiple = int(meta.get(META_MULTIPLE, "1"))

    @classmethod
    def load(cls, weights: WeightsFile, device: str = "auto", threads: int | None = None) -> "OnnxNetwork":
        """The network of a read weights file, with the shipped graph of its architecture."""
        path, expected = graph_file(weights.architecture)
        return cls(weights, path, device, threads, expected)

    def __call__(self, second: np.ndarray, anatomical: np.ndarray) -> np.ndarray:
        a, (h, w) = pad_to_multiple(np.asarray(second, np.float32), self.multiple)
        b, _ = pad_to_multiple(np.asarray(anatomical, np.float32), self.multiple)
        fused = self.session.run(None, {"second": a, "anatomical": b})[0]
        return fused[..., :h, :w]


def pad_to_multiple(x: np.ndarray, multiple: int) -> tuple[np.ndarray, tuple[int, int]]:
    """``network.pad_to_multiple`` in numpy: B x C x H x W padded bottom/right to multiples of ``multiple`` by
    reflection where the pad is smaller than the side, else by replication. Returns (padded, (H, W))."""
    h, w = x.shape[-2:]
    ph, pw = (-h) % multiple, (-w) % multiple
    if ph or pw:
        mode = "reflect" if ph < h and pw < w else "edge"
        x = np.pad(x, ((0, 0), (0, 0), (0, ph), (0, pw)), mode=mode)
    return np.ascontiguousarray(x), (h, w)
