"""Python 3.9 check (Slicer 5.8 runs Python 3.9 with numpy 1.26.4 and SimpleITK 2.3.1): run it with that Python.

    scripts/check_python39.sh            # makes the venv with pyenv's 3.9 and the pins, then runs this file

pyproject.toml says requires-python >= 3.10 for the pip package (the command line, training, Dask batches); the
Slicer module ships ECFusionLib's files beside itself and must work on Slicer 5.8's Python 3.9. This check, with
neither torch, tqdm, dask nor pydicom installed:

1. byte-compiles every file of ECFusionSlicer/, ECFusionLib/ and scripts/ with Python 3.9 (syntax);
2. imports the torch-free modules the module and the fusion pipeline use, and the module's dependency policy;
3. runs the pipeline around the network on the phantom (resample onto the MRI grid, intensity mapping,
   colour, keep-salient, recolour, write and read back as NRRD), with the network's output replaced by the
   average of the two Y channels;
4. runs the ONNX Runtime backend end to end (``fuse_images(..., backend="onnxruntime")``) where this
   ECFusionLib has it and onnxruntime is installed; says so when it does not.

Prints one line per step and "python39 check: N passed, 0 failed"; exits 1 on the first failure.
"""
from __future__ import annotations

import importlib
import py_compile
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "ECFusionSlicer")]
TORCH_FREE = ["ECFusionLib.tasks", "ECFusionLib.errors", "ECFusionLib.colour", "ECFusionLib.intensity",
              "ECFusionLib.geometry", "ECFusionLib.salient", "ECFusionLib.registration", "ECFusionLib.phantom",
              "ECFusionLib.volume_io", "ECFusionLib.runtime", "ECFusionSlicerLib.dependencies"]
ABSENT = ["torch", "tqdm", "dask", "pydicom"]


def compile_all() -> str:
    files = [p for d in ("ECFusionSlicer", "ECFusionLib", "scripts") for p in sorted((ROOT / d).rglob("*.py"))]
    for f in files:
        py_compile.compile(str(f), doraise=True, cfile=str(Path(tempfile.gettempdir()) / "ecf39.pyc"))
    return f"{len(files)} files compile"


def imports() -> str:
    present = [m for m in ABSENT if importlib.util.find_spec(m) is not None]
    assert not present, f"this check must run without {present}"
    for name in TORCH_FREE:
        importlib.import_module(name)
    assert "torch" not in sys.modules
    return f"{len(TORCH_FREE)} modules import without torch"


def pipeline() -> str:
    """Everything around the network, on the phantom, as fusion.fuse_images chains it."""
    import numpy as np
    import SimpleITK as sitk

    from ECFusionLib.colour import luminance, recolour
    from ECFusionLib.geometry import resample_onto
    from ECFusionLib.intensity import map_functional, map_mri
    from ECFusionLib.phantom import make_phantom
    from ECFusionLib.salient import keep_salient
    from ECFusionLib.tasks import task_of_modality

    ph = make_phantom(size=(40, 48, 40), seed=3, spacing=4.5)
    pet = resample_onto(ph["PET"], ph["MRI"])
    mri_y, _ = map_mri(sitk.GetArrayFromImage(ph["MRI"]))
    pet_rgb, pet_y, _ = map_functional(sitk.GetArrayFromImage(pet), "PET")
    fused_y = ((mri_y.astype(np.float32) + pet_y) / 2).astype(np.uint8)  # stands in for the network
    fused_y = keep_salient(fused_y, pet_y, task_of_modality("PET"), anatomical=mri_y)
    rgb = recolour(fused_y, pet_rgb)
    out = sitk.GetImageFromArray(rgb, isVector=True)
    out.CopyInformation(ph["MRI"])
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "fused.nrrd"
        sitk.WriteImage(out, str(path))
        back = sitk.GetArrayFromImage(sitk.ReadImage(str(path)))
    assert back.shape == (40, 48, 40, 3) and back.dtype == np.uint8 and np.array_equal(back, rgb)
    assert abs(float(luminance(rgb).mean()) - float(fused_y.mean())) < 2
    return f"phantom 40x48x40 resampled, mapped, recoloured, written: mean {float(rgb.mean()):.1f}"


def onnx_backend() -> str:
    from ECFusionSlicerLib.dependencies import installed_version, library_backends

    if "onnxruntime" not in library_backends():
        return "skipped: this ECFusionLib has no ONNX Runtime backend yet"
    if installed_version("onnxruntime") is None:
        return "skipped: onnxruntime is not installed"
    import numpy as np
    import SimpleITK as sitk

    from ECFusionLib.fusion import FusionSettings, fuse_images
    from ECFusionLib.phantom import make_phantom
    from ECFusionLib.tasks import task_of_modality

    ph = make_phantom(size=(40, 48, 40), seed=3, spacing=4.5)
    result = fuse_images(ph["MRI"], ph["PET"], FusionSettings(task=task_of_modality("PET"), device="cpu", backend="onnxruntime"))
    arr = sitk.GetArrayFromImage(result.image)
    assert arr.shape == (40, 48, 40, 3) and float(np.mean(arr)) > 1 and "torch" not in sys.modules
    return f"ONNX Runtime {installed_version('onnxruntime')} fused the phantom without torch"


def main() -> int:
    assert sys.version_info[:2] == (3, 9), f"run this with Python 3.9, not {sys.version.split()[0]}"
    import numpy
    import SimpleITK

    print(f"python {sys.version.split()[0]}, numpy {numpy.__version__}, SimpleITK {SimpleITK.Version_VersionString()}")
    passed = 0
    for step in (compile_all, imports, pipeline, onnx_backend):
        try:
            print(f"{step.__name__}: {step()}")
            passed += 1
        except Exception as exc:  # noqa: BLE001 - reported, then the check fails
            print(f"{step.__name__}: FAILED {type(exc).__name__}: {exc}")
            print(f"python39 check: {passed} passed, 1 failed")
            return 1
    print(f"python39 check: {passed} passed, 0 failed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
