"""Image checks (bone kept, hot spots kept, hot-lesion colour), slice banding and the keep-salient rule."""
import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from ECFusionLib import metrics as M
from ECFusionLib.colour import colormap_table, luminance, recolour
from ECFusionLib.salient import RAMP, keep_salient

ROOT = Path(__file__).resolve().parents[1]


def test_bone_kept_known_answer():
    ct = np.zeros((32, 32))
    mri = np.full((32, 32), 150.0)
    ct[:, :4] = 250  # bone band, MRI dark there
    mri[:, :4] = 20
    ct[:, 30:] = 255  # bright CT under bright MRI: not "bone" for the check
    fused = np.maximum(ct, mri)
    fused[:, :4] = 200  # hollow skull: 200 / 250
    assert M.bone_kept(ct, mri, fused) == pytest.approx(0.8)
    assert M.bone_kept(ct, mri, np.maximum(ct, mri)) == pytest.approx(1.0)
    assert np.isnan(M.bone_kept(np.zeros((8, 8)), np.zeros((8, 8)), np.zeros((8, 8))))


def test_hot_spots_kept_known_answer():
    pet = np.zeros((100, 100))
    pet[:10, :10] = 240  # exactly the brightest 1 %
    pet[50:, :] = 100
    fused = pet.copy()
    fused[:10, :10] = 180
    assert M.hot_mask(pet).sum() == 100
    assert M.hot_spots_kept(pet, fused) == pytest.approx(0.75)
    assert M.hot_spots_kept(pet, pet + 10) > 1.0
    assert np.isnan(M.hot_spots_kept(np.zeros((10, 10)), np.zeros((10, 10))))


def test_colour_positions_read_pet_heat_back():
    table = colormap_table("PET-Heat")
    rgb = np.array([[255, 255, 255], [255, 255, 0], [232, 232, 232], [0, 0, 0], [0, 0, 255]], np.uint8)
    pos = M.colour_positions(rgb, table)
    assert pos[0] == 255 and abs(pos[1] - 87) <= 1 and pos[3] == 0
    assert pos[2] == -1 and pos[4] == -1  # grey and blue are no PET-Heat colour


def test_hot_colour_kept_flags_a_grey_hot_lesion():
    table = colormap_table("PET-Heat")
    idx = np.zeros((20, 20), np.int32)
    idx[5:10, 5:10] = 255  # white lesion
    idx[12:, :] = 70
    pet_rgb = np.rint(table[idx] * 255).astype(np.uint8)
    y = luminance(pet_rgb)
    lesion = idx == 255
    assert M.hot_colour_kept(pet_rgb, pet_rgb, table, lesion) == 1.0
    grey = recolour(np.where(lesion, 232.0, y), pet_rgb)  # the defect: fused Y 232 under white
    assert M.hot_colour_kept(grey, pet_rgb, table, lesion) == 0.0
    assert M.hot_colour_kept(grey, pet_rgb, table) < 0.5  # default mask: the brightest 1 % of the PET's Y


def test_banding_known_values():
    z = np.arange(10, dtype=float)[:, None, None] * np.ones((10, 4, 4))
    assert M.banding(z * 10) == pytest.approx(0.0)  # a linear ramp across slices has no second difference
    alt = np.where(np.arange(10) % 2 == 0, 100.0, 110.0)[:, None, None] * np.ones((10, 4, 4))
    assert M.banding(alt) == pytest.approx(20.0)
    assert M.banding(np.moveaxis(alt, 0, 2), axis=2) == pytest.approx(20.0)
    r = M.banding_ratio(alt, z * 10 + 5, np.full_like(z, 50.0))
    assert r["a"] == pytest.approx(0.0) and r["fused"] == pytest.approx(20.0) and np.isnan(r["ratio"])
    smooth = 100.0 + z**2  # second difference 2 everywhere
    r = M.banding_ratio(smooth + alt - 100, smooth, smooth)  # adds a 0/10 alternation across slices
    assert r["a"] == pytest.approx(2.0) and r["fused"] == pytest.approx(20.0) and r["ratio"] == pytest.approx(10.0)


def test_keep_salient_rule():
    rng = np.random.default_rng(0)
    src = rng.integers(0, 256, (64, 64)).astype(np.uint8)
    fused = rng.integers(0, 256, (64, 64)).astype(np.uint8)
    out = keep_salient(fused, src, threshold=160)
    assert out.dtype == np.uint8 and out.shape == fused.shape
    assert np.all(out >= fused)  # never darkens
    top = src >= 160 + RAMP
    assert np.all(out[top] >= src[top])  # fully kept in the top range
    low = src <= 160
    assert np.array_equal(out[low], fused[low])  # untouched below the threshold
    mid = (src == 176) & (fused < 100)  # halfway up the ramp: half the gap
    if mid.any():
        np.testing.assert_allclose(out[mid], np.rint(fused[mid] + 0.5 * (176 - fused[mid].astype(float))), atol=1)
    assert keep_salient(fused, src, "PET-MRI", enabled=False) is fused
    mri = np.zeros_like(src)
    mri[:, 32:] = 200
    dark = keep_salient(fused, src, anatomical=mri, threshold=160, dark=30)
    assert np.array_equal(dark[:, 32:], fused[:, 32:])  # CT-MRI condition: bright MRI keeps the network's value
    left = top[:, :32]
    assert np.all(dark[:, :32][left] >= src[:, :32][left])  # dark MRI (<= 30): the bright source is kept
    with pytest.raises(ValueError):
        keep_salient(fused, src, threshold=160, dark=30)  # the condition needs the MRI
    with pytest.raises(ValueError):
        keep_salient(fused, src[:10], threshold=100)


def test_cv_folds_cover_every_case_once():
    from ECFusionLib.pairs import find_pairs

    folds = json.loads((ROOT / "ECFusionLib" / "weights" / "cv_folds.json").read_text())["tasks"]
    for task, v in folds.items():
        cases = [c for f in v["folds"] for c in f]
        assert len(cases) == len(set(cases)) and len(v["folds"]) >= 3
        assert v["folds"][0] == v["bundled_weights_validated_on"]
        assert sorted(cases) == sorted(v["bundled_weights_trained_on"] + v["bundled_weights_validated_on"])
    data = ROOT.parent / "shared" / "data" / "aanlib"
    if data.is_dir():  # only where the data set is present
        for task, v in folds.items():
            assert {p.case for p in find_pairs(data, [task])} == {c for f in v["folds"] for c in f}


def test_cross_validation_chooses_on_other_folds():
    import cross_validate as cv

    # synthetic scores: method "salient@1" better than pixel-max on every metric in folds 0 and 1 only
    rows = []
    for case, fold_good in (("1", True), ("2", True), ("3", False)):
        for method in ("ecfusion", "salient@1", "pixel-max", "pixel-average"):
            good = method == "salient@1" and fold_good
            m = {k: (1.1 if good else 1.0) for k in cv.SIX}
            m["Qcv"] = 0.9 if good else 1.0
            rows.append({"name": case + "000", "case": case, "method": method, **m, "check": 1.0})
    res = cv.cross_validate(rows, [["1"], ["2"], ["3"]], ["ecfusion", "pixel-max", "pixel-average", "salient@1"])
    assert res["chosen"] == ["salient@1", "salient@1", "salient@1"]
    assert res["folds"][2]["ecfusion+rule (CV)"]["MI"] == pytest.approx(1.0)  # scored on the held-out fold


def test_cross_validation_focal_variant_is_what_fuse_does(capsys, tmp_path, weights_file):
    """``scripts/cross_validate.py``'s ``focal`` variant, applied to the cached rule-off output, gives the Y that
    ``ecfusion fuse --input-dir`` writes with the shipped (focal) rule on, within 1 grey level, on a 2D PET-MRI
    pair with a hot spot (about 2.5x its surroundings) that the rule lifts. (Measured: within 0.5; the same
    rule on a 2 mm grid is 16 levels off, the old fixed level 208 is 88 off.)"""
    import cross_validate as cv
    from helpers import run_cli

    from ECFusionLib.intensity import map_functional
    from ECFusionLib.pairs import find_pairs

    yy, xx = np.mgrid[:64, :64]
    pet = 4.0 + 2.0 * np.sin(xx / 9.0) + 9.0 * np.exp(-((yy - 22) ** 2 + (xx - 40) ** 2) / 18.0)
    mri = (120 + 60 * np.cos(yy / 7.0) * np.sin(xx / 5.0)).astype(np.uint8)
    rgb, _, _ = map_functional(pet, "PET", window=16, level=8)
    for kind, img in (("PET", sitk.GetImageFromArray(rgb, isVector=True)), ("MRI", sitk.GetImageFromArray(mri))):
        (tmp_path / "pairs" / "PET-MRI" / kind).mkdir(parents=True)
        sitk.WriteImage(img, str(tmp_path / "pairs" / "PET-MRI" / kind / "7000.png"))
    for out, flags in (("off", ["--no-keep-salient"]), ("on", [])):
        code, text = run_cli(capsys, "fuse", "--input-dir", tmp_path / "pairs", "--task", "PET-MRI", "--output",
                             tmp_path / out, "--weights", weights_file, "--quiet", *flags)
        assert code == 0, text
    pair = find_pairs(tmp_path / "pairs", ["PET-MRI"])[0]
    a, b, f = cv.load_pair(pair, tmp_path / "off" / "PET-MRI" / "7000.png")
    y_on = cv.load_pair(pair, tmp_path / "on" / "PET-MRI" / "7000.png")[2]
    focal = cv.apply_variant(cv.FOCAL, f, a, b, "PET-MRI", cv.pair_spacing(pair))
    assert (y_on - f).max() > 20  # the rule lifted the hot spot
    assert np.abs(focal - y_on).max() <= 1
    assert cv.shipped_rule("PET-MRI") == cv.FOCAL and cv.FOCAL in cv.method_names("PET-MRI", [128.0], [])


@pytest.fixture(scope="module")
def hot_phantom():
    """The phantom head at 3 mm: its lesion is the PET's hottest spot, white under PET-Heat at the default window."""
    from ECFusionLib.fusion import default_window_level
    from ECFusionLib.geometry import resample_onto
    from ECFusionLib.intensity import map_functional
    from ECFusionLib.phantom import LESION, label_volume, make_phantom

    size, spacing = (60, 72, 60), 3.0
    ph = make_phantom(size=size, seed=3, spacing=spacing)
    lesion = sitk.GetArrayFromImage(label_volume(size, spacing, 3)) == LESION
    window, level = default_window_level(sitk.GetArrayViewFromImage(ph["PET"]), None, None, "PET-Heat")
    rgb, _, _ = map_functional(sitk.GetArrayFromImage(resample_onto(ph["PET"], ph["MRI"])), "PET", None, window, level)
    return ph, lesion, rgb


@pytest.mark.slow
@pytest.mark.parametrize("weights", ["bundled", "seeded"])
def test_hot_lesion_keeps_a_hot_colour_in_3d(hot_phantom, weights, weights_file):
    """PET-Heat at default settings: the lesion's fused colour reads back through the colour map as at least as hot
    as the PET's (white/pale yellow) over nearly all of it, and the rule (on by default) only adds to that and only
    brightens. History: with the window's top at the PET's 99.99th percentile the network alone kept none of it
    and the relative rule (issue 18) 0.66; since the default window puts the normal tissue at PET-Heat's
    luminance knee (``intensity.default_window_level``), the lesion lies above it and is kept (measured: bundled
    1.00 with the rule, 0.88 without; seeded random weights 0.82 / 0.00)."""
    from ECFusionLib.fusion import FusionSettings, fuse_images

    ph, lesion, pet_rgb = hot_phantom
    assert lesion.sum() > 50 and luminance(pet_rgb)[lesion].mean() > 230  # the lesion is white-hot in the PET
    table = colormap_table("PET-Heat")
    w = None if weights == "bundled" else weights_file
    on = sitk.GetArrayFromImage(fuse_images(ph["MRI"], ph["PET"], FusionSettings(task="PET-MRI", weights=w)).image)
    off = sitk.GetArrayFromImage(
        fuse_images(ph["MRI"], ph["PET"], FusionSettings(task="PET-MRI", weights=w, keep_salient=False)).image)
    kept_on, kept_off = M.hot_colour_kept(on, pet_rgb, table, lesion), M.hot_colour_kept(off, pet_rgb, table, lesion)
    floor = 0.95 if weights == "bundled" else 0.6  # any network (seeded random weights): the rule alone, 0.82
    assert kept_on >= floor and kept_on >= kept_off, (kept_on, kept_off)
    assert M.hot_spots_kept(luminance(pet_rgb), luminance(on)) >= M.hot_spots_kept(luminance(pet_rgb), luminance(off))
    assert np.all(luminance(on) >= luminance(off) - 1.0)


def test_evaluate_prints_the_image_checks(tmp_path, capsys):
    """`ecfusion evaluate --checks`: bone_kept of a fused image that keeps 80 % of the CT's bone brightness is 0.8."""
    from ECFusionLib.cli import main

    ct = np.zeros((48, 48), np.uint8)
    mri = np.full((48, 48), 150, np.uint8)
    ct[:, :6], mri[:, :6] = 250, 10  # bone band: bright CT, dark MRI
    fused = np.maximum(ct, mri)
    fused[:, :6] = 200
    for sub, img in (("CT-MRI/CT", ct), ("CT-MRI/MRI", mri)):
        (tmp_path / "pairs" / sub).mkdir(parents=True)
        sitk.WriteImage(sitk.GetImageFromArray(img), str(tmp_path / "pairs" / sub / "5001.png"))
    (tmp_path / "fused" / "CT-MRI").mkdir(parents=True)
    sitk.WriteImage(sitk.GetImageFromArray(fused), str(tmp_path / "fused" / "CT-MRI" / "5001.png"))
    assert main(["evaluate", "--input-dir", str(tmp_path / "pairs"), "--fused", str(tmp_path / "fused"),
                 "--baselines", "--checks"]) == 0
    lines = capsys.readouterr().out.splitlines()
    header = lines[0].split()
    col = header.index("bone_kept")  # header and rows both start with task, method
    values = {ln.split()[1]: float(ln.split()[col]) for ln in lines[1:]}
    assert values["ecfusion"] == pytest.approx(0.8, abs=1e-3)
    assert values["pixel-max"] == pytest.approx(1.0)
    assert "hot_kept" in header


def test_anatomy_vs_blend_pairs_of_a_known_fusion():
    """Two 2D CT-MRI pairs (textured MRI, a bone band: bright CT, dark MRI) and a fusion that shows the MRI outside
    the bone and the CT in it: all the anatomy (1.0) and all the bone kept; the 50/50 blend keeps less of both.
    Anatomy is measured outside the bone zone (the band grown by the 7-pixel window), the blend is the pixel average."""
    from ECFusionLib.evaluation import anatomy_region, anatomy_vs_blend_pairs

    rng = np.random.default_rng(0)
    mri = 100.0 + 40.0 * rng.random((2, 48, 48))
    ct = np.full_like(mri, 60.0)
    mri[:, :, :6], ct[:, :, :6] = 10.0, 250.0
    fused = np.where(ct >= 200, ct, mri)
    region = anatomy_region("CT-MRI", ct[0], mri[0])
    assert not region[:, :9].any() and region[:, 9:].all()
    r = anatomy_vs_blend_pairs("CT-MRI", ct, mri, fused)
    assert r["check"] == "bone_kept" and r["check_fused"] == pytest.approx(1.0)
    assert r["check_blend"] == pytest.approx((10 + 250) / 2 / 250)
    assert r["head"] == pytest.approx(1.0) and r["blend_head"] < 0.95 and r["ratio_head"] > 1.05
    assert anatomy_region("PET-MRI", ct[0], mri[0]).all()  # PET/SPECT: the whole head
    assert anatomy_vs_blend_pairs("PET-MRI", ct, mri, fused)["check"] == "hot_kept"


@pytest.mark.slow
def test_ct_bone_is_kept_brighter_with_the_rule(hot_phantom):
    """CT-MRI on the phantom (bundled weights): the rule (default on) only brightens, and keeps more of the bone."""
    from ECFusionLib.fusion import FusionSettings, fuse_images
    from ECFusionLib.geometry import resample_onto
    from ECFusionLib.intensity import map_ct, map_mri

    ph = hot_phantom[0]
    ct, _ = map_ct(sitk.GetArrayFromImage(resample_onto(ph["CT"], ph["MRI"])))
    mri, _ = map_mri(sitk.GetArrayFromImage(ph["MRI"]))
    on = sitk.GetArrayFromImage(fuse_images(ph["MRI"], ph["CT"], FusionSettings(task="CT-MRI")).image)
    off = sitk.GetArrayFromImage(fuse_images(ph["MRI"], ph["CT"], FusionSettings(task="CT-MRI", keep_salient=False)).image)
    assert np.all(on >= off)
    assert M.bone_kept(ct, mri, on) > M.bone_kept(ct, mri, off) + 0.02  # phantom T1 skull ~45: partly kept
