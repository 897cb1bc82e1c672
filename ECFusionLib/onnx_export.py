"""Export a registered architecture to an ONNX graph that holds no weights (needs torch and the ``onnx`` package).

The graph (``weights/<architecture>.onnx``) takes (second, anatomical) B x 1 x H x W float32 in [-1, 1] with
dynamic B, H, W (H and W multiples of the architecture's ``pad_multiple`` when it has ``forward_padded``:
the runner pads, see ``onnx_backend``) and returns the fused B x 1 x H x W. Every tensor of the state dict is an
initializer of the same name marked as external data: ONNX Runtime takes its values from the weights
``.npz`` at load time (``SessionOptions.add_external_initializers``), so the ``.npz`` stays the one copy of
the weights and its checksums cover what runs. The graph's metadata lists the architecture, its config and
every initializer's shape.

    python scripts/export_onnx.py            # every registered architecture, default config
"""
from __future__ import annotations

import io
import json
import warnings
from pathlib import Path

import torch

from .registry import create_model, model_names
from .safe_files import atomic_write
from .onnx_backend import META_ARCHITECTURE, META_INITIALIZERS, META_MULTIPLE, graph_path
from .weights import WEIGHTS_DIR

OPSET = 17
EXTERNAL_LOCATION = "weights.npz"  # a placeholder: the values come from the weights file at load time
META_CONFIG = "ecfusion.config"


def export_graph(architecture: str, path: str | Path | None = None, config: dict | None = None) -> Path:
    """Export ``architecture`` (built with ``config``, default widths otherwise) to ``path`` (default
    ``graph_path``), weights stripped (module docstring). Returns the path."""
    import onnx

    model = create_model(architecture, **(config or {})).eval()
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():  # distinct values: the exporter merges equal initializers (e.g. LayerNorm's ones)
        for tensor in model.state_dict().values():
            if tensor.is_floating_point():
                tensor.copy_(torch.randn(tensor.shape, generator=generator))
    multiple = 1
    if hasattr(model, "forward_padded"):
        model.forward = model.forward_padded  # trace the graph without the pad/crop (the runner pads)
        multiple = int(model.pad_multiple)
    side = max(multiple, 16)  # an example input; height and width stay dynamic in the graph
    x = torch.zeros(1, 1, 4 * side, 5 * side)
    names = ["second", "anatomical"]
    buf = io.BytesIO()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the tracer's notes on shape arithmetic (the sizes stay dynamic)
        torch.onnx.export(model, (x, x), buf, dynamo=False, input_names=names, output_names=["fused"],
                          dynamic_axes={n: {0: "batch", 2: "height", 3: "width"} for n in (*names, "fused")},
                          do_constant_folding=False, opset_version=OPSET)
    proto = onnx.load_from_string(buf.getvalue())
    shapes = _strip_weights(proto, model.state_dict())
    meta = {META_ARCHITECTURE: architecture, META_CONFIG: json.dumps(getattr(model, "config", config or {})),
            META_INITIALIZERS: json.dumps(shapes), META_MULTIPLE: str(multiple)}
    for key, value in meta.items():
        proto.metadata_props.add(key=key, value=value)
    path = Path(path) if path is not None else graph_path(architecture)
    return atomic_write(path, lambda tmp: Path(tmp).write_bytes(proto.SerializeToString()))


def _strip_weights(proto, state: dict) -> dict[str, list[int]]:
    """Turn every initializer named like a state-dict tensor into an external reference without data
    (checking first that it holds exactly that tensor); returns {name: shape}. Other initializers (constants
    of the graph) stay as they are."""
    import numpy as np
    from onnx import TensorProto, numpy_helper

    shapes = {}
    for init in proto.graph.initializer:
        if init.name not in state:
            continue
        expected = state[init.name].detach().float().numpy()
        if not np.array_equal(numpy_helper.to_array(init), expected):
            raise RuntimeError(f"ONNX initializer {init.name} does not hold the model's tensor")
        shapes[init.name] = list(expected.shape)
        init.ClearField("raw_data")
        init.ClearField("float_data")
        init.data_location = TensorProto.EXTERNAL
        del init.external_data[:]
        for key, value in (("location", EXTERNAL_LOCATION), ("offset", "0"), ("length", str(expected.nbytes))):
            init.external_data.add(key=key, value=value)
    missing = sorted(set(state) - set(shapes))
    if missing:
        raise RuntimeError(f"these tensors did not become ONNX initializers of their own name: {missing[:5]}")
    return shapes


def export_all(folder: str | Path = WEIGHTS_DIR) -> list[Path]:
    """Export every registered architecture (default config) into ``folder``."""
    return [export_graph(name, Path(folder) / graph_path(name).name) for name in model_names()]
