"""Fusion metrics on cases with known answers."""
import numpy as np
import pytest

from ECFusionLib import metrics as M


@pytest.fixture(scope="module")
def images():
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:128, 0:128]
    a = np.clip(128 + 80 * np.sin(x / 9.0) * np.cos(y / 13.0), 0, 255).round()
    b = np.zeros((128, 128))
    b[30:100, 20:90] = 200
    b = np.clip(b + rng.normal(0, 5, b.shape), 0, 255).round()
    noise = rng.integers(0, 256, (128, 128)).astype(float)
    return a, b, noise


def test_mi_of_identical_images_is_twice_the_entropy(images):
    a, _, _ = images
    h = M.en(a) * np.log(2)  # nats
    assert M.mi(a, a, a) == pytest.approx(2 * h, rel=1e-9)


def test_mi_of_independent_noise_is_near_zero():
    rng = np.random.default_rng(1)
    # 16 grey levels, so the histogram estimate's bias ((K-1)^2 / 2N) is negligible
    a, b, f = (rng.integers(0, 16, (256, 256)).astype(float) * 16 for _ in range(3))
    assert M.mi(a, b, f) < 0.01
    assert M.mi(a, b, a) == pytest.approx(np.log(16), abs=0.01)


def test_qabf_known_values(images):
    a, b, noise = images
    # F = A = B: every edge transferred perfectly: Qg(1) * Qa(1)
    perfect = 0.9994 / (1 + np.exp(-15 * 0.5)) * 0.9879 / (1 + np.exp(-22 * 0.2))
    assert M.qabf(a, a, a) == pytest.approx(perfect, rel=1e-6)
    assert M.qabf(a, b, noise) < 0.3
    assert M.qabf(a, b, np.maximum(a, b)) > M.qabf(a, b, (a + b) / 2)


def test_ssim_and_vif_bounds(images):
    a, b, noise = images
    assert M.ssim(a, a, a) == pytest.approx(1.0)
    assert M.ssim(a, b, noise) < 0.2
    assert M.vif(a, a, a) == pytest.approx(1.0, abs=1e-6)
    assert M.vif(a, b, noise) < 0.2


def test_constant_images_do_not_crash():
    c = np.full((64, 64), 100.0)
    z = np.zeros((64, 64))
    for name in ("MI", "Qabf", "VIF", "SSIM", "Qcb", "Qcv", "EN", "SD", "SF", "AG"):
        v = M.all_metrics(c, z, c, [name])[name]
        assert np.isfinite(v), name
    assert M.en(c) == 0 and M.sd(c) == 0 and M.sf(c) == 0 and M.ag(c) == 0
    assert M.qabf(z, z, z) == 0.0  # no edges anywhere (a constant non-zero image has zero-padding edges)


def test_qcb_and_qcv_prefer_the_right_image(images):
    a, b, noise = images
    good, bad = np.maximum(a, b), noise
    assert M.qcb(a, b, good) > M.qcb(a, b, bad)
    assert M.qcv(a, b, good) < M.qcv(a, b, bad)  # lower is better
    assert M.qcv(a, a, a) == pytest.approx(0.0, abs=1e-9)


def test_statistics_on_simple_images():
    ramp = np.tile(np.arange(0, 256, 1.0), (4, 1))
    assert M.sf(ramp) == pytest.approx(np.sqrt(1.0 * 255 / 255 + 0))  # row differences 1, column 0
    assert M.ag(ramp) == pytest.approx(np.sqrt(0.5))
    half = np.zeros((10, 10))
    half[:, 5:] = 255
    assert M.en(half) == pytest.approx(1.0)
    assert M.sd(half) == pytest.approx(127.5)


def test_beats_respects_direction():
    ref = {"MI": 1, "Qabf": 0.5, "VIF": 0.5, "SSIM": 0.5, "Qcb": 0.5, "Qcv": 100}
    cand = {"MI": 2, "Qabf": 0.4, "VIF": 0.5, "SSIM": 0.6, "Qcb": 0.5, "Qcv": 50}
    assert M.beats(cand, ref) == ["MI", "SSIM", "Qcv"]
