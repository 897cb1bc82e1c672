"""The task and model registries, the engine running any registered architecture, and no hidden
process-wide effects."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from ECFusionLib import cli, registry, tasks
from ECFusionLib import weights as W
from ECFusionLib.engine import fuse_volume, make_runner
from ECFusionLib.errors import ECFusionError, WeightsError
from ECFusionLib.network import POSITION_CACHE, ECFusionNet, FusedECFusion
from helpers import random_volumes

ROOT = Path(__file__).resolve().parents[1]


class TinyFusion(nn.Module):
    """Tiny test architecture: a 3x3 conv over both images, ReLU, a 1x1 conv, tanh."""

    def __init__(self, width: int = 4):
        super().__init__()
        self.config = {"width": width}
        self.conv = nn.Conv2d(2, width, 3, padding=1)
        self.out = nn.Conv2d(width, 1, 1)

    def forward(self, second: torch.Tensor, anatomical: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.out(torch.relu(self.conv(torch.cat([second, anatomical], 1)))))


@pytest.fixture
def tiny():
    """TinyFusion registered as "tiny-test" (the one registration line), removed afterwards."""
    registry.register_model("tiny-test")(TinyFusion)
    yield "tiny-test"
    registry.unregister_model("tiny-test")


def _vols(shape=(4, 24, 28), seed=0):
    return random_volumes(shape, seed)


def test_second_architecture_goes_through_create_model_loader_engine_and_cli(tiny, tmp_path, monkeypatch, capsys):
    torch.manual_seed(0)
    model = registry.create_model(tiny, width=3)
    assert isinstance(model, TinyFusion) and model.conv.out_channels == 3 and model.architecture == tiny
    path = W.save_weights(model, tmp_path / "tiny.pt", {"note": "tiny"})

    loaded, info = W.load_model(weights=path)  # the loader builds the architecture the file names
    assert isinstance(loaded, TinyFusion) and loaded.conv.out_channels == 3 and info["architecture"] == tiny
    assert all(torch.equal(v, loaded.state_dict()[k]) for k, v in model.state_dict().items())

    # the engine runs it with its plain forward pass (no fused path for this architecture)
    sec, anat = _vols()
    runner = make_runner(loaded, device="cpu")
    assert runner.model is not loaded and not isinstance(runner.predict, FusedECFusion)
    fused, engine_info = fuse_volume(loaded, sec, anat, device="cpu", fast=False)
    with torch.no_grad():
        t = lambda x: torch.from_numpy(x).float().div(127.5).sub(1.0)[:, None]  # noqa: E731
        expected = ((model(t(sec), t(anat))[:, 0] + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).numpy()
    assert np.array_equal(fused, expected) and engine_info.precision == "fp32"
    fast, _ = fuse_volume(loaded, sec, anat, device="cpu")  # air skipping + autocast where bf16 is native
    assert fast.shape == sec.shape and np.abs(fast.astype(int) - expected.astype(int)).mean() < 2

    # bundled for a task: the catalogue names the architecture; `ecfusion models` lists both
    (tmp_path / "catalogue.json").write_text(json.dumps({"PET-MRI": {
        "file": "tiny.pt", "sha256": W.sha256(path), "architecture": tiny, "source": "test fixture"}}))
    monkeypatch.setattr(W, "CATALOGUE", tmp_path / "catalogue.json")
    monkeypatch.setattr(W, "WEIGHTS_DIR", tmp_path)
    bundled, info = W.load_model("PET-MRI")
    assert isinstance(bundled, TinyFusion) and info["sha256"] == W.sha256(path)
    monkeypatch.setenv("OMP_WAIT_POLICY", "PASSIVE")  # the CLI tunes its process; keep the test's as it was
    assert cli.main(["models"]) == 0
    out = capsys.readouterr().out
    assert "ecfusion-v1" in out and "919,975" in out
    assert "tiny-test" in out and "Tiny test architecture" in out
    assert W.sha256(path) in out and "test fixture" in out and "PET-MRI" in out

    # a catalogue that names another architecture than the file is refused
    (tmp_path / "catalogue.json").write_text(json.dumps({"PET-MRI": {
        "file": "tiny.pt", "sha256": W.sha256(path), "architecture": "ecfusion-v1"}}))
    with pytest.raises(WeightsError, match="catalogue lists"):
        W.load_model("PET-MRI")


def test_unknown_architecture_and_bad_arguments_are_clear_errors(tmp_path, seeded_model):
    with pytest.raises(ECFusionError, match="unknown network architecture 'nope'.*ecfusion-v1"):
        registry.create_model("nope")
    with pytest.raises(ECFusionError, match="cannot be built"):
        registry.create_model("ecfusion-v1", depth=3)
    blob = {"architecture": "not-registered", "state_dict": seeded_model.state_dict()}
    torch.save(blob, tmp_path / "x.pt")
    with pytest.raises(WeightsError, match="architecture 'not-registered'"):
        W.load_model(weights=tmp_path / "x.pt")
    with pytest.raises(ValueError, match="already registered"):
        registry.register_model("ecfusion-v1")(TinyFusion)


def test_widths_are_constructor_arguments_saved_with_the_weights(tmp_path):
    torch.manual_seed(3)
    small = registry.create_model("ecfusion-v1", width=8, decoder_widths=(16, 8, 4)).eval()
    assert small.decoder.convs[0].in_channels == 3 * 3 * 8 and small.eam.head[0].out_channels == 8
    loaded, _ = W.load_model(weights=W.save_weights(small, tmp_path / "small.pt"))
    assert loaded.config == small.config
    g = torch.Generator().manual_seed(1)
    a, b = torch.rand(2, 1, 40, 36, generator=g) * 2 - 1, torch.rand(2, 1, 40, 36, generator=g) * 2 - 1
    with torch.inference_mode():
        ref = small(a, b)
        assert torch.equal(loaded(a, b), ref)
    # the fused CPU path follows the widths (the decoder folding included)
    assert (FusedECFusion(small, torch.float32)(a, b) - ref).abs().max().item() * 127.5 < 0.01


def test_engine_leaves_the_callers_model_alone(seeded_model):
    model = ECFusionNet()
    model.load_state_dict(seeded_model.state_dict())
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    sec, anat = _vols((2, 32, 32))
    for fast in (True, False):
        fuse_volume(model, sec, anat, device="cpu", fast=fast)
    assert model.training  # not switched to eval mode
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    assert all(m.training for m in model.modules())
    with pytest.raises(ValueError, match="inference"):
        FusedECFusion(model)  # the fused path refuses a model in training mode instead of changing it


def test_position_bias_caches_are_bounded(seeded_model):
    pos = make_runner(seeded_model, device="cpu", fast=False).model.cstf[0].attn_x.pos
    for h in range(1, POSITION_CACHE + 5):
        pos.index(h, 2, torch.device("cpu"))
    assert len(pos._cache) == POSITION_CACHE
    assert (POSITION_CACHE + 4, 2, "cpu") in pos._cache and (1, 2, "cpu") not in pos._cache


def test_task_registry_is_the_one_source():
    assert tasks.TASK_NAMES == ("CT-MRI", "PET-MRI", "SPECT-MRI")
    assert tasks.check_task("pet-mri") == "PET-MRI" and tasks.second_modality("SPECT-MRI") == "SPECT"
    with pytest.raises(ECFusionError, match="unknown task 'XR-MRI'.*CT-MRI, PET-MRI, SPECT-MRI"):
        tasks.check_task("XR-MRI")
    assert tasks.detect_task("PT") == "PET-MRI" and tasks.detect_task("nm") == "SPECT-MRI"
    assert tasks.detect_task("CT", "fdg pet") == "CT-MRI"  # the DICOM modality wins over the name
    assert tasks.detect_task(None, "Brain_FDG-PET") == "PET-MRI"
    assert tasks.detect_task("", "DaTscan 2") == "SPECT-MRI" and tasks.detect_task(name="head CT") == "CT-MRI"
    assert tasks.detect_task("MR", "t1_mprage") is None and tasks.detect_task(name="petrous") is None
    from ECFusionLib.colour import DEFAULT_COLORMAP
    from ECFusionLib.intensity import DEFAULT_CT_LEVEL, DEFAULT_CT_WINDOW

    assert DEFAULT_COLORMAP == {"PET": "PET-Heat", "SPECT": "PET-Rainbow2"}
    assert (DEFAULT_CT_WINDOW, DEFAULT_CT_LEVEL) == (150.0, 40.0)
    assert tasks.FUNCTIONAL_TASKS == {"PET-MRI", "SPECT-MRI"}
    # the command line's choices are the registry's vocabularies
    fuse = next(a for a in cli.build_parser()._subparsers._group_actions[0].choices["fuse"]._actions
                if a.dest == "device")
    assert tuple(fuse.choices) == tasks.DEVICES
    with pytest.raises(ECFusionError, match="unknown precision 'fp16'.*auto, fp32, bf16"):
        tasks.check_choice("fp16", tasks.PRECISIONS, "precision")


PROBE = r"""
import ctypes, json, os, sys
loaded = []
class Recording(ctypes.CDLL):
    def __init__(self, name, *args, **kwargs):
        loaded.append(str(name))
        super().__init__(name, *args, **kwargs)
ctypes.CDLL = Recording
before = dict(os.environ)
import_only = sys.argv[1] == "import"
import ECFusionLib, ECFusionLib.tasks, ECFusionLib.registry
torch_after_light_imports = "torch" in sys.modules
import numpy as np
import ECFusionLib.cli, ECFusionLib.engine, ECFusionLib.fusion, ECFusionLib.network, ECFusionLib.weights
from ECFusionLib import runtime
if not import_only:
    import torch
    torch.manual_seed(0)
    model = ECFusionLib.network.ECFusionNet()
    x = np.full((2, 32, 32), 100, np.uint8)
    ECFusionLib.engine.fuse_volume(model, x, x, device="cpu")
    ECFusionLib.engine.fuse_volume(model, x, x, device="cpu", fast=False)
state = {"environ_unchanged": dict(os.environ) == before, "libc_loaded": any("libc." in n for n in loaded),
         "allocator_tuned": runtime._ALLOCATOR_TUNED, "torch_after_light_imports": torch_after_light_imports}
runtime.tune_cpu()  # positive control: the explicit call does change the process
state["after_tune_env"] = os.environ.get("OMP_WAIT_POLICY")
state["after_tune_libc"] = any("libc." in n for n in loaded)
print(json.dumps(state))
"""


@pytest.mark.parametrize("mode", ["import", "library-calls"])
def test_importing_and_calling_the_library_changes_nothing_process_wide(mode):
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    res = subprocess.run([sys.executable, "-c", PROBE, mode], env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    state = json.loads(res.stdout.strip().splitlines()[-1])
    assert state["environ_unchanged"] and not state["libc_loaded"] and not state["allocator_tuned"]
    assert not state["torch_after_light_imports"]  # task and model registries import without torch
    assert state["after_tune_env"] == "PASSIVE"
    assert state["after_tune_libc"] == sys.platform.startswith("linux")
