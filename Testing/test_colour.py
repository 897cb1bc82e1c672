import numpy as np
import pytest

from ECFusionLib.colour import (apply_colormap, colormap_table, recolour, rgb_to_ycbcr, validate_table,
                                ycbcr_to_rgb)
from ECFusionLib.errors import ECFusionError


def test_round_trip_within_one_grey_level():
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, size=(200_000, 3), dtype=np.uint8)
    back = ycbcr_to_rgb(np.rint(rgb_to_ycbcr(rgb)))  # through 8-bit YCbCr, as OpenCV stores it
    assert np.abs(back.astype(int) - rgb.astype(int)).max() <= 1


@pytest.mark.parametrize("rgb, ycc", [
    ((255, 0, 0), (76, 85, 255)),     # OpenCV COLOR_RGB2YCrCb gives Y=76, Cr=255, Cb=85
    ((0, 255, 0), (150, 44, 21)),
    ((0, 0, 255), (29, 255, 107)),
    ((128, 128, 128), (128, 128, 128)),
])
def test_bt601_full_range_matches_opencv_convention(rgb, ycc):
    got = np.clip(np.rint(rgb_to_ycbcr(np.array(rgb))), 0, 255)
    assert tuple(int(v) for v in got) == ycc


def test_recolour_keeps_chroma_and_sets_luminance():
    rng = np.random.default_rng(1)
    rgb = rng.integers(0, 256, size=(64, 64, 3), dtype=np.uint8)
    y = rgb_to_ycbcr(rgb)[..., 0]
    assert np.abs(recolour(y, rgb).astype(int) - rgb).max() <= 1  # same Y: same colours
    grey = np.full((4, 4, 3), 100, np.uint8)
    out = recolour(np.full((4, 4), 200.0), grey)
    assert np.all(out == 200)  # a grey functional image gives a grey result


def test_tables_follow_slicer_control_points():
    heat = colormap_table("PET-Heat")
    assert heat.shape == (256, 3)
    assert np.allclose(heat[0], 0) and np.allclose(heat[255], 1)
    assert np.allclose(heat[87], [1, 1, 0]) and np.allclose(heat[35], [0.36, 0, 0])
    rb2 = colormap_table("PET-Rainbow2")
    assert np.allclose(rb2[64], [0, 0, 1]) and np.allclose(rb2[96], [0, 1, 0])
    grey = colormap_table("Grey")
    assert np.allclose(grey[:, 0], np.arange(256) / 255)


def test_apply_colormap_uses_window_level():
    table = colormap_table("Grey")
    vals = np.array([-10.0, 0.0, 5.0, 10.0, 99.0])
    rgb = apply_colormap(vals, table, window=10, level=5)
    assert rgb[:, 0].tolist() == [0, 0, 127, 255, 255]  # position 127.5 takes entry 127, as Slicer does
    assert np.all(rgb[:, 0] == rgb[:, 1])


def test_user_table_file(tmp_path):
    table = np.stack([np.arange(256), np.zeros(256), 255 - np.arange(256)], 1)
    path = tmp_path / "lut.txt"
    np.savetxt(path, table)
    t = colormap_table(str(path))
    assert np.allclose(t[0], [0, 0, 1]) and np.allclose(t[255], [1, 0, 0])
    bad = tmp_path / "bad.txt"
    np.savetxt(bad, np.zeros((10, 3)))
    with pytest.raises(ECFusionError, match="256 rows"):
        colormap_table(str(bad))
    with pytest.raises(ECFusionError, match="unknown colour map"):
        colormap_table("NoSuchMap")
    with pytest.raises(ECFusionError):
        validate_table(np.full((256, 3), np.nan))


def test_recolour_preserves_fused_luminance_out_of_gamut():
    """A bright fused Y under a saturated colour: chroma is scaled down (hue kept), Y is kept exactly."""
    rng = np.random.default_rng(2)
    rgb = rng.integers(0, 256, size=(128, 128, 3), dtype=np.uint8)
    y = rng.uniform(0, 255, size=(128, 128)).astype(np.float32)
    out = recolour(y, rgb)
    assert np.abs(rgb_to_ycbcr(out)[..., 0] - y).max() <= 0.75  # rounding of three channels only
    red = np.zeros((1, 1, 3), np.uint8)
    red[..., 0] = 200
    out = recolour(np.full((1, 1), 230.0), red)[0, 0].astype(int)
    assert out[0] == 255 and out[0] > out[1] == out[2]  # still red, desaturated toward white, Y = 230
    assert abs(rgb_to_ycbcr(out)[0] - 230) <= 0.75
