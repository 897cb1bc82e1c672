"""The ONNX Runtime backend: the shipped graph holds no weights (ONNX Runtime reads them from the checked
.npz), it is the current export of the architecture, it gives the torch network's output, and a process
without torch fuses (torch imports blocked) within a grey level of the torch backend."""
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from ECFusionLib import backends, weights as W
from ECFusionLib.engine import fuse_volume, make_runner
from ECFusionLib.errors import ECFusionError
from ECFusionLib.onnx_backend import OnnxNetwork, graph_path

onnx = pytest.importorskip("onnx")
ROOT = Path(__file__).resolve().parents[1]


def test_shipped_graph_takes_every_weight_from_the_npz():
    proto = onnx.load(str(graph_path("ecfusion-v1")), load_external_data=False)
    wf = W.read_weights_file(*W.bundled_weights("PET-MRI"))
    external = {i.name: list(i.dims) for i in proto.graph.initializer
                if i.data_location == onnx.TensorProto.EXTERNAL and not i.raw_data}
    assert external == {k: list(v.shape) for k, v in wf.arrays.items()}  # every tensor, by name, and nothing else
    embedded = [i for i in proto.graph.initializer if i.name not in external]
    assert sum(np.prod(i.dims) for i in embedded) < 100  # only graph constants, no weights
    dims = {d.dim_param for d in proto.graph.input[0].type.tensor_type.shape.dim}
    assert {"batch", "height", "width"} <= dims


def test_shipped_graph_is_the_current_export(tmp_path):
    from ECFusionLib.onnx_export import export_graph

    fresh = export_graph("ecfusion-v1", tmp_path / "g.onnx")
    assert W.sha256(fresh) == W.sha256(graph_path("ecfusion-v1")), "run scripts/export_onnx.py"


@pytest.mark.parametrize("shape", [(2, 1, 64, 80), (1, 1, 37, 50), (1, 1, 12, 70)])
def test_onnx_network_equals_the_torch_network(shape):
    """Any H, W (the runner pads as the network does: reflection, or replication for small sides)."""
    torch_net, _ = W.load_model("PET-MRI")
    ort_net, info = backends.load_network("PET-MRI", backend="onnxruntime", device="cpu")
    assert isinstance(ort_net, OnnxNetwork) and info["backend"] == "onnxruntime"
    rng = np.random.default_rng(0)
    a, b = (rng.uniform(-1, 1, shape).astype(np.float32) for _ in range(2))
    with torch.no_grad():
        expected = torch_net(torch.from_numpy(a), torch.from_numpy(b)).numpy()
    assert np.abs(ort_net(a, b) - expected).max() < 1e-4


def test_backend_choice_and_errors(monkeypatch):
    """auto, with both installed: ONNX Runtime on the CPU (the measured default), torch for CUDA or bf16."""
    monkeypatch.setattr(backends, "nvidia_gpu", lambda: False)
    assert backends.resolve_backend("auto") == backends.resolve_backend("auto", "cpu", "fp32") == "onnxruntime"
    assert backends.resolve_backend("auto", "cuda") == backends.resolve_backend("auto", "cpu", "bf16") == "torch"
    monkeypatch.setattr(backends, "nvidia_gpu", lambda: True)
    assert backends.resolve_backend("auto") == "torch" and backends.resolve_backend("auto", "cpu") == "onnxruntime"
    with pytest.raises(ECFusionError, match="unknown backend 'tf'"):
        backends.resolve_backend("tf")
    monkeypatch.setattr(backends, "installed", lambda name: name == "torch")
    assert backends.resolve_backend("auto", "cpu") == "torch"
    monkeypatch.setattr(backends, "installed", lambda name: name == "onnxruntime")
    assert backends.resolve_backend("auto", "cuda") == "onnxruntime"
    with pytest.raises(ECFusionError, match="backend torch was asked for but it is not installed"):
        backends.resolve_backend("torch")
    net, _ = backends.load_network("CT-MRI", backend="onnxruntime", device="cpu")
    with pytest.raises(ECFusionError, match="bf16 needs the torch backend"):
        make_runner(net, precision="bf16")


def test_user_weights_run_on_onnxruntime_and_a_wrong_graph_is_refused(tmp_path, weights_file):
    net, info = backends.load_network("PET-MRI", weights=weights_file, backend="onnxruntime", device="cpu")
    rng = np.random.default_rng(1)
    sec, mri = (rng.integers(0, 256, (3, 40, 56), dtype=np.uint8) for _ in range(2))
    ort, ort_info = fuse_volume(net, sec, mri)
    ref, _ = fuse_volume(W.load_model(weights=weights_file)[0], sec, mri, device="cpu", precision="fp32")
    assert ort_info.backend == "onnxruntime" and ort_info.precision == "fp32"
    assert np.abs(ort.astype(int) - ref.astype(int)).max() <= 1
    small = W.save_weights(W.create_model("ecfusion-v1", width=8), tmp_path / "small.npz")
    with pytest.raises(W.WeightsError, match="does not fit the ONNX graph"):
        backends.load_network("PET-MRI", weights=small, backend="onnxruntime")


NO_TORCH = """
import sys
sys.modules["torch"] = None  # any `import torch` now fails
from ECFusionLib.cli import main
codes = [main(sys.argv[1:]), main(["models"])]
codes.append(main([*sys.argv[1:-2], "--output", "t.nrrd", "--backend", "torch"]))  # a clear error, exit 2
print("CODES", codes, sorted(m for m in sys.modules if m.split(".")[0] == "torch" and sys.modules[m] is not None))
"""


def test_fuse_without_torch_matches_the_torch_backend(tmp_path, phantom_files, monkeypatch):
    """A process in which torch cannot be imported fuses on ONNX Runtime (auto), relative paths from the
    user's folder; its output is within a grey level of the torch fp32 output."""
    mri, pet = (Path(phantom_files[k]) for k in ("MRI", "PET"))
    for p in (mri, pet):
        (tmp_path / p.name).write_bytes(p.read_bytes())
    argv = ["fuse", "--anatomical", mri.name, "--functional", pet.name, "--task", "PET-MRI", "--quiet",
            "--output", "ort.nrrd"]
    done = subprocess.run([sys.executable, "-c", NO_TORCH, *argv], cwd=tmp_path, capture_output=True, text=True,
                          env={"PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "2", "PATH": "/usr/bin:/bin"})
    assert "CODES [0, 0, 2] []" in done.stdout, done.stdout + done.stderr
    assert "backend torch was asked for but it is not installed" in done.stderr and "Traceback" not in done.stderr
    from ECFusionLib.cli import main

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("OMP_WAIT_POLICY", "PASSIVE")  # the CLI tunes its process; keep the test's as it was
    assert main([*argv[:-1], str(tmp_path / "torch.nrrd"), "--precision", "fp32", "--backend", "torch"]) == 0
    ort, ref = (sitk.ReadImage(str(tmp_path / n)) for n in ("ort.nrrd", "torch.nrrd"))
    diff = np.abs(sitk.GetArrayFromImage(ort).astype(int) - sitk.GetArrayFromImage(ref).astype(int))
    assert diff.mean() < 1 and diff.max() <= 2
    assert ort.GetMetaData("ECFusion_backend") == "onnxruntime" and ref.GetMetaData("ECFusion_backend") == "torch"
    assert ort.GetMetaData("ECFusion_model") == "ecfusion-v1.pet-mri"
