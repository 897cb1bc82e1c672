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


def _tiny_dataset(root, cases=("5", "6"), slices=3, size=128, seed=0):
    """Blobs in two modalities: PET-like RGB (heat colours) and MRI-like grey, 128x128, layout <root>/PET-MRI/..."""
    from ECFusionLib.intensity import map_functional

    rng = np.random.default_rng(seed)
    (root / "PET-MRI" / "PET").mkdir(parents=True)
    (root / "PET-MRI" / "MRI").mkdir(parents=True)
    y, x = np.mgrid[0:size, 0:size]
    for c in cases:
        for s in range(slices):
            cy, cx = rng.uniform(40, 88, 2)
            head = ((y - cy) / 45) ** 2 + ((x - cx) / 38) ** 2 < 1
            mri = (head * (120 + 60 * np.sin(x / 5.0 + s))).clip(0, 255).astype(np.uint8)
            pet = head * np.exp(-((y - cy - 10) ** 2 + (x - cx) ** 2) / 200.0) * 10
            rgb, _, _ = map_functional(pet, "PET", "PET-Heat", 10, 5)
            name = f"{c}{s:03d}.png"
            sitk.WriteImage(sitk.GetImageFromArray(mri), str(root / "PET-MRI" / "MRI" / name))
            sitk.WriteImage(sitk.GetImageFromArray(rgb, isVector=True), str(root / "PET-MRI" / "PET" / name))
    return root


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
