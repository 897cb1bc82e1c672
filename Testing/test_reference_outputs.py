"""Outputs unchanged by restructuring: the engine and the network against outputs saved before it.

Testing/data/reference_outputs_pet-mri.npz holds, for the bundled PET-MRI weights and fixed 8-bit inputs
(5 slices of 40 x 56 with an all-air slice), the outputs computed by the code at commit f1a4cb6 (before the
task/model registries): the reference forward pass and the fused CPU path on two slices (float32), and
``fuse_volume`` with the fast path in fp32 (batch auto and 1), the plain path, and precision "auto".
On the machine and torch build that made them (fingerprint in the .json beside it, 2 threads) every array must
be equal bit for bit; elsewhere (other CPU kernels) to within float rounding.
"""
import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from ECFusionLib.engine import cpu_has_bf16, fuse_volume, make_runner
from ECFusionLib.weights import load_model

DATA = Path(__file__).resolve().parent / "data"


def _fingerprint() -> dict:
    try:
        line = next(x for x in open("/proc/cpuinfo") if x.startswith("flags"))
    except (OSError, StopIteration):
        line = "flags:"
    flags = sorted(f for f in line.split(":")[1].split() if f.startswith(("avx", "amx", "fma", "sse")))
    return {"torch": torch.__version__, "cpu_flags": hashlib.sha256(" ".join(flags).encode()).hexdigest()[:16],
            "omp_threads": torch.get_num_threads()}


@pytest.fixture(scope="module")
def saved():
    ref = np.load(DATA / "reference_outputs_pet-mri.npz")
    made = json.loads((DATA / "reference_outputs_pet-mri.json").read_text())
    exact = all(made[k] == v for k, v in _fingerprint().items())
    return ref, exact


def _tensor(x: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(x[1:3]).float().div(127.5).sub(1.0)[:, None]


def test_forward_and_fused_path_are_unchanged(saved):
    ref, exact = saved
    model, _ = load_model("PET-MRI")
    with torch.no_grad():
        forward = model(_tensor(ref["sec"]), _tensor(ref["mri"])).numpy()
    fused = make_runner(model, device="cpu", precision="fp32")(_tensor(ref["sec"]), _tensor(ref["mri"])).numpy()
    for name, got in (("forward", forward), ("fast_forward", fused)):
        if exact:
            assert np.array_equal(got, ref[name]), name
        else:
            assert np.abs(got - ref[name]).max() < 1e-4, name


@pytest.mark.parametrize("name,kwargs", [("fast_fp32", {"precision": "fp32"}), ("plain", {"fast": False}),
                                         ("fast_fp32_b1", {"precision": "fp32", "batch_size": 1}),
                                         ("fast_auto", {})])
def test_engine_outputs_are_unchanged(saved, name, kwargs):
    ref, exact = saved
    if name == "fast_auto" and not (exact and cpu_has_bf16()):
        pytest.skip("precision auto is bf16 only on CPUs with native bf16; saved on such a machine")
    model, _ = load_model("PET-MRI")
    got, _ = fuse_volume(model, ref["sec"], ref["mri"], device="cpu", **kwargs)
    if exact:
        assert np.array_equal(got, ref[name])
    else:
        assert np.abs(got.astype(int) - ref[name].astype(int)).max() <= 1
