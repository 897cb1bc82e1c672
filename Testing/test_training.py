"""Training: the loss falls, a run resumes from its checkpoint, fine-tuning starts from given weights."""
import csv

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from ECFusionLib.errors import ECFusionError
from ECFusionLib.network import ECFusionNet
from ECFusionLib.training import FusionLoss, PatchSampler, TrainConfig, lr_factor, train
from ECFusionLib.weights import load_state_dict, save_weights
from helpers import run_cli, tiny_pairs as _tiny_dataset


def test_loss_falls_in_a_few_steps():
    torch.manual_seed(0)
    model = ECFusionNet()
    loss_fn = FusionLoss(TrainConfig(data="", task="PET-MRI", out="", intensity_weight=1.0))
    a = torch.zeros(2, 1, 48, 48) - 1
    a[:, :, 10:30, 12:40] = 0.8
    b = torch.zeros(2, 1, 48, 48) - 1
    b[:, :, 20:44, 5:25] = 0.3
    opt = torch.optim.Adam(model.parameters(), 1e-3)
    losses = []
    for _ in range(25):
        terms = loss_fn(a, b, model(a, b))
        opt.zero_grad()
        terms["total"].backward()
        opt.step()
        losses.append(float(terms["total"].detach()))
    assert np.mean(losses[-5:]) < 0.7 * np.mean(losses[:3])


def test_patches_follow_the_paper():
    a = torch.rand(12, 1, 256, 256) * 0.5  # values never exactly +-1
    s = PatchSampler(a, a.clone(), upsample=True, seed=0)
    assert len(s) == 12 * 9  # 9 overlapping 128x128 patches (stride 64) per 256x256 image
    pa, pb = next(s.batches(4))
    assert pa.shape == (4, 1, 256, 256)  # upsampled by nearest neighbour
    assert torch.equal(pa[:, :, ::2, ::2], pa[:, :, 1::2, 1::2])
    pa, pb = next(PatchSampler(a, a.clone(), upsample=False, seed=1).batches(108))
    assert pa.shape[-1] == 128
    squares = ((pa.abs() == 1) | (pb.abs() == 1)).flatten(1).sum(1)
    assert set(squares.unique().tolist()) <= {0, 64 * 64}  # one 64x64 square or none
    assert 0.35 < (squares > 0).float().mean() < 0.65  # on about half of the patches
    assert ((pa.abs() == 1).flatten(1).any(1) & (pb.abs() == 1).flatten(1).any(1)).sum() == 0  # on one image only


def test_perceptual_loss_needs_vgg_weights():
    with pytest.raises(ECFusionError, match="VGG19"):
        FusionLoss(TrainConfig(data="", task="PET-MRI", out="", perceptual_weight=0.02))
    with pytest.raises(ECFusionError, match="not found"):
        FusionLoss(TrainConfig(data="", task="PET-MRI", out="", perceptual_weight=0.02, vgg_weights="/no/vgg19.pth"))


def test_learning_rate_schedule():
    assert lr_factor(0, 100, "cosine", 10) == pytest.approx(0.05)
    assert lr_factor(10, 100, "cosine", 10) == pytest.approx(1.0)
    assert lr_factor(100, 100, "cosine", 10) == pytest.approx(0.01)
    assert lr_factor(50, 100, "constant", 0) == 1.0


def _read_log(path):
    with open(path) as fh:
        return list(csv.DictReader(fh))


@pytest.mark.slow
def test_train_resume_and_fine_tune(tmp_path):
    data = _tiny_dataset(tmp_path / "data")
    cfg = dict(data=str(data), task="PET-MRI", epochs=2, batch_size=2, lr=1e-3, upsample=False, intensity_weight=1.0,
               val_cases=["6"], device="cpu", threads=2, select_metrics=["Qabf", "SSIM"])
    out = tmp_path / "run"
    best = train(TrainConfig(out=str(out), **cfg), log=lambda *_: None)
    rows = _read_log(out / "log.csv")
    assert [r["epoch"] for r in rows] == ["1", "2"] and best.is_file()
    load_state_dict(best)  # a valid weights file
    # resume: a longer schedule continues from epoch 2, not from scratch
    train(TrainConfig(out=str(out), **dict(cfg, epochs=3)), log=lambda *_: None)
    rows = _read_log(out / "log.csv")
    assert [r["epoch"] for r in rows] == ["1", "2", "3"]
    assert int(rows[2]["step"]) == 3 * int(rows[0]["step"])
    # fine-tune: with lr 0 the result is exactly the starting weights
    torch.manual_seed(7)
    start = ECFusionNet()
    init = save_weights(start, tmp_path / "init.pt")
    ft = train(TrainConfig(out=str(tmp_path / "ft"), init_weights=str(init), **dict(cfg, epochs=1, lr=0.0)), log=lambda *_: None)
    tuned = load_state_dict(ft)
    assert all(torch.equal(tuned[k], v) for k, v in start.state_dict().items())


def test_training_needs_two_cases(tmp_path):
    data = _tiny_dataset(tmp_path / "data", cases=("5",))
    with pytest.raises(ECFusionError, match="two cases"):
        train(TrainConfig(data=str(data), task="PET-MRI", out=str(tmp_path / "r"), epochs=1), log=lambda *_: None)


def test_ssim_term_matches_the_metric_and_is_zero_for_identical_images():
    from ECFusionLib.metrics import ssim
    from ECFusionLib.training import ssim_map

    rng = np.random.default_rng(3)
    a = rng.integers(0, 256, (48, 48)).astype(float)
    b = np.clip(a + rng.normal(0, 25, a.shape), 0, 255)
    t = lambda x: torch.tensor(x, dtype=torch.float32)[None, None] / 127.5 - 1  # noqa: E731
    assert abs(ssim_map(t(a), t(b)).mean().item() - ssim(a, a, b)) < 1e-4  # ssim(a, b, f) averages SSIM(a,f), SSIM(b,f)
    loss = FusionLoss(TrainConfig(data="", task="CT-MRI", out="", ssim_weight=1.0))
    x = t(a)
    terms = loss(x, x, x)
    assert terms["ssim"].item() < 1e-5 and terms["total"].item() < 1e-4
    assert loss(x, x, t(b))["ssim"].item() > 0.05


# ------------------------------------------------------------------ next training round (issue 14)
def _u(x255):
    """0-255 array -> 1 x 1 x H x W tensor in [-1, 1]."""
    return torch.tensor(np.asarray(x255, dtype=np.float32))[None, None] / 127.5 - 1


def test_salient_mask_is_the_rules_mask_in_numpy_and_torch():
    from ECFusionLib.salient import keep_salient, salient_mask

    rng = np.random.default_rng(0)
    s, m, f = (rng.uniform(0, 255, (32, 32)).astype(np.float32) for _ in range(3))
    w_np = salient_mask(s, m, threshold=128, dark=30)
    w_t = salient_mask(torch.from_numpy(s), torch.from_numpy(m), threshold=128, dark=30)
    assert np.allclose(w_np, w_t.numpy()) and 0 < w_np.mean() < 1
    assert np.allclose(keep_salient(f, s, anatomical=m, threshold=128, dark=30), f + w_np * np.maximum(s - f, 0))


def test_salient_term_zero_and_positive_where_expected_and_its_gradient_flows():
    loss = FusionLoss(TrainConfig(data="", task="CT-MRI", out="", grad_weight=0.0, salient_weight=1.0))
    ct = np.zeros((24, 24), np.float32)
    ct[4:12] = 250  # bone ...
    mri = np.full((24, 24), 10.0, np.float32)  # ... where the MRI is dark (the skull on T1)
    mri[:, 12:] = 200  # and bone where the MRI is bright (marrow): not salient for CT-MRI (dark 30)
    a, b = _u(ct), _u(mri)
    assert loss(a, b, a.clone())["salient"].item() == 0  # the fused image keeps the CT bone: nothing to pay
    dark_f = _u(np.where(ct > 0, 150, 0)).requires_grad_(True)  # a hollow skull: fused below the CT in bone
    term = loss(a, b, dark_f)["salient"]
    assert term.item() > 0.05
    term.backward()
    g = dark_f.grad[0, 0].numpy()
    assert (g[4:12, :12] < 0).all()  # pushes the fused value up in bone where the MRI is dark ...
    assert (g[4:12, 12:] == 0).all() and (g[12:] == 0).all()  # ... and nowhere else
    no_bone = _u(np.full((24, 24), 100.0))  # CT below the threshold: no salient pixel, term 0 whatever F is
    assert loss(no_bone, b, _u(np.zeros((24, 24))))["salient"].item() == 0
    # PET/SPECT-MRI: the inference rule is relative (salient.focal_weight) and has no fixed level since issue 18;
    # training takes one explicitly: the top range of the functional Y (above 208), the MRI anywhere
    with pytest.raises(ECFusionError, match="--salient-threshold"):
        FusionLoss(TrainConfig(data="", task="PET-MRI", out="", salient_weight=1.0))
    pet_loss = FusionLoss(TrainConfig(data="", task="PET-MRI", out="", salient_weight=1.0, salient_threshold=208.0))
    pet = np.zeros((24, 24), np.float32)
    pet[8:16, 8:16] = 255
    assert pet_loss(_u(pet), _u(np.full((24, 24), 200.0)), _u(np.full((24, 24), 200.0)))["salient"].item() > 0
    assert pet_loss(_u(pet * 0.7), _u(pet), _u(pet))["salient"].item() == 0  # below the hot range: 0


def test_ssim_reference_by_local_variance():
    rng = np.random.default_rng(1)
    textured = _u(rng.uniform(0, 255, (40, 40)))
    flat = _u(np.full((40, 40), 128.0))
    mean = FusionLoss(TrainConfig(data="", task="CT-MRI", out="", grad_weight=0.0, ssim_weight=1.0))
    var = FusionLoss(TrainConfig(data="", task="CT-MRI", out="", grad_weight=0.0, ssim_weight=1.0, ssim_reference="variance"))
    mx = FusionLoss(TrainConfig(data="", task="CT-MRI", out="", grad_weight=0.0, ssim_weight=1.0, ssim_reference="max"))
    # F = the textured source: the variance reference is that source everywhere -> 0; the mean still pulls to flat
    assert var(textured, flat, textured)["ssim"].item() < 1e-5 < 0.3 < mean(textured, flat, textured)["ssim"].item()
    assert mx(textured, flat, textured)["ssim"].item() < 1e-5
    for fn in (var, mx, mean):  # all three are zero for identical images and have a gradient
        assert fn(flat, flat, flat)["ssim"].item() < 1e-5
        f = flat.clone().requires_grad_(True)
        fn(textured, flat, f)["ssim"].backward()
        assert f.grad.abs().sum() > 0


def _folds_file(path, folds):
    path.write_text(__import__("json").dumps({"tasks": {"PET-MRI": {"folds": folds}}}))
    return str(path)


def test_holdout_fold_validates_exactly_that_fold(tmp_path):
    from ECFusionLib.pairs import find_pairs
    from ECFusionLib.training import split_for

    data = _tiny_dataset(tmp_path / "data", cases=("5", "6", "7"), slices=2)
    pairs = find_pairs(data, ["PET-MRI"])
    folds = _folds_file(tmp_path / "folds.json", [["5"], ["6", "7"]])
    tr, va = split_for(TrainConfig(data=str(data), task="PET-MRI", out="", folds=folds, holdout_fold=1), pairs)
    assert {p.case for p in va} == {"6", "7"} and {p.case for p in tr} == {"5"}
    assert len(tr) + len(va) == len(pairs)
    tr, va = split_for(TrainConfig(data=str(data), task="PET-MRI", out="", all_cases=True), pairs)
    assert len(tr) == len(pairs) and not va
    with pytest.raises(ECFusionError, match="2 PET-MRI folds"):
        split_for(TrainConfig(data="", task="PET-MRI", out="", folds=folds, holdout_fold=2), pairs)
    with pytest.raises(ECFusionError, match="not in the data"):
        split_for(TrainConfig(data="", task="PET-MRI", out="", folds=_folds_file(tmp_path / "f2.json", [["5"], ["9"]]),
                              holdout_fold=1), pairs)
    with pytest.raises(ECFusionError, match="disagree"):
        split_for(TrainConfig(data="", task="PET-MRI", out="", folds=folds, holdout_fold=0, val_cases=["6"]), pairs)
    # the bundled folds file is the default
    from ECFusionLib.training import DEFAULT_FOLDS, read_folds

    assert read_folds(DEFAULT_FOLDS, "CT-MRI")[0] == ["34", "37"]


@pytest.mark.slow
def test_ema_weights_are_validated_and_saved_and_packed_data_trains(tmp_path):
    from ECFusionLib.training import load_checkpoint, pack_pairs, read_packed

    data = _tiny_dataset(tmp_path / "data", cases=("5", "6", "7"), slices=4)  # 4 patches per case and epoch
    packed = pack_pairs(data, tmp_path / "pairs.npz")
    pairs, reader = read_packed(packed, "PET-MRI")
    from ECFusionLib.pairs import find_pairs
    from ECFusionLib.training import load_images

    png = find_pairs(data, ["PET-MRI"])
    assert [p.name for p in pairs] == [p.name for p in png]
    assert all(torch.equal(x, y) for x, y in zip(load_images(pairs, reader), load_images(png)))
    from ECFusionLib.training import subset_packed

    tiny, _ = read_packed(subset_packed(packed, tmp_path / "tiny.npz", 1), "PET-MRI")  # --smoke: 1 pair per case
    assert [p.name for p in tiny] == ["5000", "6000", "7000"]
    lines = []
    cfg = TrainConfig(data=str(packed), task="PET-MRI", out=str(tmp_path / "run"), epochs=2, batch_size=2, lr=1e-3,
                      upsample=False, intensity_weight=1.0, salient_weight=1.0, salient_threshold=208.0, ssim_weight=0.5,
                      ssim_reference="variance",
                      ema=0.9, folds=_folds_file(tmp_path / "folds.json", [["5"], ["6"], ["7"]]), holdout_fold=2,
                      steps_per_epoch=3, device="cpu", threads=2, select_metrics=["Qabf", "SSIM"])
    best = train(cfg, log=lines.append)
    assert "validation pairs (cases ['7'])" in lines[0] and "(cases ['5', '6'])" in lines[0]
    rows = _read_log(tmp_path / "run" / "log.csv")
    assert [r["step"] for r in rows] == ["3", "6"] and all(r["check"] for r in rows)
    ck = load_checkpoint(tmp_path / "run" / "last.pt", "cpu")  # weights_only=True: plain tensors and values
    saved = load_state_dict(best)
    assert ck["ema_updates"] == 6
    assert any(not torch.equal(ck["ema"][k], ck["model"][k]) for k in saved)  # EMA differs from the raw weights ...
    if int(rows[-1]["epoch"]) == int(__import__("torch").load(best, weights_only=True)["meta"]["epoch"]):
        assert all(torch.equal(saved[k], ck["ema"][k].float()) for k in saved)  # ... and is what was written
    # resume: the EMA continues from the checkpoint
    train(TrainConfig(**{**cfg.__dict__, "epochs": 3}), log=lambda *_: None)
    assert load_checkpoint(tmp_path / "run" / "last.pt", "cpu")["ema_updates"] == 9
    # --all-cases: no validation, the last epoch's (EMA) weights are written
    final = train(TrainConfig(**{**cfg.__dict__, "out": str(tmp_path / "final"), "holdout_fold": None,
                                 "all_cases": True, "epochs": 1}), log=lambda *_: None)
    ck = load_checkpoint(tmp_path / "final" / "last.pt", "cpu")
    assert all(torch.equal(v, ck["ema"][k].float()) for k, v in load_state_dict(final).items())


def test_new_options_are_checked():
    from ECFusionLib.training import check_config

    base = dict(data="", task="CT-MRI", out="")
    for bad, match in [(dict(ema=1.0), "EMA"), (dict(ssim_reference="min"), "SSIM reference"),
                       (dict(salient_weight=-1.0), "salient weight"), (dict(all_cases=True, holdout_fold=0), "all-cases"),
                       (dict(steps_per_epoch=0), "steps per epoch"), (dict(val_every=0), "validation interval")]:
        with pytest.raises(ECFusionError, match=match):
            check_config(TrainConfig(**base, **bad))


def test_command_line_passes_the_new_options(tmp_path, monkeypatch):
    import ECFusionLib.training as T
    from ECFusionLib.cli import build_parser, cmd_train

    seen = {}
    monkeypatch.setattr(T, "train", lambda cfg: seen.setdefault("cfg", cfg) and None)
    args = build_parser().parse_args(
        ["train", "--data", "d.npz", "--task", "CT-MRI", "--out", str(tmp_path / "r"), "--salient-weight", "2",
         "--salient-threshold", "150", "--salient-dark", "20", "--ssim-reference", "variance", "--ema", "0.999",
         "--holdout-fold", "3", "--folds", "f.json", "--steps-per-epoch", "7", "--val-every", "5"])
    cmd_train(args)
    cfg = seen["cfg"]
    assert (cfg.salient_weight, cfg.salient_threshold, cfg.salient_dark, cfg.ssim_reference, cfg.ema) == (2.0, 150.0, 20.0, "variance", 0.999)
    assert (cfg.holdout_fold, cfg.folds, cfg.steps_per_epoch, cfg.val_every, cfg.all_cases) == (3, "f.json", 7, 5, False)
    assert build_parser().parse_args(["train", "--data", "d", "--task", "CT-MRI", "--out", "o", "--all-cases"]).all_cases


def test_gpu_train_script_parses():
    import subprocess
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "scripts" / "gpu_train.sh"
    assert subprocess.run(["bash", "-n", str(script)]).returncode == 0
    help_text = subprocess.run(["bash", str(script), "--help"], capture_output=True, text=True, encoding="utf-8")
    assert help_text.returncode == 0 and "--smoke" in help_text.stdout and "--budget-min" in help_text.stdout
    bad = subprocess.run(["bash", str(script), "--nonsense"], capture_output=True, text=True, encoding="utf-8")
    assert bad.returncode == 2 and "unknown option" in bad.stderr


@pytest.mark.slow
def test_training_from_a_packed_file_needs_no_simpleitk(tmp_path):
    """The GPU machine's image has no SimpleITK: training's imports and the packed-data reader must not need it."""
    import subprocess
    import sys
    from pathlib import Path

    from ECFusionLib.training import pack_pairs

    packed = pack_pairs(_tiny_dataset(tmp_path / "data", cases=("5", "6"), slices=1), tmp_path / "p.npz")
    code = f"""
import sys
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] == 'SimpleITK': raise ImportError('blocked')
sys.meta_path.insert(0, Block())
import ECFusionLib.cli, ECFusionLib.training as T
pairs, reader = T.read_packed({str(packed)!r}, 'PET-MRI')
a, b = T.load_images(pairs, reader)
print(len(pairs), tuple(a.shape))
"""
    root = Path(__file__).resolve().parents[1]
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=root,
                       env={**__import__("os").environ, "PYTHONPATH": str(root)})
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.split() == ["2", "(2,", "1,", "128,", "128)"]


# ------------------------------------------------------------------ user mistakes: exit 2, a clear message, no traceback
TRAIN = ["train", "--epochs", "1", "--batch-size", "2", "--no-upsample", "--steps-per-epoch", "1", "--device", "cpu",
         "--threads", "1"]


def _train_cli(capsys, data, out, *extra, task="PET-MRI"):
    """``ecfusion train`` with relative paths (the test runs in its temporary folder) on the tiny pairs."""
    code, text = run_cli(capsys, *TRAIN, "--data", data, "--task", task, "--out", out, "--val-cases", "6", *extra)
    assert "Traceback" not in text
    return code, text


def test_a_batch_larger_than_the_data_is_refused(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    _tiny_dataset(tmp_path / "data", slices=2)  # 2 training pairs of 128x128: 2 patches
    code, text = _train_cli(capsys, "data", "run", "--batch-size", "100000")
    assert code == 2, text
    assert "--batch-size 100000 is more than the 2 training patches" in text
    assert not (tmp_path / "run").exists()  # no run folder, no "best weights" of a random network


def test_images_too_small_for_the_network_are_refused(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    _tiny_dataset(tmp_path / "data", slices=1, size=8)
    code, text = _train_cli(capsys, "data", "run")
    assert code == 2, text
    assert "8x8 pixels: too small" in text and "128x128" in text
    assert not (tmp_path / "run").exists()


def test_pairs_of_different_sizes_are_named(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    _tiny_dataset(tmp_path / "data", cases=("5", "7"), slices=1)
    _tiny_dataset(tmp_path / "data", cases=("6",), slices=1, size=160, seed=1)
    code, text = _train_cli(capsys, "data", "run")
    assert code == 2, text
    assert "most are 128x128, but 1 differ: PET-MRI/6000 (160x160)" in text
    assert not (tmp_path / "run").exists()


def test_packed_data_with_python_objects_is_refused(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    images = np.zeros((2, 128, 128), np.uint8)
    np.savez(tmp_path / "evil.npz", **{"PET-MRI/names": np.array(["5000", {"x": 1}], dtype=object),
                                       "PET-MRI/second": images, "PET-MRI/mri": images})
    code, text = _train_cli(capsys, "evil.npz", "run")
    assert code == 2, text
    assert "evil.npz holds Python objects" in text
    assert not (tmp_path / "run").exists()


def test_a_run_folder_resumes_only_the_same_task_and_data(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    _tiny_dataset(tmp_path / "data", slices=2)
    _tiny_dataset(tmp_path / "data", slices=2, task="CT-MRI")
    _tiny_dataset(tmp_path / "other", slices=2, seed=5)  # the same names, other images
    code, text = _train_cli(capsys, "data", "run")
    assert code == 0, text
    before = {p.name: p.read_bytes() for p in (tmp_path / "run").iterdir()}
    for data, task, what in (("data", "CT-MRI", "task: PET-MRI (this command: CT-MRI)"),
                             ("other", "PET-MRI", "training/validation data: other images")):
        code, text = _train_cli(capsys, data, "run", "--epochs", "2", task=task)
        assert code == 2, text
        assert "run holds another training run" in text and what in text and "not resumed" in text
        assert {p.name: p.read_bytes() for p in (tmp_path / "run").iterdir()} == before  # nothing changed
    code, text = _train_cli(capsys, "data", "run", "--epochs", "2")  # the same run resumes
    assert code == 0, text
    assert "resumed from" in text
    assert [r["epoch"] for r in _read_log(tmp_path / "run" / "log.csv")] == ["1", "2"]


def test_training_builds_the_architecture_by_name(tmp_path, monkeypatch):
    """Training goes through the registry (registry.create_model), so another architecture trains too."""
    import ECFusionLib.training as T

    built = []
    real = T.create_model
    monkeypatch.setattr(T, "create_model", lambda name, **kw: built.append(name) or real(name, **kw))
    data = _tiny_dataset(tmp_path / "data", slices=1)
    cfg = TrainConfig(data=str(data), task="PET-MRI", out=str(tmp_path / "r"), epochs=1, batch_size=1,
                      upsample=False, steps_per_epoch=1, all_cases=True, device="cpu", threads=1)
    assert train(cfg, log=lambda *_: None).is_file() and built == ["ecfusion-v1"]
    with pytest.raises(ECFusionError, match="unknown network architecture 'nope'"):
        train(TrainConfig(**{**cfg.__dict__, "out": str(tmp_path / "r2"), "architecture": "nope"}), log=lambda *_: None)
    assert not (tmp_path / "r2").exists()


def test_a_checkpoint_of_an_older_version_is_compared_by_its_config(tmp_path):
    """Checkpoints written before runs recorded their identity: the folder's config.json names the task."""
    _tiny_dataset(tmp_path / "d", slices=2)
    _tiny_dataset(tmp_path / "d", slices=2, task="CT-MRI")
    base = dict(data=str(tmp_path / "d"), out=str(tmp_path / "run"), epochs=1, batch_size=2, upsample=False,
                steps_per_epoch=1, val_cases=["6"], device="cpu", threads=1, select_metrics=["SSIM"])
    train(TrainConfig(task="PET-MRI", **base), log=lambda *_: None)
    last = tmp_path / "run" / "last.pt"
    ck = torch.load(last, weights_only=True)
    del ck["state"]["run"]
    torch.save(ck, last)
    with pytest.raises(ECFusionError, match=r"task: PET-MRI \(this command: CT-MRI\)"):
        train(TrainConfig(task="CT-MRI", **{**base, "epochs": 2}), log=lambda *_: None)
    lines = []
    train(TrainConfig(task="PET-MRI", **{**base, "epochs": 2}), log=lines.append)
    assert any(line.startswith("resumed from") for line in lines)
