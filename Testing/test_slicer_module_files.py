"""The extension's build files and widget resources agree with the code (the desktop app cannot run here)."""
import ast
import json
import re
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import SimpleITK as sitk

ROOT = Path(__file__).resolve().parents[1]
MODULE = ROOT / "ECFusionSlicer"


def test_module_cmake_lists_every_script_and_resource():
    cmake = (MODULE / "CMakeLists.txt").read_text()
    assert "WITH_GENERIC_TESTS" in cmake and "slicerMacroBuildScriptedModule" in cmake
    listed = set(re.findall(r"\$\{MODULE_NAME\}(\S*\.(?:py|png|ui))", cmake))
    listed = {("ECFusionSlicer" + x) if not x.startswith("/") else x for x in listed}
    listed |= set(re.findall(r"^\s+(Resources/\S+)", cmake, re.M))
    on_disk = {str(p.relative_to(MODULE)) for p in MODULE.rglob("*") if p.suffix in (".py", ".png", ".ui")
               and "Testing" not in p.parts and "__pycache__" not in p.parts}
    normalised = {x.replace("Resources/Icons/ECFusionSlicer", "Resources/Icons/ECFusionSlicer") for x in listed}
    expected = {s.replace("${MODULE_NAME}", "ECFusionSlicer") for s in normalised}
    assert on_disk <= expected | {"Resources/Icons/ECFusionSlicer.png", "Resources/UI/ECFusionSlicer.ui"}, on_disk - expected
    for rel in on_disk:
        assert (MODULE / rel).is_file()


def test_top_level_cmake_has_extension_metadata():
    cmake = (ROOT / "CMakeLists.txt").read_text()
    for key in ("EXTENSION_HOMEPAGE", "EXTENSION_CATEGORY", "EXTENSION_DESCRIPTION", "EXTENSION_ICONURL",
                "EXTENSION_SCREENSHOTURLS", 'EXTENSION_DEPENDS "PyTorch"'):
        assert key in cmake
    entry = json.loads((ROOT / "ECFusion.json").read_text())
    assert entry["build_dependencies"] == ["PyTorch"] and entry["scm_url"].endswith(".git")
    icon = sitk.ReadImage(str(MODULE / "Resources" / "Icons" / "ECFusionSlicer.png"))
    assert icon.GetSize() == (128, 128)


BOUND_BY_HAND = {"weightsPath"}  # a ctkPathLineEdit: no str connector in Slicer (test_slicer_gui_contract.py)


def _parameter_fields():
    tree = ast.parse((MODULE / "ECFusionSlicer.py").read_text())
    cls = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "ECFusionSlicerParameterNode")
    return {n.target.id for n in cls.body if isinstance(n, ast.AnnAssign)}


def test_ui_widgets_bind_to_the_parameter_node_and_logic():
    root = ET.parse(MODULE / "Resources" / "UI" / "ECFusionSlicer.ui").getroot()
    bound = {}
    for w in root.iter("widget"):
        for prop in w.findall("property"):
            if prop.get("name") == "SlicerParameterName":
                bound[prop.find("string").text] = w.get("name")
    fields = _parameter_fields()
    assert set(bound) | BOUND_BY_HAND == fields
    from ECFusionSlicerLib.parameters import PARAMETERS

    assert set(PARAMETERS) <= fields
    names = {w.get("name") for w in root.iter("widget")}
    code = (MODULE / "ECFusionSlicer.py").read_text()
    for used in set(re.findall(r"self\.ui\.(\w+)", code)):
        assert used in names, f"the widget code uses ui.{used}, which the .ui file lacks"


def test_module_script_compiles_and_imports_nothing_heavy_at_top_level():
    src = (MODULE / "ECFusionSlicer.py").read_text()
    compile(src, "ECFusionSlicer.py", "exec")
    tree = ast.parse(src)
    top = [n for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom))]
    mods = {a.name for n in top if isinstance(n, ast.Import) for a in n.names} | {n.module for n in top if isinstance(n, ast.ImportFrom)}
    assert not any(m and m.split(".")[0] in ("torch", "ECFusionLib", "pip") for m in mods)
    logic_src = (MODULE / "ECFusionSlicerLib" / "logic.py").read_text()
    assert "import qt" not in logic_src and "import torch" not in logic_src


def test_logic_import_does_not_import_torch():
    code = ("import sys; sys.path.insert(0, %r); import ECFusionSlicerLib.logic; "
            "print('torch' in sys.modules)") % str(MODULE)
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip().endswith("False")


def test_batch_script_in_plain_python_matches_the_command_line(tmp_path, phantom_files, weights_file):
    """scripts/slicer_batch_fuse.py (MRML logic, vtkImageReslice) against `ecfusion fuse` (SimpleITK)."""
    batch_out, cli_out = tmp_path / "batch.nrrd", tmp_path / "cli.nrrd"
    res = subprocess.run([sys.executable, str(ROOT / "scripts" / "slicer_batch_fuse.py"), "--anatomical", phantom_files["MRI"],
                          "--functional", phantom_files["PET"], "--output", str(batch_out), "--weights", weights_file,
                          "--device", "cpu"], capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "wrote" in res.stdout
    assert "ERR|" not in res.stderr  # Colors and Volumes logics set up as in the application
    from ECFusionLib.cli import main

    assert main(["fuse", "--anatomical", phantom_files["MRI"], "--functional", phantom_files["PET"], "--task", "PET-MRI",
                 "--output", str(cli_out), "--weights", weights_file, "--device", "cpu", "--quiet"]) == 0
    a, b = sitk.ReadImage(str(batch_out)), sitk.ReadImage(str(cli_out))
    assert a.GetSize() == b.GetSize() and a.GetNumberOfComponentsPerPixel() == 3
    assert np.allclose(a.GetOrigin(), b.GetOrigin(), atol=1e-3) and np.allclose(a.GetDirection(), b.GetDirection(), atol=1e-6)
    diff = np.abs(sitk.GetArrayFromImage(a).astype(int) - sitk.GetArrayFromImage(b).astype(int))
    assert diff.mean() < 2.0  # two resamplers and colour paths, one answer
    assert sorted(p.name for p in tmp_path.iterdir()) == ["batch.nrrd", "cli.nrrd"]


def test_batch_script_bad_input_exit_code(tmp_path, phantom_files):
    res = subprocess.run([sys.executable, str(ROOT / "scripts" / "slicer_batch_fuse.py"), "--anatomical", str(tmp_path / "none.nrrd"),
                          "--functional", phantom_files["PET"], "--output", str(tmp_path / "o.nrrd")],
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 2 and "not found" in res.stderr


def test_fusion_path_needs_only_what_slicer_ships_plus_torch():
    """Inside Slicer only torch is installed on demand: the fusion path must not import scipy or scikit-image."""
    code = ("import sys; import ECFusionLib.fusion, ECFusionLib.registration; "
            "print([m for m in ('scipy', 'skimage') if m in sys.modules])")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "[]"


def test_widget_wrapper_takes_its_defaults_and_choices_from_the_logic():
    """One place for each fact: the wrapper's defaults are the logic's DEFAULTS and its Choice lists the logic's
    CHOICES (ECFusionLib.tasks), never literal copies. Their values are compared in test_slicer_gui_contract.py."""
    from ECFusionSlicerLib.parameters import CHOICES, DEFAULTS

    tree = ast.parse((MODULE / "ECFusionSlicer.py").read_text())
    cls = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "ECFusionSlicerParameterNode")
    with_default = {n.target.id: n for n in cls.body if isinstance(n, ast.AnnAssign) and n.value is not None}
    assert set(with_default) == set(DEFAULTS)
    for name, node in with_default.items():
        assert ast.unparse(node.value) == f"DEFAULTS['{name}']", f"{name}: default {ast.unparse(node.value)}"
        choices = [c for c in ast.walk(node.annotation) if isinstance(c, ast.Call) and ast.unparse(c.func) == "Choice"]
        if name in CHOICES:
            assert [ast.unparse(c.args[0]) for c in choices] == [f"list(CHOICES['{name}'])"], name
        else:
            assert not choices, name


# Slicer/ExtensionsIndex scripts/check_description_files.py (read at 08798e5): ACCEPTED_EXTENSION_CATEGORIES.
ACCEPTED_EXTENSION_CATEGORIES = [
    "Active Learning", "Analysis", "Auto3dgm", "BigImage", "Cardiac", "Chest Imaging Platform", "Conda", "Converters",
    "DICOM", "DSCI", "Developer Tools", "Diffusion", "Examples", "Exporter", "FTV Segmentation", "Filtering",
    "Filtering.Morphology", "Filtering.Vesselness", "Holographic Display", "IGT", "Informatics", "Netstim",
    "Neuroimaging", "Nuclear Medicine", "Orthodontics", "Osteotomy Planning", "Otolaryngology", "Photogrammetry",
    "Pipelines", "Planning", "Printing", "Quantification", "Radiotherapy", "Registration", "Remote", "Rendering",
    "SPHARM", "Segmentation", "Sequences", "Shape Analysis", "Shape Regression", "Shape Visualization", "Simulation",
    "SlicerCMF", "SlicerMorph", "Spectral Imaging", "Supervisely", "Surface Models", "SurfaceLearner",
    "Tomographic Reconstruction", "Tracking", "Tractography", "Training", "Ultrasound", "Utilities",
    "Vascular Modeling Toolkit", "Virtual Reality", "VisSimTools", "Web System Tools", "Wizards",
]


def test_extension_description_passes_the_index_checks():
    """What check_description_files.py checks offline: an accepted category; the CMake project named like the
    description file; icon and screenshot URLs (the check downloads each) that point at files of this repository."""
    cmake = (ROOT / "CMakeLists.txt").read_text()
    entry = json.loads((ROOT / "ECFusion.json").read_text())
    assert entry["category"] in ACCEPTED_EXTENSION_CATEGORIES
    assert re.search(r'set\(EXTENSION_CATEGORY "([^"]+)"\)', cmake).group(1) == entry["category"]
    assert re.findall(r"project\s*\(\s*([^\s)]+)", cmake, re.I)[0] == "ECFusion"
    assert "slicer" in entry["scm_url"].rsplit("/", 1)[-1].lower()
    icon = re.search(r'set\s*\(EXTENSION_ICONURL\s*"([^"]+)"\s*\)', cmake).group(1)
    shots = re.search(r'set\s*\(EXTENSION_SCREENSHOTURLS\s*"([^"]+)"\)', cmake).group(1).split()
    assert shots
    prefix = "https://raw.githubusercontent.com/ecfusion/SlicerECFusion/main/"
    for url in [icon, *shots]:
        assert url.startswith(prefix), url
        path = ROOT / url[len(prefix):]
        assert path.is_file() and path.suffix in (".png", ".jpg", ".jpeg", ".gif"), url
    assert (ROOT / "LICENSE").is_file()


def test_ecfusionlib_is_installed_once_beside_the_module():
    """ctkMacroCompilePythonScript installs DESTINATION_DIR *itself* into INSTALL_DIR unless NO_INSTALL_SUBDIR
    (CTK CMake/ctkMacroCompilePythonScript.cmake: install(DIRECTORY <dir without trailing slash>)), so INSTALL_DIR
    must be the parent of ECFusionLib, not ECFusionLib itself."""
    cmake = (MODULE / "CMakeLists.txt").read_text()
    call = re.search(r"ctkMacroCompilePythonScript\((.*?)\)\n", cmake, re.S).group(1)
    dest = re.search(r"DESTINATION_DIR\s+(\S+)", call).group(1)
    install = re.search(r"INSTALL_DIR\s+(\S+)", call).group(1)
    no_subdir = "NO_INSTALL_SUBDIR" in call
    installed = install if no_subdir else f"{install}/{dest.rsplit('/', 1)[-1]}"
    assert installed == "${Slicer_INSTALL_QTSCRIPTEDMODULES_LIB_DIR}/ECFusionLib", installed
    assert dest.endswith("/ECFusionLib")
