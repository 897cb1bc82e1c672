"""``ecfusion batch`` on a real Dask cluster: three tiny rows (NRRD, a DICOM folder, a broken file), the
reports, re-runs that skip, --force, --scheduler, and manifest errors found before anything runs."""
import base64
import csv
import hashlib
import re
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from ECFusionLib import batch_worker
from ECFusionLib.cli import main
from ECFusionLib.manifest import read_manifest

from helpers import file_digest, run_cli as run
from dicom_helpers import new_uid, write_series


def report(folder):
    with open(Path(folder) / "report.csv", newline="") as fh:
        return {r["id"]: r for r in csv.DictReader(fh)}


@pytest.fixture(scope="module")
def cohort(tmp_path_factory, phantom, phantom_files):
    """A manifest of three rows: NRRD pair, DICOM PET folder (task from its Modality), a broken CT file."""
    root = tmp_path_factory.mktemp("cohort")
    write_series(phantom["PET"], root / "pet_dicom", modality="PT", series_uid=new_uid(21), description="FDG")
    (root / "broken.nrrd").write_bytes(b"NRRD0004\nnot an image\n")
    manifest = root / "cohort.csv"
    manifest.write_text("id,anatomical,functional,task,window,level\n"
                        f"nrrd,{phantom_files['MRI']},{phantom_files['PET']},PET-MRI,8,4\n"
                        f"dicom,{phantom_files['MRI']},pet_dicom,,,\n"  # relative to the manifest's folder
                        f"broken,{phantom_files['MRI']},broken.nrrd,CT-MRI,,\n")
    return manifest


@pytest.mark.slow
def test_batch_on_a_local_cluster_then_rerun_skips(capsys, tmp_path, cohort, phantom_files, weights_file):
    out = tmp_path / "out"
    base = ["batch", cohort, "--output-dir", out, "--weights", weights_file, "--device", "cpu"]
    code, text = run(capsys, *base, "--workers", "2")
    assert code == 4, text  # one row failed; the others are done
    assert "Traceback" not in text and "2 local workers" in text
    rows = report(out)
    assert list(rows) == ["nrrd", "dicom", "broken"]  # manifest order
    assert [rows[k]["status"] for k in rows] == ["ok", "ok", "failed"]
    assert "cannot read functional image" in rows["broken"]["message"] and not (out / "broken.nrrd").exists()
    assert rows["dicom"]["task"] == "PET-MRI"  # from the series' Modality
    assert rows["nrrd"]["anatomical_sha256"] == file_digest(phantom_files["MRI"])
    assert rows["nrrd"]["functional_sha256"] == file_digest(phantom_files["PET"])
    series_files = sorted((cohort.parent / "pet_dicom").iterdir())  # IMkkkk: sorted by position
    assert rows["dicom"]["functional_sha256"] == hashlib.sha256(b"".join(p.read_bytes() for p in series_files)).hexdigest()
    assert rows["nrrd"]["weights_sha256"] == file_digest(weights_file)
    assert float(rows["nrrd"]["seconds"]) > 0 and Path(rows["nrrd"]["output"]) == out / "nrrd.nrrd"

    # one path: the batch row equals `ecfusion fuse` with the same inputs and settings
    code, text = run(capsys, "fuse", "--anatomical", phantom_files["MRI"], "--functional", phantom_files["PET"],
                     "--task", "PET-MRI", "--window", "8", "--level", "4", "--weights", weights_file, "--device", "cpu",
                     "--output", tmp_path / "single.nrrd", "--quiet")
    assert code == 0, text
    a, b = (sitk.GetArrayFromImage(sitk.ReadImage(str(p))).astype(float) for p in (out / "nrrd.nrrd", tmp_path / "single.nrrd"))
    assert np.abs(a - b).mean() < 0.5

    page = (out / "report.html").read_text()
    thumbs = re.findall(r'src="data:image/png;base64,([^"]+)"', page)
    assert len(thumbs) == 2 and "cannot read functional image" in page
    (tmp_path / "thumb.png").write_bytes(base64.b64decode(thumbs[0]))
    thumb = sitk.ReadImage(str(tmp_path / "thumb.png"))
    assert thumb.GetNumberOfComponentsPerPixel() == 3 and thumb.GetHeight() == 160 and thumb.GetWidth() > 3 * 100

    # the same command again, on an existing cluster (--scheduler), on ONNX Runtime: up-to-date rows are skipped
    # (the backend is how it runs, not a setting: the backends agree within a grey level)
    from dask.distributed import Client, LocalCluster

    mtimes = {p: p.stat().st_mtime_ns for p in out.glob("*.nrrd")}
    base += ["--backend", "onnxruntime"]
    with LocalCluster(n_workers=2, threads_per_worker=1, dashboard_address=None) as cluster, Client(cluster) as client:
        code, text = run(capsys, *base, "--scheduler", cluster.scheduler_address)
        assert code == 4, text
        assert [r["status"] for r in report(out).values()] == ["skipped", "skipped", "failed"]
        assert "skipped nrrd" in text and "skipped dicom" in text
        assert {p: p.stat().st_mtime_ns for p in out.glob("*.nrrd")} == mtimes
        assert len(re.findall("data:image/png;base64", (out / "report.html").read_text())) == 2
        code, text = run(capsys, *base, "--scheduler", cluster.scheduler_address, "--force")
        assert [r["status"] for r in report(out).values()] == ["ok", "ok", "failed"]
        # the network is loaded once per worker and task (PET-MRI, CT-MRI), not once per row
        assert all(n <= 2 for n in client.run(lambda: batch_worker.LOADS).values())
    fused = sitk.ReadImage(str(out / "nrrd.nrrd"))
    assert fused.GetMetaData("ECFusion_backend") == "onnxruntime"
    assert np.abs(sitk.GetArrayFromImage(fused).astype(float) - b).mean() < 0.5  # b: `ecfusion fuse` on torch


@pytest.mark.slow
def test_changed_settings_or_inputs_are_not_up_to_date(tmp_path, cohort, phantom, weights_file, capsys):
    rows = read_manifest(cohort, tmp_path, device="cpu", weights=weights_file)
    job = batch_worker.BatchJob(rows[0].id, rows[0].line, rows[0].request)
    assert batch_worker.run_row(job)["status"] == "ok"
    assert batch_worker.run_row(job)["status"] == "skipped"
    changed = batch_worker.BatchJob(job.id, job.line, replace(job.request, window=9.0))
    assert batch_worker._up_to_date(changed) is None
    moved = tmp_path / "pet.nrrd"  # same name, different content
    sitk.WriteImage(phantom["PET"] * 2.0, str(moved))
    assert batch_worker._up_to_date(batch_worker.BatchJob(job.id, job.line, replace(job.request, functional=str(moved)))) is None
    assert batch_worker.run_row(replace(job, force=True))["status"] == "ok"


def test_manifest_errors_with_line_numbers_before_anything_runs(capsys, tmp_path, phantom_files):
    bad = tmp_path / "bad.csv"
    bad.write_text("anatomical,functional,tsk,colour\nmri.nrrd,pet.nrrd,PET-MRI,red\n")
    code, text = run(capsys, "batch", bad, "--output-dir", tmp_path / "out")
    assert code == 2 and "line 1: missing column task" in text and "unknown settings tsk, colour" in text
    bad.write_text("anatomical,functional,task,window,id\n"
                   f"{phantom_files['MRI']},{phantom_files['PET']},PET-MRI,,a\n"
                   f"{phantom_files['MRI']},{phantom_files['PET']},PET-MRI,wide,b\n"
                   f"{phantom_files['MRI']},{phantom_files['PET']},PET-CT,,c\n"
                   f"{phantom_files['MRI']},{phantom_files['PET']},PET-MRI,,a\n")
    code, text = run(capsys, "batch", bad, "--output-dir", tmp_path / "out")
    assert code == 2 and "Traceback" not in text and "3 problems; nothing was run" in text
    assert "line 3: argument --window: " in text and "'wide'" in text  # fuse's own parser said it
    assert "line 4: unknown task 'PET-CT'" in text and "line 5: id 'a' is also on line 2" in text
    assert not (tmp_path / "out").exists()


def test_thumbnails_show_anatomy_whatever_the_storage_order(phantom):
    from ECFusionLib.thumbnails import contact_strip

    grey = sitk.Cast(sitk.RescaleIntensity(phantom["MRI"], 0, 255), sitk.sitkUInt8)
    strip = contact_strip(grey)
    assert strip.shape[0] == 160 and strip.dtype == np.uint8 and strip.max() > 100
    for stored in (sitk.PermuteAxes(grey, [1, 2, 0]), sitk.Flip(grey, [True, False, True])):
        assert np.array_equal(contact_strip(stored), strip)
    left_half = strip[:, : strip.shape[1] // 3].astype(float)
    assert np.abs(left_half - left_half[::-1]).mean() > 1  # the axial view is not up-down symmetric: not trivial


def test_report_rows_are_on_disk_as_they_finish(tmp_path):
    from ECFusionLib.batch_report import ReportWriter

    writer = ReportWriter(tmp_path, "cohort.csv")
    writer.add({"id": "late", "line": 3, "status": "failed", "seconds": 0.1, "message": "bad <input> & more"})
    assert list(report(tmp_path)) == ["late"]  # readable before the batch ends (a crash loses nothing done)
    writer.add({"id": "early", "line": 2, "status": "ok", "seconds": 1.0, "message": ""})
    writer.close()
    assert list(report(tmp_path)) == ["early", "late"]  # manifest order at the end
    page = (tmp_path / "report.html").read_text()
    assert "bad &lt;input&gt; &amp; more" in page and "<input>" not in page
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.csv", "report.html"]


def test_model_and_backend_for_the_batch_and_per_row(tmp_path, phantom_files, capsys):
    """--model applies to rows that name no weights or model; a row's own model column wins; --backend is set
    for every row; an unknown model is refused once, before anything runs."""
    manifest = tmp_path / "models.csv"
    manifest.write_text("id,anatomical,functional,task,model\n"
                        f"a,{phantom_files['MRI']},{phantom_files['PET']},PET-MRI,\n"
                        f"b,{phantom_files['MRI']},{phantom_files['SPECT']},,ecfusion-v1.spect-mri\n")
    rows = read_manifest(manifest, tmp_path / "out", model="ecfusion-v1.pet-mri", backend="onnxruntime")
    assert [(r.request.model, r.request.backend, r.request.weights) for r in rows] == [
        ("ecfusion-v1.pet-mri", "onnxruntime", None), ("ecfusion-v1.spect-mri", "onnxruntime", None)]
    code, text = run(capsys, "batch", manifest, "--output-dir", tmp_path / "out", "--model", "nope")
    assert code == 3 and "unknown model 'nope'" in text and not (tmp_path / "out").exists()
