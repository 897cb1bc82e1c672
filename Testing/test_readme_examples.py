"""Every example of README.md, run as written: read from the README at test time (Testing/readme_examples.py),
split as the shell splits it, run from a user's working folder (a temporary folder, the current directory) that
holds the files the example names, made from the small phantom (40 x 48 x 40 MRI at 4.5 mm; never copied data).

Each example is either run here (RUN: key -> the test that runs it) or named as not runnable here, with why
(NOT_RUN). ``test_every_example_is_run_or_listed`` fails for an example in neither list (a new README example needs
a test) and for a listed one the README no longer has. The ``ecfusion`` commands run in this process
(``ECFusionLib.cli.main``, as the console script does); ``python scripts/...`` lines run in a subprocess from the
user's folder, where ``scripts`` is a link to the repository's (the README runs them from the repository root).
"""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from ECFusionLib.cli import COMMANDS, main
from ECFusionLib.fuse_files import recorded_metadata
from ECFusionLib.phantom import make_phantom

from dicom_helpers import write_series
from helpers import tiny_pairs
from readme_examples import (ROOT, argv, example, expand_ellipsis, readme_examples, with_optional,
                             without_optional)

FIRST = "python3 -m venv .venv && .venv/bin/pip install torch==2.13.0 -e . && .venv/bin/ecfusion demo"
FUSE_PET = "ecfusion fuse --anatomical MRI.nii.gz --functional PET.nii.gz --task PET-MRI --output fused.nrrd"
FUSE_SPECT = ("ecfusion fuse --anatomical MRI.nrrd --functional SPECT.nrrd --task SPECT-MRI --colormap PET-Rainbow2 "
              "--window 40 --level 20 --output fused.nrrd")
FUSE_CT = ("ecfusion fuse --anatomical MRI.nii.gz --functional CT.nii.gz --task CT-MRI --ct-window 1800 "
           "--ct-level 400 --output fused.nii.gz")
FUSE_2D = "ecfusion fuse --input-dir pairs/ --output fused_pngs/"
EVALUATE = "ecfusion evaluate --input-dir pairs/ --fused fused_pngs/ --baselines"
EVALUATE_CHECKS = "ecfusion evaluate ... --checks"
REGISTER = "ecfusion register --anatomical MRI.nii.gz --functional PET.nii.gz --output pet_to_mri.tfm [--mode affine]"
FUSE_REGISTER = "ecfusion fuse ... --register rigid"
TRAIN = "ecfusion train --data pairs/ --task PET-MRI --out runs/pet"
DICOM_TASK = "ecfusion fuse --anatomical study/T1/ --functional study/PET/ --output fused.nrrd"
DICOM_UIDS = ("ecfusion fuse --anatomical study/ --anatomical-series 1.2.840...7 --functional study/ "
              "--functional-series 1.2.840...9 --output fused.nrrd")
DICOM_SUV = "ecfusion fuse --anatomical T1/ --functional PET/ --pet-units suv --window 6 --level 3 --output fused.nrrd"
BATCH = ("ecfusion batch cohort.csv --output-dir fused/ [--workers N] [--threads T] [--device auto|cpu|cuda] "
         "[--backend auto|torch|onnxruntime] [--weights PATH | --model NAME] [--force]")
MANIFEST = "id,anatomical,functional,task,window,level,functional_series"
SLICER_SCRIPT = "python scripts/slicer_batch_fuse.py --anatomical MRI.nrrd --functional PET.nrrd --output fused.nrrd"
SLICER_USAGE = "python scripts/slicer_batch_fuse.py --usage"

RUN = {  # README example -> the test that runs it
    FIRST: "test_first_command_ecfusion_demo (its `ecfusion demo`; the install is what CI does)",
    "ecfusion demo --task SPECT-MRI": "test_demo_other_tasks",
    "ecfusion models": "test_demo_other_tasks",
    FUSE_PET: "test_fuse_volumes", FUSE_SPECT: "test_fuse_volumes", FUSE_CT: "test_fuse_volumes",
    FUSE_2D: "test_2d_pairs_fuse_then_evaluate", EVALUATE: "test_2d_pairs_fuse_then_evaluate",
    EVALUATE_CHECKS: "test_2d_pairs_fuse_then_evaluate",
    REGISTER: "test_register_then_fuse", FUSE_REGISTER: "test_register_then_fuse",
    TRAIN: "test_train_starts_and_stops_cleanly",
    DICOM_TASK: "test_dicom_task_from_modality", DICOM_SUV: "test_dicom_pet_units_suv",
    BATCH: "test_batch_with_the_readme_manifest", MANIFEST: "test_batch_with_the_readme_manifest",
    "import ECFusionLib": "test_python_api_block, test_import_is_light",
    "import ECFusionSlicer": "test_slicer_console_block",
    SLICER_SCRIPT: "test_slicer_batch_script", SLICER_USAGE: "test_slicer_batch_script",
}
NOT_RUN = {  # README example -> why it does not run here
    "python3 -m venv .venv && .venv/bin/pip install -q torch==2.13.0 -e \".[test]\" && .venv/bin/python -m pytest "
    "Testing -q -p no:cacheprovider": "installs from PyPI; the test suite it runs is the one this file is part of",
    "pip install -e .": "an installation (CI installs the package the same way, with the test extra)",
    "pip install torch --index-url https://download.pytorch.org/whl/cu126": "a CUDA build of torch: needs a GPU",
    "pip install -e \".[torch]\"": "an installation", "pip install -e \".[train]\"": "an installation",
    "pip install": "names pip (what not to do inside Slicer)", "git clone": "names git",
    "pytest Testing": "the test suite itself", "pytest Testing -m \"not slow\"": "the test suite itself (quick run)",
    "ecfusion train --architecture NAME": "an option of the train example above, with a placeholder (NAME); "
                                          "Testing/test_training.py trains other architectures",
    DICOM_UIDS: "placeholder UIDs (1.2.840...7): run with a study's own UIDs put in by "
                "Testing/test_dicom_safety.py::test_readme_example_one_folder_two_series",
    "ecfusion batch cohort.csv --output-dir fused/ --scheduler tcp://10.0.0.5:8786":
        "needs a running Dask cluster at that address; Testing/test_batch.py runs --scheduler on a LocalCluster",
    "from dask_jobqueue import SLURMCluster": "needs a SLURM cluster and dask-jobqueue (not installed: a recipe)",
    "Slicer --no-splash --no-main-window --python-script scripts/slicer_batch_fuse.py --anatomical MRI.nrrd "
    "--functional PET.nrrd --output fused.nrrd [--task PET-MRI] [--device cpu] [--precision fp32] "
    "[--backend onnxruntime] [--no-keep-salient]": "needs the Slicer application; the same script runs under "
                                                   "plain Python in test_slicer_batch_script",
    "python scripts/benchmark.py --registration": "a benchmark: a 256x256x180 registration, minutes on 2 cores",
    "python scripts/benchmark.py --quick": "a benchmark: 1-2 minutes on 2 cores, timings are its result",
    "python scripts/benchmark.py --device cuda": "needs a CUDA GPU",
    "python scripts/benchmark_batch.py --rows 8 --size 64 --workers 1 2": "a benchmark: two Dask clusters, minutes",
    "python scripts/render_slicer_views.py": "rewrites docs/figures in the repository",
    "python scripts/make_figures.py": "rewrites docs/figures in the repository, from the real scans (minutes)",
    "python scripts/export_onnx.py": "rewrites the shipped graphs ECFusionLib/weights/*.onnx (a maintainer's step)",
    "python scripts/release_weights.py --task T --run RUN [--name NAME] [--default]":
        "placeholders (T, RUN) and it writes into the repository's model catalogue (a maintainer's step)",
    "python scripts/cross_validate.py --data ../shared/data/aanlib --cache /tmp/ecf-cv": "trains every fold: hours",
    "bash scripts/gpu_train.sh --data .gpu_data/aanlib.npz": "GPU training (paper schedule)",
    "python scripts/compare_backends.py --anatomical T1 ... --functional PET ... --functional SPECT ...":
        "placeholders (T1 ...): the real heads of ../shared/data/real3d, both backends, minutes",
    "python scripts/benchmark_memory.py --anatomical T1.nii.gz --functional PET.nii.gz --task PET-MRI "
    "[--size 512x512x300]": "a memory benchmark (peak RSS of whole runs on large volumes), minutes",
    "ecfusion train --init-weights bundled": "an option of the train example above (fine-tuning from the bundled "
                                             "weights runs in Testing/test_training.py)",
}
NAMES = {"ecfusion"} | {f"ecfusion {c}" for c in COMMANDS if c != "models"}  # prose naming a program or command

VOLUMES = {  # a volume file a README example names -> the phantom image written there
    "MRI.nii.gz": "MRI", "MRI.nrrd": "MRI", "T1.nii.gz": "MRI", "PET.nii.gz": "PET", "PET.nrrd": "PET",
    "CT.nii.gz": "CT", "SPECT.nrrd": "SPECT",
}
MODALITY = {"MRI": "MR", "PET": "PT", "CT": "CT", "SPECT": "NM"}
UID_ROOT = "1.2.826.0.1.3680043.2.1125.7."


# ----------------------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def head() -> dict[str, sitk.Image]:
    """The small phantom (MRI 40 x 48 x 40 at 4.5 mm; CT, PET, SPECT on their own grids)."""
    return make_phantom(size=(40, 48, 40), seed=3, spacing=4.5)


@pytest.fixture
def user(tmp_path, monkeypatch, head):
    """A user's working folder (the current directory) and a function that puts there the files an example
    names: ``user("MRI.nii.gz", "pairs/", "study/T1/")``. Folders ending in ``/`` other than pairs/ are DICOM
    series (``dicom=`` maps them to a phantom image)."""
    monkeypatch.chdir(tmp_path)

    def make(*names, dicom: dict | None = None, uids: dict | None = None):
        for name in names:
            if name == "pairs/":
                for task in ("PET-MRI", "CT-MRI"):
                    tiny_pairs(Path("pairs"), cases=("5", "6"), slices=1, size=128, task=task)
            elif name in VOLUMES:
                Path(name).parent.mkdir(parents=True, exist_ok=True)
                sitk.WriteImage(head[VOLUMES[name]], name)
        for i, (folder, key) in enumerate((dicom or {}).items()):
            uid = (uids or {}).get(folder) or f"{UID_ROOT}{i + 1}"
            write_series(head[key], folder, modality=MODALITY[key], series_uid=uid, description=key,
                         file_prefix=key, per_slice_slope=key == "PET")
        return tmp_path

    return make


def ecfusion(capsys, command: str) -> tuple[int, str]:
    """``command`` (``ecfusion ...``, as written) in this process: (exit code, stdout + stderr)."""
    words = argv(command)
    assert Path(words[0]).name == "ecfusion", command
    code = main(words[1:])
    out = capsys.readouterr()
    return code, out.out + out.err


def python_script(command: str, timeout=300) -> subprocess.CompletedProcess:
    """``python scripts/...`` (as written) from the current folder, ``scripts`` linked to the repository's."""
    words = argv(command)
    assert words[0] == "python" and words[1].startswith("scripts/"), command
    if not Path("scripts").exists():
        Path("scripts").symlink_to(ROOT / "scripts", target_is_directory=True)
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    return subprocess.run([sys.executable, *words[1:]], capture_output=True, text=True, env=env, timeout=timeout)


def assert_fused(path, grid: sitk.Image, rgb: bool) -> sitk.Image:
    """``path`` is a fused volume on ``grid`` (size, spacing, origin, direction): RGB uint8 or grey uint8."""
    out = sitk.ReadImage(str(path))
    assert out.GetSize() == grid.GetSize()
    for a, b in ((out.GetSpacing(), grid.GetSpacing()), (out.GetOrigin(), grid.GetOrigin()),
                 (out.GetDirection(), grid.GetDirection())):
        assert np.allclose(a, b, atol=1e-4), (a, b)
    assert out.GetPixelID() == (sitk.sitkVectorUInt8 if rgb else sitk.sitkUInt8), out.GetPixelIDTypeAsString()
    assert out.GetNumberOfComponentsPerPixel() == (3 if rgb else 1)
    assert sitk.GetArrayViewFromImage(out).max() > 0  # not an empty image
    return out


def hidden(folder) -> list[str]:
    """Temporaries (hidden files) left in ``folder``."""
    return sorted(str(p) for p in Path(folder).rglob(".*"))


# ----------------------------------------------------------------------------------------------- the list
def test_every_example_is_run_or_listed():
    """A README example that is neither run here nor listed as not runnable fails: add a test for it (or, if it
    cannot run here, a reason to NOT_RUN). A listed example the README no longer has fails too."""
    keys = {e.key for e in readme_examples() if e.key not in NAMES}
    assert not set(RUN) & set(NOT_RUN)
    untested = sorted(keys - set(RUN) - set(NOT_RUN))
    assert not untested, f"README examples that no test runs or lists: {untested}"
    gone = sorted((set(RUN) | set(NOT_RUN)) - keys)
    assert not gone, f"listed here but no longer in README.md: {gone}"


def test_the_list_finds_new_examples():
    """The extraction sees a new command line, a new block and a new inline command (so the test above fails)."""
    text = ("# X\n```bash\necfusion fuse --new   # a comment\nsomething \\\n  continued\n```\n\n```python\n"
            "import new_thing\n```\nRun `python scripts/new.py --x\n1` or `scripts/file.py` (a name), ``a.b`` `bash x`.\n")
    assert [(e.kind, e.key) for e in readme_examples(text)] == [
        ("bash", "ecfusion fuse --new"), ("bash", "something continued"), ("python", "import new_thing"),
        ("inline", "python scripts/new.py --x 1"), ("inline", "bash x")]


# ----------------------------------------------------------------------------------------------- ecfusion
@pytest.mark.slow
def test_first_command_ecfusion_demo(capsys, user):
    """The README's first command ends in `ecfusion demo` (after the install): from an empty folder it writes the
    full-size phantom and the fused PET-MRI, as the README says."""
    command = example(FIRST).key
    assert command.split(" && ")[-1] == ".venv/bin/ecfusion demo"
    code, text = ecfusion(capsys, command.split(" && ")[-1])
    assert code == 0, text
    names = sorted(p.name for p in Path("demo_output").iterdir())
    assert names == ["fused_pet-mri.nrrd"] + [f"phantom_{m}.nrrd" for m in ("ct", "mri", "pet", "spect")]
    assert_fused("demo_output/fused_pet-mri.nrrd", sitk.ReadImage("demo_output/phantom_mri.nrrd"), rgb=True)
    assert hidden(".") == []


def test_demo_other_tasks(capsys, user, head):
    """`ecfusion demo --task SPECT-MRI` and `--task CT-MRI` (the README's next sentence) reuse the phantom the first
    demo wrote (here: the small one) and fuse the other pairs; `ecfusion models` lists the bundled models."""
    Path("demo_output").mkdir()
    for key, img in head.items():
        sitk.WriteImage(img, f"demo_output/phantom_{key.lower()}.nrrd")
    command = example("ecfusion demo --task SPECT-MRI").key
    for cmd, task, rgb in ((command, "spect-mri", True), (command.replace("SPECT-MRI", "CT-MRI"), "ct-mri", False)):
        code, text = ecfusion(capsys, cmd)
        assert code == 0, text
        assert_fused(f"demo_output/fused_{task}.nrrd", head["MRI"], rgb=rgb)
    code, text = ecfusion(capsys, example("ecfusion models").key)
    assert code == 0, text
    for name in ("ecfusion-v1.ct-mri", "ecfusion-v1.pet-mri", "ecfusion-v1.spect-mri"):
        assert name in text


@pytest.mark.parametrize("command, functional, rgb, output", [(FUSE_PET, "PET.nii.gz", True, "fused.nrrd"),
                                                              (FUSE_SPECT, "SPECT.nrrd", True, "fused.nrrd"),
                                                              (FUSE_CT, "CT.nii.gz", False, "fused.nii.gz")])
def test_fuse_volumes(capsys, user, head, command, functional, rgb, output):
    words = argv(example(command).key)
    anatomical = words[words.index("--anatomical") + 1]
    user(anatomical, functional)
    code, text = ecfusion(capsys, command)
    assert code == 0, text
    assert_fused(output, sitk.ReadImage(anatomical), rgb=rgb)
    task = words[words.index("--task") + 1]
    assert recorded_metadata(output)["task"] == task  # NRRD header keys, or fused.json beside the NIfTI
    assert hidden(".") == []


def test_2d_pairs_fuse_then_evaluate(capsys, user):
    """The 2D example, then `evaluate` with the baselines, then `evaluate ... --checks` (the README's `...`: the
    arguments of the `evaluate` example above it)."""
    user("pairs/")
    code, text = ecfusion(capsys, example(FUSE_2D).key)
    assert code == 0, text
    for task in ("PET-MRI", "CT-MRI"):
        for name in ("5000", "6000"):
            png = sitk.ReadImage(f"fused_pngs/{task}/{name}.png")
            assert png.GetSize() == (128, 128)
            assert png.GetNumberOfComponentsPerPixel() == (3 if task == "PET-MRI" else 1)
    code, text = ecfusion(capsys, example(EVALUATE).key)
    assert code == 0, text
    assert "Qabf" in text and "pixel-max" in text.lower()
    checks = expand_ellipsis(example(EVALUATE_CHECKS).key, readme_examples())
    assert checks == EVALUATE + " --checks"
    code, text = ecfusion(capsys, checks)
    assert code == 0, text
    assert "bone_kept" in text and "hot_kept" in text


@pytest.mark.slow
def test_register_then_fuse(capsys, user, head):
    """`ecfusion register` without and with `[--mode affine]`, then `ecfusion fuse ... --register rigid` and
    its alternative in the comment, `--transform pet_to_mri.tfm` (`...`: the first `fuse` example's arguments)."""
    user("MRI.nii.gz", "PET.nii.gz")
    register = example(REGISTER).key
    for command, kind in ((with_optional(register), "Affine"), (without_optional(register), "Euler3D")):
        code, text = ecfusion(capsys, command)
        assert code == 0, text
        transform = sitk.ReadTransform("pet_to_mri.tfm")
        assert kind in transform.GetName() or kind in open("pet_to_mri.tfm").read()
    fuse = example(FUSE_REGISTER)
    assert fuse.comment == "or --transform pet_to_mri.tfm"
    for command in (fuse.key, fuse.key.replace("--register rigid", fuse.comment.split(" ", 1)[1])):
        full = expand_ellipsis(command, readme_examples())
        assert full.startswith(FUSE_PET)
        code, text = ecfusion(capsys, full)
        assert code == 0, text
        assert_fused("fused.nrrd", head["MRI"], rgb=True)
        assert recorded_metadata("fused.nrrd")["registration"]["mode"] in ("rigid", "file pet_to_mri.tfm")
        Path("fused.nrrd").unlink()


@pytest.mark.slow
def test_train_starts_and_stops_cleanly(user):
    """`ecfusion train` as written (50 epochs at 256 x 256: minutes per epoch here) runs its first epoch on the
    2D pairs and stops on SIGTERM: exit 130, a checkpoint to resume from, the epoch's row in log.csv."""
    user()
    tiny_pairs(Path("pairs"), cases=("5", "6"), slices=4, size=128, task="PET-MRI")  # 4 training pairs: one batch
    words = argv(example(TRAIN).key)
    env = dict(os.environ, OMP_NUM_THREADS="2", PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.Popen([sys.executable, "-m", "ECFusionLib.cli", *words[1:]], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env=env)
    log, last = Path("runs/pet/log.csv"), Path("runs/pet/last.pt")  # last.pt: written (atomically) after the log row
    deadline = time.monotonic() + 600
    while proc.poll() is None and time.monotonic() < deadline and not last.is_file():
        time.sleep(0.5)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 130, out
    assert "Traceback" not in out and "terminated" in out
    assert log.read_text().splitlines()[1].startswith("1,")
    assert last.is_file() and hidden("runs") == []


# ----------------------------------------------------------------------------------------------- DICOM
@pytest.mark.slow
def test_dicom_task_from_modality(capsys, user, head):
    user(dicom={"study/T1/": "MRI", "study/PET/": "PET"})
    code, text = ecfusion(capsys, example(DICOM_TASK).key)
    assert code == 0, text
    assert_fused("fused.nrrd", head["MRI"], rgb=True)
    assert recorded_metadata("fused.nrrd")["task"] == "PET-MRI"  # from the PET's Modality (PT)


@pytest.mark.slow
def test_dicom_pet_units_suv(capsys, user, head):
    """`--pet-units suv` on a DICOM PET with its dose tags (70 kg, 370 MBq F-18, injected an hour before)."""
    pydicom = pytest.importorskip("pydicom")
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence

    user(dicom={"T1/": "MRI", "PET/": "PET"})
    for path in Path("PET").iterdir():
        ds = pydicom.dcmread(path)
        ds.PatientWeight, ds.Units, ds.DecayCorrection = "70", "BQML", "START"
        ds.SeriesDate, ds.SeriesTime = "20260101", "101500"
        item = Dataset()
        item.RadionuclideTotalDose, item.RadionuclideHalfLife, item.RadiopharmaceuticalStartTime = "370e6", "6586.2", "091500"
        ds.RadiopharmaceuticalInformationSequence = Sequence([item])
        ds.save_as(path)
    code, text = ecfusion(capsys, example(DICOM_SUV).key)
    assert code == 0, text
    assert_fused("fused.nrrd", head["MRI"], rgb=True)
    assert recorded_metadata("fused.nrrd")["functional_units"]["units"] == "SUVbw"


# ----------------------------------------------------------------------------------------------- batch
@pytest.mark.slow
def test_batch_with_the_readme_manifest(capsys, user, head):
    """The README's manifest saved as cohort.csv, its files made (sub-03/dicom/ holds an MR and the PET series
    of the UID in the manifest), then `ecfusion batch cohort.csv --output-dir fused/` (the optional parts left
    out): every row fused, the report written."""
    Path("cohort.csv").write_text(example(MANIFEST, kind="csv").text + "\n", encoding="utf-8")
    rows = [line.split(",") for line in example(MANIFEST, kind="csv").text.splitlines()[1:]]
    assert [r[0] for r in rows] == ["sub-01", "sub-02", "sub-03"]
    sub3_uid = rows[2][6]
    user(dicom={"sub-02/dicom/T1/": "MRI", "sub-02/dicom/PET/": "PET", "sub-03/dicom/": "PET"},
         uids={"sub-03/dicom/": sub3_uid})
    write_series(head["MRI"], "sub-03/dicom/", modality="MR", series_uid=UID_ROOT + "30", description="T1",
                 file_prefix="MR")  # a second series in that folder: the manifest's UID chooses
    for name, key in (("sub-01/T1.nii.gz", "MRI"), ("sub-01/pet.nii.gz", "PET"), ("sub-03/T1.nrrd", "MRI")):
        Path(name).parent.mkdir(parents=True, exist_ok=True)
        sitk.WriteImage(head[key], name)
    command = without_optional(example(BATCH).key)
    assert command == "ecfusion batch cohort.csv --output-dir fused/"
    code, text = ecfusion(capsys, command)
    assert code == 0, text
    report = Path("fused/report.csv").read_text().splitlines()
    assert len(report) == 4 and all(",ok," in line for line in report[1:]), report
    for row in ("sub-01", "sub-02", "sub-03"):
        assert_fused(f"fused/{row}.nrrd", head["MRI"], rgb=True)
    assert Path("fused/report.html").is_file()


# ----------------------------------------------------------------------------------------------- Python
def test_import_is_light(user):
    """`import ECFusionLib` (inline) loads neither torch nor SimpleITK, as the README says."""
    code = example("import ECFusionLib", kind="inline").key + "; import sys; print(sorted({'torch', 'SimpleITK'} & set(sys.modules)))"
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert res.returncode == 0 and res.stdout.strip() == "[]", res.stdout + res.stderr


@pytest.mark.slow
def test_python_api_block(capsys, user, head):
    """The Python API block, executed as written in the user's folder. Its `mri_image` and `ct_image` are the
    reader's own images (here the phantom's); every path it names is made first."""
    block = example("import ECFusionLib", kind="python").text
    user("T1.nii.gz", "PET.nii.gz", "pairs/", dicom={"sub-01/mri/": "MRI", "sub-01/pet/": "PET"})
    namespace = {"__name__": "__main__", "mri_image": head["MRI"], "ct_image": head["CT"]}
    exec(compile(block, "README.md (Python API)", "exec"), namespace)
    printed = capsys.readouterr().out.splitlines()
    assert any(re.fullmatch(r"[0-9a-f]{64}", p) for p in printed), printed  # the weights' SHA-256
    assert any(re.fullmatch(r"\d+/\d+", p) for p in printed)  # the progress callback
    assert_fused("sub-01_fused.nrrd", head["MRI"], rgb=True)
    done = namespace["done"]
    assert Path(done.output).resolve() == Path("sub-01_fused.nrrd").resolve() and done.task == "PET-MRI"
    assert namespace["fused"].GetNumberOfComponentsPerPixel() == 1  # the CT-MRI result: grey
    assert sorted(p.name for p in Path("fused_pngs/PET-MRI").glob("*.png")) == ["5000.png", "6000.png"]
    assert namespace["rows"]


# ----------------------------------------------------------------------------------------------- Slicer
@pytest.mark.slow
def test_slicer_batch_script(user, head):
    """`python scripts/slicer_batch_fuse.py ...` under plain Python (slicer-core), and its `--usage`."""
    pytest.importorskip("slicer_core")
    user("MRI.nrrd", "PET.nrrd")  # as a user's files: no DICOM modality in them (the task comes from the name)
    res = python_script(example(SLICER_SCRIPT).key)
    assert res.returncode == 0, res.stdout + res.stderr
    assert_fused("fused.nrrd", head["MRI"], rgb=True)
    res = python_script(example(SLICER_USAGE).key, timeout=120)
    assert res.returncode == 0 and "--anatomical" in res.stdout, res.stdout + res.stderr


@pytest.mark.slow
def test_slicer_console_block(user, head):
    """The Slicer console block, executed as written in a Slicer-like Python: Slicer's own `slicer.util` (from
    ../shared/slicer-source) with slicer-core's MRML (Testing/readme_slicer_console.py), a scene holding the
    phantom as volumes named `T1`, `PET` (shown with PET-Heat) and `CT`."""
    pytest.importorskip("slicer_core")
    from test_slicer_widget_on_slicer_source import RELEASES, SOURCE

    if not RELEASES:
        pytest.skip(f"no Slicer sources in {SOURCE}")
    user()
    Path("console.py").write_text(example("import ECFusionSlicer", kind="python").text, encoding="utf-8")
    env = dict(os.environ, OMP_NUM_THREADS="2", PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    res = subprocess.run([sys.executable, str(Path(__file__).with_name("readme_slicer_console.py")),
                          str(SOURCE / RELEASES[-1]), "console.py"], capture_output=True, text=True, env=env, timeout=600)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    lines = res.stdout.splitlines()
    assert any(re.fullmatch(r"[0-9a-f]{64}", p) for p in lines), lines  # the block's provenance print
    assert any(re.fullmatch(r"\d+/\d+", p) for p in lines)  # its progress callback
    made = json.loads(next(p for p in lines if p.startswith("RESULT ")).split(" ", 1)[1])
    block = example("import ECFusionSlicer", kind="python").text
    assert len(made) == block.count("logic.process(")  # one new volume per call, each on the MRI grid
    assert all(m["dimensions"] == list(head["MRI"].GetSize()) for m in made), made
    assert made[0]["colorNode"] == "PET-Heat"  # `process(mri, pet)`: the PET's colours as shown
    if "PET-Rainbow2" in block:  # the colour node the block gives as an override
        assert "PET-Rainbow2" in [m["colorNode"] for m in made[1:]], made
    for m in made:  # PET/SPECT: RGB; CT-MRI (no colour node): grey
        assert m["class"] == ("vtkMRMLVectorVolumeNode" if m["colorNode"] else "vtkMRMLScalarVolumeNode"), made
