"""scripts/slicer_batch_fuse.py: exit codes, inputs never overwritten, clear messages, and it always ends."""
from __future__ import annotations

import importlib.util
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "slicer_batch_fuse.py"


def _env(**extra) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    env.update(extra)
    return env


def _run(*args, cwd=None, env=None, timeout=300):
    return subprocess.run([sys.executable, str(SCRIPT), *map(str, args)], capture_output=True, text=True, cwd=cwd,
                          env=env or _env(), timeout=timeout)


@pytest.fixture(scope="module")
def script():
    spec = importlib.util.spec_from_file_location("slicer_batch_fuse_under_test", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


# ----------------------------------------------------------------- it always ends, with a code
STUB_SLICER = '''
"""Stand-in for the Slicer application's `slicer` module: slicer.util.exit records the code and returns, as the
real one does (app.exit only takes effect once control is back in the event loop)."""
import os
app = object()
mrmlScene = None
class util:
    @staticmethod
    def exit(code):
        with open(os.environ["EXIT_CODE_FILE"], "a") as f:
            f.write(f"{code}\\n")
'''


def test_unexpected_error_inside_slicer_ends_the_application_through_finally(tmp_path, phantom_files):
    """An error the script does not expect (here: no Volumes logic in this stand-in application) is reported with
    its traceback and the application is still told to exit, with a non-zero code, exactly once."""
    (tmp_path / "stub" / "slicer").mkdir(parents=True)
    (tmp_path / "stub" / "slicer" / "__init__.py").write_text(STUB_SLICER)
    codes = tmp_path / "codes.txt"
    env = _env(PYTHONPATH=os.pathsep.join([str(tmp_path / "stub"), str(ROOT)]), EXIT_CODE_FILE=str(codes))
    res = _run("--anatomical", phantom_files["MRI"], "--functional", phantom_files["PET"], "--output",
               tmp_path / "o.nrrd", env=env)
    assert codes.read_text().split() == ["1"], res.stderr
    assert "unexpected error" in res.stderr and "Traceback" in res.stderr
    assert not (tmp_path / "o.nrrd").exists()


@pytest.mark.parametrize("args, code", [(["--anatomical", "x.nrrd"], 2), (["--usage"], 0), (["--device", "tpu"], 2)])
def test_usage_errors_also_end_through_slicer_util_exit(tmp_path, args, code):
    (tmp_path / "stub" / "slicer").mkdir(parents=True)
    (tmp_path / "stub" / "slicer" / "__init__.py").write_text(STUB_SLICER)
    codes = tmp_path / "codes.txt"
    env = _env(PYTHONPATH=os.pathsep.join([str(tmp_path / "stub"), str(ROOT)]), EXIT_CODE_FILE=str(codes))
    res = _run(*args, env=env)
    assert codes.read_text().split() == [str(code)], res.stderr
    assert "Traceback" not in res.stderr


def test_unexpected_error_in_plain_python_exits_1_with_traceback(script, monkeypatch, capsys):
    def boom(args):
        raise OSError("disk on fire")

    monkeypatch.setattr(script, "run", boom)
    assert script.main(["--anatomical", "a.nrrd", "--functional", "b.nrrd", "--output", "o.nrrd"]) == 1
    err = capsys.readouterr().err
    assert "Traceback" in err and "disk on fire" in err


def test_keyboard_interrupt_is_130_without_traceback(script, monkeypatch, capsys):
    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(script, "run", interrupted)
    assert script.main(["--anatomical", "a.nrrd", "--functional", "b.nrrd", "--output", "o.nrrd"]) == 130
    err = capsys.readouterr().err
    assert "cancelled" in err and "Traceback" not in err


def test_ctrl_c_during_a_run_exits_130_and_writes_nothing(tmp_path, phantom_files, weights_file):
    out = tmp_path / "o.nrrd"
    proc = subprocess.Popen([sys.executable, str(SCRIPT), "--anatomical", phantom_files["MRI"], "--functional",
                             phantom_files["PET"], "--output", str(out), "--weights", weights_file, "--device", "cpu"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env())
    t0 = time.monotonic()
    line = ""
    while "fusing" not in line and time.monotonic() - t0 < 240:
        line = proc.stdout.readline()
        if not line and proc.poll() is not None:
            break
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    if proc.returncode == 0:
        pytest.skip("the run finished before the interrupt arrived")
    assert proc.returncode == 130, err
    assert "cancelled" in err and "Traceback" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == []


# ----------------------------------------------------------------- inputs are never overwritten
def _output_cases(folder: Path, phantom_files) -> dict[str, Path]:
    mri = Path(phantom_files["MRI"])
    (folder / "sub").mkdir(exist_ok=True)
    link = folder / "link.nrrd"
    link.symlink_to(mri)
    hard = folder / "hard.nrrd"
    os.link(mri, hard)
    return {"same path": mri, "sub/../x": mri.parent / "sub" / ".." / mri.name, "symlink": link, "hard link": hard,
            "functional": Path(phantom_files["PET"])}


@pytest.mark.parametrize("case", ["same path", "sub/../x", "symlink", "hard link", "functional"])
def test_output_that_is_an_input_is_refused(tmp_path, phantom_files, case):
    folder = Path(phantom_files["MRI"]).parent
    work = tmp_path / "copy"
    work.mkdir()
    files = {}
    for key in ("MRI", "PET"):  # work on copies: the session's phantom files stay as they are
        files[key] = str(work / Path(phantom_files[key]).name)
        Path(files[key]).write_bytes(Path(phantom_files[key]).read_bytes())
    before = {k: Path(v).read_bytes() for k, v in files.items()}
    output = _output_cases(work, files)[case]
    res = _run("--anatomical", files["MRI"], "--functional", files["PET"], "--output", output)
    assert res.returncode == 2, res.stderr
    assert "is the input file" in res.stderr and "Traceback" not in res.stderr
    assert {k: Path(v).read_bytes() for k, v in files.items()} == before
    assert folder.exists()


def test_unknown_colormap_is_a_clear_error(tmp_path, phantom_files):
    res = _run("--anatomical", phantom_files["MRI"], "--functional", phantom_files["PET"], "--output",
               tmp_path / "o.nrrd", "--colormap", "Jet", "--device", "cpu")
    assert res.returncode == 2, res.stderr
    assert "unknown --colormap 'Jet'" in res.stderr and "PET-Heat" in res.stderr and "Traceback" not in res.stderr
    assert not any(tmp_path.iterdir())


def test_grey_colour_node_by_name(tmp_path, phantom_files, weights_file):
    res = _run("--anatomical", phantom_files["MRI"], "--functional", phantom_files["PET"], "--output",
               tmp_path / "o.nrrd", "--colormap", "Grey", "--device", "cpu", "--weights", weights_file)
    assert res.returncode == 0, res.stderr
    assert "ERR|" not in res.stderr  # no "invalid Colors module logic" / "FindDefaultColorFiles" errors


def test_usage_is_printed_with_usage_not_help():
    res = _run("--usage")
    assert res.returncode == 0 and "--anatomical" in res.stdout and "-h/--help are Slicer's own" in res.stdout


def test_missing_torch_is_a_clear_error(script, monkeypatch, capsys):
    def no_torch(args):
        raise ModuleNotFoundError("No module named 'torch'", name="torch")

    monkeypatch.setattr(script, "run", no_torch)
    assert script.main(["--anatomical", "a.nrrd", "--functional", "b.nrrd", "--output", "o.nrrd"]) == 2
    err = capsys.readouterr().err
    assert "'torch' is not installed" in err and "Traceback" not in err


def test_no_keep_salient_reaches_the_result(tmp_path, phantom_files, weights_file, script, monkeypatch):
    """--no-keep-salient turns the rule off, as `ecfusion fuse --no-keep-salient` does: the logic gets it and the
    result's provenance (node attribute ECFusion.keep_salient) records it; without the flag it stays on."""
    from ECFusionSlicerLib.logic import ECFusionSlicerLogic

    real_process, results = ECFusionSlicerLogic.process, []

    def recording_process(self, *args, **kwargs):
        results.append(real_process(self, *args, **kwargs))
        return results[-1]

    monkeypatch.setattr(ECFusionSlicerLogic, "process", recording_process)
    common = ["--anatomical", phantom_files["MRI"], "--functional", phantom_files["CT"], "--device", "cpu",
              "--weights", weights_file, "--task", "CT-MRI"]
    assert script.parse_args(common + ["--output", "x.nrrd"]).keep_salient is True
    assert script.main(common + ["--output", str(tmp_path / "off.nrrd"), "--no-keep-salient"]) == 0
    assert results[-1].GetAttribute("ECFusion.keep_salient") == "false"
    assert (tmp_path / "off.nrrd").is_file() and sorted(p.name for p in tmp_path.iterdir()) == ["off.nrrd"]


def test_without_torch_the_script_fuses_with_onnx_runtime(tmp_path, phantom_files):
    """A Slicer without PyTorch (Slicer's Intel build on a Mac cannot have a torch newer than 2.2.2; many have
    none): --backend auto falls to ONNX Runtime and the fused volume is written; torch is never imported."""
    pytest.importorskip("onnxruntime")
    out = tmp_path / "fused.nrrd"
    code = ("import runpy, sys; sys.modules['torch'] = None; "  # blocks `import torch` and hides it from find_spec
            f"sys.argv = ['slicer_batch_fuse.py'] + sys.argv[1:]; runpy.run_path({str(SCRIPT)!r}, run_name='__main__')")
    res = subprocess.run([sys.executable, "-c", code, "--anatomical", phantom_files["MRI"], "--functional",
                          phantom_files["PET"], "--output", str(out), "--device", "cpu"], capture_output=True,
                         text=True, env=_env(), timeout=300)
    assert res.returncode == 0, res.stdout + res.stderr
    import SimpleITK as sitk

    img = sitk.ReadImage(str(out))
    assert img.GetNumberOfComponentsPerPixel() == 3 and img.GetSize() == sitk.ReadImage(phantom_files["MRI"]).GetSize()
