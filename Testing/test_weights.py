import json

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
    (tmp_path / "catalogue.json").write_text(json.dumps({"CT-MRI": {"file": "gone.pt", "sha256": "0" * 64}}))
    monkeypatch.setattr(W, "WEIGHTS_DIR", tmp_path)
    with pytest.raises(WeightsError, match="missing"):
        W.load_model("CT-MRI")
