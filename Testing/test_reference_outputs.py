"""Outputs unchanged by restructuring: the network and the engine against golden outputs saved before it.

``Testing/data/reference_outputs_seeded.npz`` (seeded random weights, ``helpers.seeded_network``: no weights file,
so a weights release leaves it alone) and ``reference_outputs_pet-mri.npz`` (the bundled PET-MRI weights; skipped
once other weights are bundled) hold, for fixed 8-bit inputs (5 slices of 40 x 56 with an all-air slice), the
reference forward pass and the fused CPU path on two slices (float32), and ``fuse_volume`` with the fast path in
fp32 (batch auto and 1), the plain path, and precision "auto". Made by ``Testing/data/make_reference_outputs.py``
(its docstring says at which commits). On the machine and torch build that made them (fingerprint in the .json
beside each, 2 threads) every array must be equal bit for bit; elsewhere (other CPU kernels) to within float
rounding (1e-4 for the network, 1 grey level for the engine).
"""
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from ECFusionLib.engine import cpu_has_bf16, fuse_volume, make_runner
from helpers import state_digest

DATA = Path(__file__).resolve().parent / "data"
sys.path.insert(0, str(DATA))
from make_reference_outputs import RUNS, as_tensor, fingerprint  # noqa: E402


@pytest.fixture(scope="module", params=["seeded", "pet-mri"])
def reference(request, seeded_model):
    """(model, saved arrays, exact?) for the seeded network and for the bundled PET-MRI weights."""
    made = json.loads((DATA / f"reference_outputs_{request.param}.json").read_text())
    if request.param == "seeded":
        model = seeded_model
    else:
        from ECFusionLib.weights import load_model

        model = load_model("PET-MRI")[0]
        if made.get("weights_digest") not in (None, state_digest(model)):
            pytest.skip("other PET-MRI weights are bundled than those the golden outputs were made with "
                        "(the seeded reference still guards the arithmetic)")
    exact = all(made[k] == v for k, v in fingerprint().items())
    return model, np.load(DATA / f"reference_outputs_{request.param}.npz"), exact


def test_forward_and_fused_path_are_unchanged(reference):
    model, ref, exact = reference
    with torch.no_grad():
        forward = model(as_tensor(ref["sec"]), as_tensor(ref["mri"])).numpy()
    fused = make_runner(model, device="cpu", precision="fp32")(as_tensor(ref["sec"]), as_tensor(ref["mri"])).numpy()
    for name, got in (("forward", forward), ("fast_forward", fused)):
        if exact:
            assert np.array_equal(got, ref[name]), name
        else:
            assert np.abs(got - ref[name]).max() < 1e-4, name


@pytest.mark.parametrize("name", list(RUNS))
def test_engine_outputs_are_unchanged(reference, name):
    model, ref, exact = reference
    if name == "fast_auto" and not (exact and cpu_has_bf16()):
        pytest.skip("precision auto is bf16 only on CPUs with native bf16; saved on such a machine")
    got, _ = fuse_volume(model, ref["sec"], ref["mri"], device="cpu", **RUNS[name])
    if exact:
        assert np.array_equal(got, ref[name]), name
    else:
        assert np.abs(got.astype(int) - ref[name].astype(int)).max() <= 1, name
