"""Issue 11: never lose or corrupt a user's data. Each case of the hostile-input run, with its expected outcome:
a clear message and exit 2 (3 for weights, 130 cancelled), inputs untouched, nothing half-written."""
from __future__ import annotations

import errno
import json
import os
import pickle
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from ECFusionLib import weights as W
from ECFusionLib.cli import main
from ECFusionLib.errors import ECFusionError, WeightsError
from ECFusionLib.file_integrity import check_complete
from ECFusionLib.fusion import FusionSettings, fuse_images
from ECFusionLib.input_checks import input_warnings
from ECFusionLib.phantom import make_phantom
from ECFusionLib.safe_files import MARKER, atomic_write, file_mode, remove_stale_temporaries, same_file
from ECFusionLib.volume_io import read_image

from conftest import SMALL
from helpers import file_digest, run_cli as run

ROOT = Path(__file__).resolve().parents[1]


def usage_error(capsys, *argv):
    """argparse refusals: SystemExit(2) with the option named, no traceback."""
    with pytest.raises(SystemExit) as exc:
        main([str(a) for a in argv])
    err = capsys.readouterr().err
    return exc.value.code, err


def fuse_args(mri, second, weights, out, task="PET-MRI"):
    return ["fuse", "--anatomical", mri, "--functional", second, "--task", task, "--output", out,
            "--weights", weights, "--device", "cpu", "--quiet"]


@pytest.fixture
def inputs(tmp_path, phantom_files):
    """Private copies of the phantom files (tests may try to destroy them)."""
    d = tmp_path / "in"
    d.mkdir()
    return {k: shutil.copy(v, d / Path(v).name) for k, v in phantom_files.items()}


def listing(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


# ------------------------------------------------------------------ data loss and silent corruption
@pytest.mark.parametrize("target", ["mri", "pet", "dotdot", "symlink", "hardlink"])
def test_output_that_is_an_input_is_refused(capsys, tmp_path, inputs, weights_file, target):
    mri, pet = Path(inputs["MRI"]), Path(inputs["PET"])
    digests = {p: file_digest(p) for p in (mri, pet)}
    (tmp_path / "in" / "sub").mkdir()
    out = {"mri": mri, "pet": pet, "dotdot": tmp_path / "in" / "sub" / ".." / mri.name,
           "symlink": tmp_path / "link.nrrd", "hardlink": tmp_path / "hard.nrrd"}[target]
    if target == "symlink":
        out.symlink_to(mri)
    if target == "hardlink":
        os.link(pet, out)
    code, text = run(capsys, *fuse_args(mri, pet, weights_file, out))
    assert code == 2 and "destroy the input" in text and "Traceback" not in text
    assert {p: file_digest(p) for p in (mri, pet)} == digests


def test_same_file_helper():
    here = Path(__file__)
    assert same_file(here, here.parent / ".." / here.parent.name / here.name)
    assert not same_file(here, here.with_name("conftest.py"))
    assert not same_file(here.with_name("no-such-file"), here)


def test_one_file_as_both_inputs_is_refused(capsys, tmp_path, inputs, weights_file):
    code, text = run(capsys, *fuse_args(inputs["MRI"], inputs["MRI"], weights_file, tmp_path / "o.nrrd"))
    assert code == 2 and "same file" in text


def _image():
    arr = (np.random.default_rng(0).random((12, 14, 16)) * 1000).astype(np.float32)
    return sitk.GetImageFromArray(arr)


TRUNCATABLE = [("a.nii", False, None), ("a.nii.gz", True, None), ("a.nrrd", False, None), ("z.nrrd", True, None),
               ("a.mha", False, None), ("z.mha", True, None), ("d.nhdr", False, "d.raw"), ("m.mhd", False, "m.raw")]


@pytest.mark.parametrize("name, compress, data", TRUNCATABLE)
@pytest.mark.parametrize("keep", [0.5, -1])
def test_truncated_images_are_refused(capsys, tmp_path, inputs, weights_file, name, compress, data, keep):
    path = tmp_path / name
    sitk.WriteImage(_image(), str(path), useCompression=compress)
    check_complete(path)  # the complete file passes
    read_image(path)
    cut = tmp_path / (data or name)
    blob = cut.read_bytes()
    cut.write_bytes(blob[: int(len(blob) * keep) if keep > 0 else len(blob) - 1])
    with pytest.raises(ECFusionError, match="incomplete"):
        check_complete(path)
    if name.endswith((".nii", ".nii.gz", ".nrrd", ".mha")):  # through the command line: exit 2, no output
        code, text = run(capsys, *fuse_args(inputs["MRI"], path, weights_file, tmp_path / "o.nrrd"))
        assert code == 2 and "incomplete" in text and not (tmp_path / "o.nrrd").exists()


def test_3d_result_to_png_is_refused(capsys, tmp_path, inputs, weights_file):
    code, text = run(capsys, *fuse_args(inputs["MRI"], inputs["PET"], weights_file, tmp_path / "o.png"))
    assert code == 2 and "PNG holds one 2D image" in text and listing(tmp_path) == listing(tmp_path)
    assert not (tmp_path / "o.png").exists()


def test_checkpoint_with_code_is_never_run(tmp_path):
    from ECFusionLib.training import load_checkpoint

    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    with open(tmp_path / "last.pt", "wb") as fh:
        pickle.dump({"model": Evil()}, fh)
    with pytest.raises(ECFusionError, match="Nothing from it was run"):
        load_checkpoint(tmp_path / "last.pt", "cpu")
    assert not marker.exists()


def _flip_tensor_byte(src: Path, dst: Path, tensor: torch.Tensor) -> None:
    blob = bytearray(src.read_bytes())
    at = bytes(blob).find(tensor.numpy().tobytes()[:64])
    assert at > 0
    blob[at + 5] ^= 0x10
    dst.write_bytes(bytes(blob))


@pytest.mark.parametrize("suffix", [".npz", ".pt"])
def test_weights_carry_a_tensor_checksum(capsys, tmp_path, seeded_model, inputs, suffix):
    good = W.save_weights(seeded_model, tmp_path / f"w{suffix}", {"task": "PET-MRI"})
    assert W.has_checksum(good)
    bad = tmp_path / f"flipped{suffix}"
    _flip_tensor_byte(good, bad, seeded_model.state_dict()["decoder.net.0.weight"])
    # .pt: the tensor checksum catches it; .npz: the zip entry's CRC already does (then the tensor checksum)
    with pytest.raises(WeightsError, match="checksum stored inside" if suffix == ".pt" else "corrupt"):
        W.load_state_dict(bad)
    code, text = run(capsys, *fuse_args(inputs["MRI"], inputs["PET"], bad, tmp_path / "o.nrrd"))
    assert code == 3 and "corrupt" in text and not (tmp_path / "o.nrrd").exists()


def test_foreign_weights_load_with_an_unverified_warning(caplog, tmp_path, seeded_model):
    path = tmp_path / "foreign.pt"
    torch.save({"architecture": "ecfusion-v1", "state_dict": seeded_model.state_dict()}, path)
    W.load_state_dict(path)
    assert "unverified" in caplog.text


def test_bundled_weights_carry_the_checksum():
    for task, entry in W.catalogue().items():
        assert W.has_checksum(W.WEIGHTS_DIR / entry["file"]), task


@pytest.mark.parametrize("version, old", [("2.5.1", True), ("2.1.0+cu121", True), ("2.6.0", False), ("2.13.0+cpu", False)])
def test_torch_older_than_2_6_is_too_old(version, old):
    assert W.torch_too_old(version) is old


@pytest.mark.slow
def test_result_does_not_depend_on_batch_size(phantom):
    model, info = W.load_model("PET-MRI")
    out = {}
    for bs in (1, 2, 3, 7, None):
        settings = FusionSettings(task="PET-MRI", device="cpu", batch_size=bs)
        res = fuse_images(phantom["MRI"], phantom["PET"], settings, model=model, weights_info=info)
        out[bs] = sitk.GetArrayFromImage(res.image).astype(int)
    ref = out[1]
    for bs, arr in out.items():
        assert np.abs(arr - ref).max() <= 1, bs


def test_phantom_is_the_same_on_every_run():
    a, b = make_phantom(SMALL, seed=3, spacing=4.5), make_phantom(SMALL, seed=3, spacing=4.5)
    for k in a:
        assert np.array_equal(sitk.GetArrayFromImage(a[k]), sitk.GetArrayFromImage(b[k])), k


# ------------------------------------------------------------------ wrong answers accepted with exit 0
@pytest.mark.parametrize("option, value", [
    ("--ct-window", "-150"), ("--ct-window", "0"), ("--ct-window", "nan"), ("--window", "inf"), ("--window", "0"),
    ("--level", "nan"), ("--level", "-inf"), ("--ct-level", "nan"), ("--batch-size", "-1"), ("--batch-size", "0"),
    ("--batch-size", "two"),
])
def test_bad_numbers_for_fuse(capsys, tmp_path, inputs, weights_file, option, value):
    code, err = usage_error(capsys, *fuse_args(inputs["MRI"], inputs["CT"], weights_file, tmp_path / "o.nrrd", "CT-MRI"),
                            option, value)
    assert code == 2 and option in err and "Traceback" not in err
    assert not (tmp_path / "o.nrrd").exists()


@pytest.mark.parametrize("option, value", [("--epochs", "0"), ("--batch-size", "0"), ("--batch-size", "-1"),
                                           ("--lr", "0"), ("--lr", "nan"), ("--threads", "0"), ("--max-minutes", "-1"),
                                           ("--ssim-weight", "-1"), ("--warmup-steps", "-5")])
def test_bad_numbers_for_train(capsys, tmp_path, option, value):
    code, err = usage_error(capsys, "train", "--data", tmp_path, "--task", "PET-MRI", "--out", tmp_path / "run",
                            option, value)
    assert code == 2 and option in err
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("field, value", [("ct_window", 0.0), ("window", float("inf")), ("level", float("nan")),
                                          ("batch_size", 0)])
def test_library_refuses_bad_numbers(phantom, seeded_model, field, value):
    with pytest.raises(ECFusionError, match="must be"):
        fuse_images(phantom["MRI"], phantom["CT"], FusionSettings(task="CT-MRI", **{field: value}), model=seeded_model)


def _shifted(img, offset):
    out = sitk.Image(img)
    out = sitk.Cast(out, sitk.sitkFloat32) + float(offset)
    out.CopyInformation(img)
    for k in img.GetMetaDataKeys():
        out.SetMetaData(k, img.GetMetaData(k))
    return out


def _no_tags(img):
    out = sitk.Image(img)
    for k in out.GetMetaDataKeys():
        out.EraseMetaData(k)
    return out


@pytest.mark.parametrize("case, task, anat, func, expect", [
    ("plausible PET", "PET-MRI", "MRI", "PET", None),
    ("plausible CT", "CT-MRI", "MRI", "CT", None),
    ("PET given to CT-MRI", "CT-MRI", "MRI", "PET", "--task PET-MRI"),
    ("CT given to PET-MRI", "PET-MRI", "MRI", "CT", "--task CT-MRI"),
    ("swapped", "PET-MRI", "PET", "MRI", "swapped"),
    ("CT not in HU", "CT-MRI", "MRI", "CT+1024", "Hounsfield"),
    ("CT as anatomical", "CT-MRI", "CT", "MRI", "anatomical"),
])
def test_implausible_inputs_warn(phantom, case, task, anat, func, expect):
    def get(name, tags):
        img = phantom[name] if name != "CT+1024" else _shifted(phantom["CT"], 1024)
        if name == "CT+1024":  # stored without the -1024 offset, on a CT's fine grid (the test phantom's is coarse)
            img.SetSpacing((0.9, 0.9, 2.0))
        return img if tags else _no_tags(img)

    for tags in (True, False):  # with DICOM-like modality tags and from the values alone
        warnings = input_warnings(task, get(anat, tags), get(func, tags))
        if expect is None:
            assert warnings == [], (case, tags)
        else:
            assert any(expect in w for w in warnings), (case, tags, warnings)


def test_a_warning_is_printed_once_on_its_own_line(capsys, tmp_path, inputs, weights_file):
    pet = sitk.ReadImage(inputs["PET"])
    pet.SetOrigin([o + 40.0 for o in pet.GetOrigin()])
    moved = tmp_path / "moved.nrrd"
    sitk.WriteImage(pet, str(moved))
    args = [a for a in fuse_args(inputs["MRI"], moved, weights_file, tmp_path / "o.nrrd") if a != "--quiet"]
    code, text = run(capsys, *args)
    assert code == 0, text
    assert text.count("misaligned") == 1
    assert any(line.startswith("ecfusion: warning: the inputs look misaligned") for line in text.splitlines())
    assert ": 0slice [" not in text  # the bar appears only once the total is known (no "fusing: 0slice [00:00, ?slice/s]")


def _png_pairs(root, sizes, task="CT-MRI", second="CT", extra_second=()):
    rng = np.random.default_rng(1)
    (root / task / second).mkdir(parents=True)
    (root / task / "MRI").mkdir(parents=True)
    for k, (s_size, m_size) in enumerate(sizes):
        name = f"9{k:03d}.png"
        sitk.WriteImage(sitk.GetImageFromArray(rng.integers(0, 255, s_size).astype(np.uint8)), str(root / task / second / name))
        sitk.WriteImage(sitk.GetImageFromArray(rng.integers(0, 255, m_size).astype(np.uint8)), str(root / task / "MRI" / name))
    for name in extra_second:
        sitk.WriteImage(sitk.GetImageFromArray(rng.integers(0, 255, (32, 32)).astype(np.uint8)), str(root / task / second / name))
    return root


def test_2d_pair_of_different_sizes_is_refused_before_anything_is_written(capsys, tmp_path, weights_file):
    root = _png_pairs(tmp_path / "pairs", [((32, 32), (32, 32)), ((32, 32), (40, 32))])
    out = tmp_path / "fused"
    code, text = run(capsys, "fuse", "--input-dir", root, "--output", out, "--weights", weights_file, "--quiet")
    assert code == 2 and "different sizes" in text and "9001" in text and "--register" not in text
    assert not out.exists()


def test_2d_outputs_have_sidecars_and_unpaired_images_are_named(capsys, tmp_path, weights_file):
    root = _png_pairs(tmp_path / "pairs", [((32, 32), (32, 32))], extra_second=["lonely.png"])
    out = tmp_path / "fused"
    code, text = run(capsys, "fuse", "--input-dir", root, "--output", out, "--weights", weights_file, "--quiet")
    assert code == 0, text
    assert "no MRI partner" in text and "lonely.png" in text
    assert listing(out) == ["CT-MRI", "CT-MRI/9000.json", "CT-MRI/9000.png"]
    assert json.loads((out / "CT-MRI" / "9000.json").read_text())["task"] == "CT-MRI"


def test_2d_run_that_fails_part_way_removes_what_it_wrote(capsys, monkeypatch, tmp_path, weights_file):
    import ECFusionLib.fusion as fusion_module

    root = _png_pairs(tmp_path / "pairs", [((32, 32), (32, 32))] * 3)
    calls = []
    real = fusion_module.fuse_images

    def interrupted(*a, **k):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(fusion_module, "fuse_images", interrupted)
    out = tmp_path / "fused"
    code, text = run(capsys, "fuse", "--input-dir", root, "--output", out, "--weights", weights_file, "--quiet")
    assert code == 130 and len(calls) == 3
    assert not out.exists()


# ------------------------------------------------------------------ tracebacks for user errors
def test_output_that_is_a_folder(capsys, tmp_path, inputs, weights_file):
    (tmp_path / "o.nrrd").mkdir()
    code, text = run(capsys, *fuse_args(inputs["MRI"], inputs["PET"], weights_file, tmp_path / "o.nrrd"))
    assert code == 2 and "existing folder" in text


def test_complex_image(capsys, tmp_path, inputs, weights_file):
    pet = sitk.ReadImage(inputs["PET"])
    cplx = sitk.RealAndImaginaryToComplex(pet, pet)
    sitk.WriteImage(cplx, str(tmp_path / "c.nrrd"))
    code, text = run(capsys, *fuse_args(inputs["MRI"], tmp_path / "c.nrrd", weights_file, tmp_path / "o.nrrd"))
    assert code == 2 and "complex-valued" in text


@pytest.mark.parametrize("command", ["2d", "demo"])
def test_folder_output_that_is_a_file(capsys, tmp_path, weights_file, command):
    existing = tmp_path / "taken"
    existing.write_text("keep me")
    args = (["fuse", "--input-dir", _png_pairs(tmp_path / "pairs", [((32, 32), (32, 32))]), "--weights", weights_file]
            if command == "2d" else ["demo"])
    code, text = run(capsys, *args, "--output", existing)
    assert code == 2 and "existing file" in text and existing.read_text() == "keep me"


def test_evaluate_csv_in_a_missing_folder(capsys, tmp_path):
    root = _png_pairs(tmp_path / "pairs", [((32, 32), (32, 32))])
    code, text = run(capsys, "evaluate", "--input-dir", root, "--fused", tmp_path, "--csv", tmp_path / "nodir" / "x.csv")
    assert code == 2 and "does not exist" in text


def test_disk_full_while_writing_the_sidecar_leaves_nothing(capsys, monkeypatch, tmp_path, inputs, weights_file):
    real = Path.write_text

    def full(self, *a, **k):
        if self.name.startswith(".o.json"):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(self, *a, **k)

    monkeypatch.setattr(Path, "write_text", full)
    out = tmp_path / "out"
    out.mkdir()
    code, text = run(capsys, *fuse_args(inputs["MRI"], inputs["PET"], weights_file, out / "o.nii.gz"))
    assert code == 2 and "No space left" in text and "Traceback" not in text
    assert listing(out) == []  # no volume without its sidecar, no temporaries


# ------------------------------------------------------------------ misleading messages
def test_messages_name_what_is_wrong_with_this_file(capsys, tmp_path, inputs, weights_file):
    def fuse(second):
        return run(capsys, *fuse_args(inputs["MRI"], second, weights_file, tmp_path / "o.nrrd"))

    folder = tmp_path / "series"
    folder.mkdir()
    code, text = fuse(folder)
    assert code == 2 and "is a folder" in text
    img = sitk.GetImageFromArray(np.random.default_rng(0).random((4, 5, 6)).astype(np.float32))
    sitk.WriteImage(img, str(tmp_path / "s.nrrd"), False)
    blob = (tmp_path / "s.nrrd").read_bytes().replace(b"(1,0,0) (0,1,0) (0,0,1)", b"(1,0,0) (1,0,0) (0,0,1)")
    (tmp_path / "s.nrrd").write_bytes(blob)
    code, text = fuse(tmp_path / "s.nrrd")
    assert code == 2 and "direction matrix" in text and "singular" in text
    (tmp_path / "g.nrrd").write_bytes(b"NRRD0004\nthis is not an image\n")
    code, text = fuse(tmp_path / "g.nrrd")
    assert code == 2 and "Use an NRRD" not in text
    (tmp_path / "g.xyz").write_bytes(b"nothing")
    code, text = fuse(tmp_path / "g.xyz")
    assert code == 2 and "Use an NRRD" in text


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their permissions")
def test_unreadable_file(capsys, tmp_path, inputs, weights_file):
    p = Path(shutil.copy(inputs["PET"], tmp_path / "locked.nrrd"))
    p.chmod(0)
    code, text = run(capsys, *fuse_args(inputs["MRI"], p, weights_file, tmp_path / "o.nrrd"))
    assert code == 2 and "Permission denied" in text and "not found" not in text


# ------------------------------------------------------------------ files left behind and file modes
@pytest.mark.parametrize("umask", [0o022, 0o027])
def test_outputs_follow_the_umask(capsys, tmp_path, inputs, weights_file, umask):
    old = os.umask(umask)
    try:
        assert file_mode() == 0o666 & ~umask
        code, text = run(capsys, *fuse_args(inputs["MRI"], inputs["PET"], weights_file, tmp_path / "o.nii.gz"))
    finally:
        os.umask(old)
    assert code == 0, text
    for name in ("o.nii.gz", "o.json"):
        assert (tmp_path / name).stat().st_mode & 0o777 == 0o666 & ~umask, name


def test_one_atomic_write_helper():
    """No other module renames temporaries or calls mkstemp for outputs (the write test in check_writable aside)."""
    offenders = []
    for path in (ROOT / "ECFusionLib").glob("*.py"):
        text = path.read_text()
        if path.name != "safe_files.py" and ("os.replace(" in text or ".partial" in text):
            offenders.append(path.name)
    assert offenders == []


SIGTERM_CHILD = """
import sys, time
from pathlib import Path
from ECFusionLib.safe_files import atomic_write, install_sigterm_handler
install_sigterm_handler()
def slow(tmp):
    Path(tmp).write_bytes(b"half")
    print("writing", flush=True)
    time.sleep(60)
try:
    atomic_write(sys.argv[1], slow)
except KeyboardInterrupt:
    sys.exit(130)
"""


def test_sigterm_during_a_write_leaves_nothing(tmp_path):
    target = tmp_path / "out.nrrd"
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.Popen([sys.executable, "-c", SIGTERM_CHILD, str(target)], stdout=subprocess.PIPE, text=True, env=env)
    assert proc.stdout.readline().strip() == "writing"
    assert any(MARKER in p.name for p in tmp_path.iterdir())  # the temporary exists while writing
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 130
    assert list(tmp_path.iterdir()) == []


def test_stale_temporaries_of_dead_processes_are_removed(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = tmp_path / f".o.nrrd{MARKER}{int(dead.stdout)}-abc.nrrd"
    stale.write_bytes(b"x")
    live = tmp_path / f".o.nrrd{MARKER}{os.getppid()}-abc.nrrd"
    live.write_bytes(b"x")
    atomic_write(tmp_path / "o.txt", lambda tmp: Path(tmp).write_text("done"))
    assert not stale.exists() and live.exists() and (tmp_path / "o.txt").read_text() == "done"
    assert remove_stale_temporaries(tmp_path) == []


def test_failed_training_leaves_no_run_folder(tmp_path):
    from ECFusionLib.training import TrainConfig, train

    from test_training import _tiny_dataset

    data = _tiny_dataset(tmp_path / "data")
    out = tmp_path / "run"
    with pytest.raises(ECFusionError, match="VGG19"):
        train(TrainConfig(data=str(data), task="PET-MRI", out=str(out), epochs=1, perceptual_weight=0.1,
                          val_cases=["6"], device="cpu"), log=lambda *_: None)
    assert not out.exists()


@pytest.mark.slow
def test_checkpoints_load_with_weights_only(tmp_path):
    from ECFusionLib.training import TrainConfig, train

    from test_training import _tiny_dataset

    data = _tiny_dataset(tmp_path / "data", slices=2)
    out = tmp_path / "run"
    train(TrainConfig(data=str(data), task="PET-MRI", out=str(out), epochs=1, batch_size=2, upsample=False,
                      val_cases=["6"], device="cpu", select_metrics=["SSIM"]), log=lambda *_: None)
    ck = torch.load(out / "last.pt", weights_only=True)
    assert set(ck) >= {"model", "optimizer", "scheduler", "sampler_rng", "torch_rng", "state"}
    assert (out / "last.pt").stat().st_mode & 0o777 == file_mode()


def test_registration_provenance_records_mode_and_parameters(capsys, tmp_path, inputs, weights_file):
    tx = sitk.Euler3DTransform((0.0, 0.0, 0.0), 0.02, -0.01, 0.03, (1.5, -2.0, 0.5))
    sitk.WriteTransform(tx, str(tmp_path / "t.tfm"))
    out = tmp_path / "o.nrrd"
    code, text = run(capsys, *fuse_args(inputs["MRI"], inputs["PET"], weights_file, out), "--transform", tmp_path / "t.tfm")
    assert code == 0, text
    reg = json.loads(sitk.ReadImage(str(out)).GetMetaData("ECFusion_registration"))
    assert reg["mode"].startswith("file ") and reg["transform"] == "Euler3DTransform"
    assert np.allclose(reg["parameters"], tx.GetParameters())


def test_rgb_nifti_is_rgb24(capsys, tmp_path, inputs, weights_file):
    nib = pytest.importorskip("nibabel")
    for name in ("o.nii.gz", "o.nrrd"):
        code, text = run(capsys, *fuse_args(inputs["MRI"], inputs["PET"], weights_file, tmp_path / name))
        assert code == 0, text
    nii = nib.load(str(tmp_path / "o.nii.gz"))
    assert int(nii.header["datatype"]) == 128 and int(nii.header["intent_code"]) == 0
    a, b = sitk.ReadImage(str(tmp_path / "o.nii.gz")), sitk.ReadImage(str(tmp_path / "o.nrrd"))
    assert a.GetNumberOfComponentsPerPixel() == 3
    assert np.array_equal(sitk.GetArrayFromImage(a), sitk.GetArrayFromImage(b))
    assert np.allclose(a.GetOrigin(), b.GetOrigin()) and np.allclose(a.GetDirection(), b.GetDirection())
    rgb = np.asanyarray(nii.dataobj)
    assert np.array_equal(np.stack([rgb["R"], rgb["G"], rgb["B"]], -1).transpose(2, 1, 0, 3), sitk.GetArrayFromImage(b))


def test_fusion_and_phantom_import_neither_scipy_nor_skimage(tmp_path, weights_file):
    code = (
        "import sys\n"
        "sys.modules['scipy'] = None; sys.modules['skimage'] = None  # importing them now fails\n"
        "from ECFusionLib.phantom import write_phantom\n"
        "from ECFusionLib.cli import main\n"
        f"p = write_phantom({str(tmp_path)!r}, size=(40, 48, 40))\n"
        f"sys.exit(main(['fuse', '--anatomical', str(p['MRI']), '--functional', str(p['PET']), '--task', 'PET-MRI',"
        f" '--output', {str(tmp_path / 'o.nrrd')!r}, '--weights', {weights_file!r}, '--device', 'cpu', '--quiet']))\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                         env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert res.returncode == 0, res.stderr
    assert (tmp_path / "o.nrrd").is_file()


def test_dependencies_in_pyproject():
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    deps = " ".join(project["dependencies"])
    # fusing needs no torch (ONNX Runtime); torch is an extra (any torch reads the .npz weights)
    assert "onnxruntime" in deps and "torch" not in deps and "scipy" not in deps and "scikit-image" not in deps
    assert project["optional-dependencies"]["torch"] == ["torch>=2.2"]
    assert any("scipy" in d for d in project["optional-dependencies"]["metrics"])
    package_data = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    assert {"weights/*.npz", "weights/*.onnx"} <= set(package_data["ECFusionLib"])


def test_help_and_evaluate_legend(capsys, tmp_path, weights_file):
    with pytest.raises(SystemExit):
        main(["fuse", "--help"])
    assert "default: auto" in capsys.readouterr().out
    root = _png_pairs(tmp_path / "pairs", [((32, 32), (32, 32))])
    code, text = run(capsys, "fuse", "--input-dir", root, "--output", tmp_path / "f", "--weights", weights_file, "--quiet")
    code, text = run(capsys, "evaluate", "--input-dir", root, "--fused", tmp_path / "f")
    assert code == 0 and "better:" in text and "Qcv lower" in text and "bg = " in text


def test_cancelled_fusion_leaves_nothing_and_exits_130(capsys, monkeypatch, tmp_path, inputs, weights_file):
    import ECFusionLib.fusion as fusion_module

    def cancelled(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(fusion_module, "fuse_images", cancelled)
    out = tmp_path / "out"
    out.mkdir()
    code, text = run(capsys, *fuse_args(inputs["MRI"], inputs["PET"], weights_file, out / "o.nii.gz"))
    assert code == 130 and listing(out) == []
    time.sleep(0)


@pytest.mark.slow
def test_register_rigid_shows_progress_time_and_provenance(capsys, tmp_path, inputs, weights_file):
    out = tmp_path / "o.nrrd"
    args = [a for a in fuse_args(inputs["MRI"], inputs["PET"], weights_file, out) if a != "--quiet"]
    code, text = run(capsys, *args, "--register", "rigid")
    assert code == 0, text
    assert "registering (rigid)" in text and "registration rigid included" in text
    reg = json.loads(sitk.ReadImage(str(out)).GetMetaData("ECFusion_registration"))
    assert reg["mode"] == "rigid" and len(reg["parameters"]) == 6 and len(reg["fixed_parameters"]) >= 3
