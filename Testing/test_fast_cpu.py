"""The CPU inference path (the network's fused path on oneDNN kernels) against the reference forward pass."""
import pytest
import torch
import torch.nn.functional as F

from ECFusionLib.engine import cpu_has_bf16
from ECFusionLib.fast_cpu import bilinear_matrix
from ECFusionLib.network import FusedECFusion, fold_sum_channels, sobel_xy


def _pair(b, h, w, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(b, 1, h, w, generator=g) * 2 - 1, torch.rand(b, 1, h, w, generator=g) * 2 - 1


@pytest.mark.parametrize("shape", [(1, 64, 64), (2, 45, 70), (1, 33, 17)])
def test_fp32_fast_path_equals_reference(seeded_model, shape):
    a, b = _pair(*shape)
    with torch.inference_mode():
        ref = seeded_model(a, b)
    fast = FusedECFusion(seeded_model, torch.float32)(a, b)
    assert fast.shape == ref.shape and fast.dtype == torch.float32
    assert (fast - ref).abs().max().item() * 127.5 < 0.01  # grey levels


def test_fast_path_without_onednn_kernels_equals_reference(seeded_model, monkeypatch):
    import ECFusionLib.fast_cpu as fc

    monkeypatch.setattr(fc, "_ONEDNN", False)  # builds without oneDNN: plain F.conv2d + activations
    a, b = _pair(1, 48, 40, seed=4)
    with torch.inference_mode():
        ref = seeded_model(a, b)
    assert (FusedECFusion(seeded_model, torch.float32)(a, b) - ref).abs().max().item() * 127.5 < 0.01


@pytest.mark.skipif(not cpu_has_bf16(), reason="bf16 is only used on CPUs with native bf16")
def test_bf16_fast_path_is_close_to_reference(seeded_model):
    a, b = _pair(2, 64, 96, seed=1)
    with torch.inference_mode():
        ref = seeded_model(a, b)
    err = (FusedECFusion(seeded_model, torch.bfloat16)(a, b) - ref).abs() * 127.5
    assert err.mean().item() < 1.0 and err.max().item() < 8


def test_folding_the_sum_channels_is_exact():
    conv = torch.nn.Conv2d(144, 72, 3, padding=1)
    x2, y2 = torch.randn(1, 3, 16, 8, 8).unbind(1), torch.randn(1, 3, 16, 8, 8).unbind(1)
    full = torch.cat([t for x, y in zip(x2, y2) for t in (torch.maximum(x, y), torch.minimum(x, y), x + y)], 1)
    half = torch.cat([t for x, y in zip(x2, y2) for t in (torch.maximum(x, y), torch.minimum(x, y))], 1)
    with torch.no_grad():
        assert torch.allclose(conv(full), fold_sum_channels(conv)(half), atol=1e-4)


@pytest.mark.parametrize("n_out,n_in", [(512, 32), (48, 3), (80, 5)])
def test_bilinear_matrix_matches_interpolate(n_out, n_in):
    x = torch.randn(1, 2, n_in, 7, dtype=torch.float64)
    ref = F.interpolate(x, size=(n_out, 7), mode="bilinear", align_corners=False)
    got = torch.einsum("oi,bcij->bcoj", bilinear_matrix(n_out, n_in, torch.float64), x)
    assert torch.allclose(ref, got, atol=1e-12)


def test_sobel_slices_equal_the_3x3_kernels():
    x = torch.randn(2, 1, 19, 23)
    kx = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]])
    ky = torch.tensor([[1.0, 2.0, 1.0], [0.0, 0.0, 0.0], [-1.0, -2.0, -1.0]])
    ref = F.conv2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), torch.stack([kx, ky]).unsqueeze(1))
    gx, gy = sobel_xy(x)
    assert torch.allclose(gx, ref[:, :1], atol=1e-5) and torch.allclose(gy, ref[:, 1:], atol=1e-5)


def test_cached_position_bias_follows_weight_changes(seeded_model):
    pos = seeded_model.cstf[0].attn_x.pos
    with torch.no_grad():
        before = pos(4, 4).clone()
        pos.table.add_(1.0)
        after = pos(4, 4)
        pos.table.sub_(1.0)
    assert torch.allclose(after, before + 1.0)
    with torch.no_grad():
        assert torch.allclose(pos(4, 4), before)
