import json

import numpy as np
import pytest
import torch

from ECFusionLib import weights as W
from ECFusionLib.errors import WeightsError
from ECFusionLib.network import ECFusionNet


def test_round_trip_and_checksum(tmp_path, seeded_model):
    path = W.save_weights(seeded_model, tmp_path / "w.pt", {"task": "PET-MRI", "score": torch.tensor(1.5)})
    state = W.load_state_dict(path, W.sha256(path))
    model = ECFusionNet()
    model.load_state_dict(state)
    for k, v in seeded_model.state_dict().items():
        assert torch.equal(v, model.state_dict()[k])
    assert W.weights_meta(path) == {"task": "PET-MRI", "score": 1.5}
    with pytest.raises(WeightsError, match="corrupt"):
        W.load_state_dict(path, "0" * 64)


def test_wrong_architecture_and_shapes_are_refused(tmp_path, seeded_model):
    state = {k: v.clone() for k, v in seeded_model.state_dict().items()}
    torch.save({"architecture": "something-else", "state_dict": state}, tmp_path / "a.pt")
    with pytest.raises(WeightsError, match="architecture"):
        W.load_state_dict(tmp_path / "a.pt")
    state["decoder.net.0.weight"] = torch.zeros(3, 3)
    torch.save({"architecture": "ecfusion-v1", "state_dict": state}, tmp_path / "b.pt")
    with pytest.raises(WeightsError, match="wrong shape"):
        W.load_state_dict(tmp_path / "b.pt")
    torch.save({"weights": 1}, tmp_path / "c.pt")
    with pytest.raises(WeightsError, match="not an ECFusion weights file"):
        W.load_state_dict(tmp_path / "c.pt")


def test_bundled_catalogue_is_consistent():
    cat = W.catalogue()
    for task, entry in cat.items():
        path = W.WEIGHTS_DIR / entry["file"]
        assert path.is_file(), f"{task}: {path} listed but missing"
        assert W.sha256(path) == entry["sha256"], f"{task}: checksum in catalogue.json is stale"
        model, info = W.load_model(task)
        assert info["sha256"] == entry["sha256"]


def test_missing_bundle_or_catalogue_entry_refuses_to_run(monkeypatch, tmp_path):
    monkeypatch.setattr(W, "CATALOGUE", tmp_path / "catalogue.json")
    with pytest.raises(WeightsError, match="no trained weights are bundled"):
        W.load_model("CT-MRI")
    (tmp_path / "catalogue.json").write_text(json.dumps({"CT-MRI": {"file": "gone.npz", "sha256": "0" * 64}}))
    monkeypatch.setattr(W, "WEIGHTS_DIR", tmp_path)
    with pytest.raises(WeightsError, match="missing"):
        W.load_model("CT-MRI")


def test_npz_weights_are_read_without_pickle_and_keep_the_tensor_checksum(tmp_path, seeded_model):
    """The .npz format: plain arrays + a JSON header, np.load(allow_pickle=False) reads every entry; the
    tensor checksum equals the one the torch format stores, and a file written twice has one SHA-256."""
    npz = W.save_weights(seeded_model, tmp_path / "w.npz", {"task": "PET-MRI", "score": torch.tensor(1.5)})
    pt = W.save_weights(seeded_model, tmp_path / "w.pt")
    with np.load(npz, allow_pickle=False) as z:
        header = json.loads(z[W.HEADER_KEY].tobytes())
        assert all(z[k].dtype == np.float32 for k in z.files if k != W.HEADER_KEY)
    assert header["architecture"] == "ecfusion-v1" and header["meta"] == {"task": "PET-MRI", "score": 1.5}
    assert header[W.CHECKSUM_KEY] == torch.load(pt, weights_only=True)[W.CHECKSUM_KEY]
    state = W.load_state_dict(npz)
    assert all(torch.equal(v, state[k]) for k, v in seeded_model.state_dict().items())
    again = W.save_weights(seeded_model, tmp_path / "again.npz", {"task": "PET-MRI", "score": 1.5})
    assert W.sha256(again) == W.sha256(npz)


def test_pt_files_need_torch_2_6_and_convert_to_identical_npz(tmp_path, seeded_model, monkeypatch):
    from convert_weights import main as convert

    pt = W.save_weights(seeded_model, tmp_path / "w.pt", {"epoch": 3})
    assert convert([str(pt)]) == 0
    npz = tmp_path / "w.npz"
    assert W.read_weights_file(npz).tensor_sha256 == W.read_weights_file(pt).tensor_sha256
    assert W.weights_meta(npz) == {"epoch": 3}
    monkeypatch.setattr(W, "torch_too_old", lambda version=None: True)  # e.g. torch 2.2.2, the last Intel-Mac build
    with pytest.raises(WeightsError, match="older than 2.6.*convert_weights"):
        W.load_state_dict(pt)
    W.load_state_dict(npz)  # the .npz needs no torch.load at all


def test_npz_that_is_not_weights_is_refused(tmp_path):
    np.savez(tmp_path / "other.npz", a=np.zeros(3))
    with pytest.raises(WeightsError, match="cannot be read"):
        W.read_weights_file(tmp_path / "other.npz")
    np.savez(tmp_path / "objects.npz", **{W.HEADER_KEY: np.frombuffer(b"{}", np.uint8)}, a=np.array([{}], dtype=object))
    with pytest.raises(WeightsError, match="cannot be read"):  # object arrays would need pickle: refused
        W.read_weights_file(tmp_path / "objects.npz")


def test_catalogue_lists_models_by_name_with_a_default_per_task():
    models = W.models()
    assert set(models) == {"ecfusion-v1.ct-mri", "ecfusion-v1.pet-mri", "ecfusion-v1.spect-mri"}
    for name, entry in models.items():
        assert entry["file"].endswith(".npz") and W.default_model(entry["task"]) == name
        assert W.read_weights_file(W.WEIGHTS_DIR / entry["file"], entry["sha256"]).tensor_sha256 == entry["tensor_sha256"]
    assert not list(W.WEIGHTS_DIR.glob("*.pt"))  # one copy of the weights: the .npz
    _, info = W.load_model(model="ecfusion-v1.pet-mri")
    assert info["model"] == "ecfusion-v1.pet-mri" and info["sha256"] == models["ecfusion-v1.pet-mri"]["sha256"]
    with pytest.raises(WeightsError, match="is for PET-MRI, not CT-MRI"):
        W.load_model("CT-MRI", model="ecfusion-v1.pet-mri")
    with pytest.raises(WeightsError, match="unknown model 'nope'.*ecfusion-v1.ct-mri"):
        W.load_model("CT-MRI", model="nope")


def test_npz_with_changed_tensors_fails_its_stored_checksum(tmp_path, seeded_model):
    good = W.save_weights(seeded_model, tmp_path / "w.npz")
    with np.load(good, allow_pickle=False) as z:
        entries = {k: z[k].copy() for k in z.files}
    entries["decoder.net.0.weight"][0, 0, 0, 0] += 1e-3  # a valid zip whose tensors no longer match the header
    np.savez(tmp_path / "changed.npz", **entries)
    with pytest.raises(WeightsError, match="checksum stored inside"):
        W.read_weights_file(tmp_path / "changed.npz")
