import pytest
import torch

from ECFusionLib.network import ECFusionNet, count_parameters, pad_to_multiple, sobel_magnitude


def test_parameter_count_matches_paper_budget():
    n = count_parameters(ECFusionNet())
    assert abs(n - 0.92e6) / 0.92e6 < 0.03
    assert n == 919_975  # the design spec's exact count


def test_module_budgets_follow_the_spec():
    m = ECFusionNet()
    assert count_parameters(m.eam) == 40_800
    assert count_parameters(m.cstf[0]) == 248_010
    assert count_parameters(m.cstf[0].hcel) == 236_392
    assert count_parameters(m.decoder) == 135_145


@pytest.mark.parametrize("size", [(181, 217), (512, 512), (37, 20), (5, 9)])
def test_any_slice_size_gives_same_size_output(seeded_model, size):
    a = torch.rand(1, 1, *size) * 2 - 1
    b = torch.rand(1, 1, *size) * 2 - 1
    with torch.inference_mode():
        f = seeded_model(a, b)
    assert f.shape == a.shape
    assert f.abs().max() <= 1.0 and torch.isfinite(f).all()


def test_padding_reflects_and_crops_back():
    x = torch.arange(20.0).reshape(1, 1, 4, 5)
    padded, (h, w) = pad_to_multiple(x, 16)
    assert padded.shape[-2:] == (16, 16) and (h, w) == (4, 5)
    assert torch.equal(padded[..., :4, :5], x)
    # never a constant pad: every padded value is a copy of an image value
    assert set(padded.unique().tolist()) <= set(x.unique().tolist())
    x2 = torch.rand(1, 1, 40, 30)
    p2, _ = pad_to_multiple(x2, 16)
    assert torch.equal(p2[..., 40, :30], x2[..., 38, :])  # reflection about the last row


def test_sobel_of_constant_is_zero_and_edge_is_found():
    flat = torch.zeros(1, 1, 8, 8)
    assert sobel_magnitude(flat).max() < 1e-2
    step = torch.zeros(1, 1, 8, 8)
    step[..., 4:] = 1.0
    g = sobel_magnitude(step)
    assert g[0, 0, 4, 3] > 3.9 and g[0, 0, 4, 0] < 1e-2


def test_batch_is_independent_per_slice(seeded_model):
    a = torch.rand(3, 1, 48, 64) * 2 - 1
    b = torch.rand(3, 1, 48, 64) * 2 - 1
    with torch.inference_mode():
        together = seeded_model(a, b)
        alone = torch.cat([seeded_model(a[i : i + 1], b[i : i + 1]) for i in range(3)])
    assert torch.allclose(together, alone, atol=1e-5)
