"""ECFusionSlicerLogic on real MRML scenes built with slicer-core (no Qt, no Slicer application)."""
import json
import re
from pathlib import Path

import numpy as np
import pytest

slicer = pytest.importorskip("slicer")
import vtk  # noqa: E402

from ECFusionLib.colour import apply_colormap, colormap_table  # noqa: E402
from ECFusionLib.errors import CancelledError, ECFusionError, WeightsError  # noqa: E402
from ECFusionSlicerLib import mrml_volumes as mv  # noqa: E402
from ECFusionSlicerLib.logic import ECFusionSlicerLogic  # noqa: E402
from ECFusionSlicerLib.parameters import ProcessSettings  # noqa: E402
from slicer_helpers import (add_linear_transform, add_volume, ijk2ras, rotation, same_snapshot,  # noqa: E402
                            snapshot, world_positions)


def linear_field(p: np.ndarray) -> np.ndarray:
    """A smooth function of world RAS position: linear interpolation reproduces it exactly."""
    return (0.7 * p[..., 0] - 0.4 * p[..., 1] + 0.25 * p[..., 2] + 100.0).astype(np.float32)


@pytest.fixture
def scene():
    return mv.new_scene()


def _pair(scene, anat_transform=None, func_transform=None):
    anat_m = ijk2ras((1.1, 0.9, 2.5), (-20, -18, -15), rotation("z", 17) @ rotation("x", -9))  # oblique, anisotropic
    anat = add_volume(scene, np.zeros((14, 36, 40), np.float32), anat_m, "MRI")
    func_m = ijk2ras((1.7, 1.7, 1.7), (-40, -40, -40), rotation("y", 11))
    func = add_volume(scene, np.zeros((48, 48, 48), np.float32), func_m, "PET")
    if anat_transform is not None:
        anat.SetAndObserveTransformNodeID(add_linear_transform(scene, anat_transform, "Tanat").GetID())
    if func_transform is not None:
        func.SetAndObserveTransformNodeID(add_linear_transform(scene, func_transform, "Tfunc").GetID())
    # functional voxels hold the field at their own world positions
    func.GetImageData().GetPointData().SetScalars(
        mv.image_data_from_array(linear_field(world_positions(func))).GetPointData().GetScalars())
    func.GetImageData().Modified()
    return anat, func


MOVE = rotation("z", 8) @ rotation("y", -5)
MOVE[:3, 3] = (4.0, -3.0, 2.5)


@pytest.mark.parametrize("anat_t, func_t", [(None, None), (MOVE, None), (None, MOVE), (MOVE, np.linalg.inv(MOVE) @ rotation("x", 6))])
def test_resampling_is_exact_through_transforms(scene, anat_t, func_t):
    anat, func = _pair(scene, anat_t, func_t)
    moved = mv.array_from_volume_data(mv.resample_onto(func, anat))
    expected = linear_field(world_positions(anat))
    # voxels well inside the functional volume (its extent is +-40 mm around the origin)
    inside = np.all(np.abs(world_positions(anat)) < 30, axis=-1)
    assert inside.sum() > 2000
    assert np.abs(moved[inside] - expected[inside]).max() < 1e-2


def test_displayed_colours_match_the_pet_heat_table(scene):
    vals = np.linspace(0, 12, 20 * 30 * 4, dtype=np.float32).reshape(4, 20, 30)
    pet = add_volume(scene, vals, ijk2ras((2, 2, 2), (0, 0, 0)), "PET")
    d = pet.GetDisplayNode()
    d.SetAndObserveColorNodeID(scene.GetFirstNodeByName("PET-Heat").GetID())
    d.AutoWindowLevelOff()
    d.SetWindowLevel(10.0, 5.0)
    rgb = mv.displayed_rgb(pet, pet.GetImageData())
    ours = apply_colormap(vals, colormap_table("PET-Heat"), 10.0, 5.0)
    assert np.abs(rgb.astype(int) - ours.astype(int)).max() <= 1
    assert (rgb[..., 0] == 255).mean() > 0.2 and rgb[0, 0, 0].tolist() == [0, 0, 0]


def test_rainbow2_quirk_is_worked_around(scene):
    quirky = slicer.vtkMRMLPETProceduralColorNode()
    quirky.SetTypeToRainbow2()
    # Slicer's bug, pinned: SetTypeToRainbow2() gives the Rainbow map. If this fails, Slicer fixed it.
    assert quirky.GetTypeAsString() == "PET-Rainbow"
    scene.RemoveNode(scene.GetFirstNodeByName("PET-Rainbow2"))
    node = mv.pet_colour_node(scene, "PET-Rainbow2")
    assert node.GetTypeAsString() == "PET-Rainbow2"
    table = mv.colour_table(node)
    assert np.allclose(table, colormap_table("PET-Rainbow2"), atol=1e-3)
    assert np.allclose(table[64], [0, 0, 1], atol=1e-3) and np.allclose(table[96], [0, 1, 0], atol=1e-3)


def _phantom_nodes(scene, phantom, transform_func=False):
    """The small test phantom (conftest) as MRML nodes, with PET coloured by PET-Heat."""
    from ECFusionSlicerLib.mrml_volumes import RAS_TO_LPS
    import SimpleITK as sitk

    nodes = {}
    for key in ("MRI", "PET", "CT"):
        img = phantom[key]
        d = np.array(img.GetDirection()).reshape(3, 3)
        m = np.eye(4)
        m[:3, :3] = RAS_TO_LPS @ d @ np.diag(img.GetSpacing())
        m[:3, 3] = RAS_TO_LPS @ np.array(img.GetOrigin())
        nodes[key] = add_volume(scene, sitk.GetArrayFromImage(img), m, {"MRI": "T1 brain", "PET": "FDG PET", "CT": "head CT"}[key])
    d = nodes["PET"].GetDisplayNode()
    d.SetAndObserveColorNodeID(scene.GetFirstNodeByName("PET-Heat").GetID())
    d.AutoWindowLevelOff()
    d.SetWindowLevel(6.0, 3.0)
    return nodes


def test_process_pet_writes_rgb_volume_with_provenance(scene, phantom, weights_file):
    nodes = _phantom_nodes(scene, phantom)
    sh = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)
    study = sh.CreateStudyItem(sh.CreateSubjectItem(sh.GetSceneItemID(), "patient"), "study")
    for n in nodes.values():
        sh.CreateItem(study, n)
    before = {k: snapshot(n) for k, n in nodes.items()}
    progress = []
    out = ECFusionSlicerLogic(scene).process(nodes["MRI"], nodes["PET"], device="cpu", weights=weights_file,
                                            progressCallback=lambda k, n: progress.append((k, n)))
    assert out.IsA("vtkMRMLVectorVolumeNode")
    img = out.GetImageData()
    assert img.GetNumberOfScalarComponents() == 3 and img.GetScalarType() == vtk.VTK_UNSIGNED_CHAR
    # geometry identical to the anatomical volume (CompareVolumeGeometry-equivalent)
    assert img.GetDimensions() == nodes["MRI"].GetImageData().GetDimensions()
    assert np.allclose(mv.ijk_to_ras(out), mv.ijk_to_ras(nodes["MRI"]), atol=1e-6)
    d = out.GetDisplayNode()
    assert (d.GetWindow(), d.GetLevel()) == (255.0, 127.5)
    assert out.GetName() == "T1 brain + FDG PET (ECFusion)"
    assert out.GetAttribute("ECFusion.task") == "PET-MRI"  # detected from the name
    assert len(out.GetAttribute("ECFusion.weights_sha256")) == 64
    assert json.loads(out.GetAttribute("ECFusion.functional_display")) == {"colorNode": "PET-Heat", "window": 6.0, "level": 3.0}
    assert sh.GetItemParent(sh.GetItemByDataNode(out)) == study
    assert progress[-1][0] == progress[-1][1] > 0
    for k, n in nodes.items():
        assert same_snapshot(before[k], snapshot(n)), f"input {k} was modified"


def test_a_grey_result_is_never_written_into_a_vector_volume(scene, phantom, weights_file):
    """IsA("vtkMRMLScalarVolumeNode") is true for a vector (RGB) volume: a CT-MRI (grey) result chosen into an
    earlier RGB result, or any result into a label map, is refused before anything runs, the node untouched."""
    nodes = _phantom_nodes(scene, phantom)
    logic = ECFusionSlicerLogic(scene)
    rgb = add_volume(scene, np.zeros((4, 4, 4, 3), np.uint8), np.eye(4), "earlier PET result", vector=True)
    label = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "labels")
    before = snapshot(rgb)
    for out, task, functional in ((rgb, "CT-MRI", nodes["CT"]), (label, "PET-MRI", nodes["PET"])):
        with pytest.raises(ECFusionError, match="Create new volume") as err:
            logic.process(nodes["MRI"], functional, out, task=task, device="cpu", weights=weights_file)
        assert out.GetClassName() in str(err.value)
    assert same_snapshot(before, snapshot(rgb))


def test_ct_gives_scalar_output_and_task_from_dicom_modality(scene, phantom, weights_file):
    nodes = _phantom_nodes(scene, phantom)
    nodes["CT"].SetName("series 3")
    logic = ECFusionSlicerLogic(scene)
    with pytest.raises(ECFusionError, match="choose the task"):
        logic.detectTask(nodes["CT"])
    nodes["CT"].SetAttribute("DICOM.Modality", "CT")
    assert logic.detectTask(nodes["CT"]) == "CT-MRI"
    settings = ProcessSettings(device="cpu", weights=weights_file, ct_window=300, ct_level=50)  # the settings object
    out = logic.process(nodes["MRI"], nodes["CT"], None, settings)
    assert out.IsA("vtkMRMLScalarVolumeNode") and not out.IsA("vtkMRMLVectorVolumeNode")
    assert json.loads(out.GetAttribute("ECFusion.second_intensity"))["window"] == 300.0


def test_cancel_and_failure_leave_the_scene_unchanged(scene, phantom, weights_file, tmp_path):
    nodes = _phantom_nodes(scene, phantom)
    logic = ECFusionSlicerLogic(scene)
    count = scene.GetNumberOfNodes()
    with pytest.raises(CancelledError):
        logic.process(nodes["MRI"], nodes["PET"], device="cpu", weights=weights_file, cancelCheck=lambda: True)
    assert scene.GetNumberOfNodes() == count
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"junk")
    with pytest.raises(WeightsError):
        logic.process(nodes["MRI"], nodes["PET"], device="cpu", weights=str(bad))
    assert scene.GetNumberOfNodes() == count
    far = add_volume(scene, np.ones((5, 5, 5), np.float32) * np.arange(5, dtype=np.float32), ijk2ras((1, 1, 1), (900, 0, 0)), "PET far")
    count = scene.GetNumberOfNodes()
    with pytest.raises(ECFusionError, match="do not overlap"):
        logic.process(nodes["MRI"], far, device="cpu", weights=weights_file)
    with pytest.raises(ECFusionError, match="must not be one of the inputs"):
        logic.process(nodes["MRI"], nodes["PET"], nodes["MRI"], device="cpu", weights=weights_file)
    assert scene.GetNumberOfNodes() == count


def test_rgb_output_round_trips_through_slicer_nrrd_storage(scene, phantom, weights_file, tmp_path):
    nodes = _phantom_nodes(scene, phantom)
    out = ECFusionSlicerLogic(scene).process(nodes["MRI"], nodes["PET"], task="PET-MRI", device="cpu", weights=weights_file)
    path = str(tmp_path / "fused.nrrd")
    storage = out.CreateDefaultStorageNode()
    storage.SetFileName(path)
    assert storage.WriteData(out)
    volumes = slicer.vtkSlicerVolumesLogic()
    volumes.SetMRMLScene(scene)
    back = volumes.AddArchetypeVolume(path, "reloaded")
    assert back.IsA("vtkMRMLVectorVolumeNode")
    assert np.array_equal(mv.array_from_volume(back), mv.array_from_volume(out))
    assert np.allclose(mv.ijk_to_ras(back), mv.ijk_to_ras(out), atol=1e-5)


def test_parameter_node_variant_and_existing_output(scene, phantom, weights_file):
    nodes = _phantom_nodes(scene, phantom)
    logic = ECFusionSlicerLogic(scene)
    p = logic.getParameterNode()
    assert logic.getParameterNode() is p  # singleton
    p.SetNodeReferenceID("anatomicalVolume", nodes["MRI"].GetID())
    p.SetNodeReferenceID("functionalVolume", nodes["PET"].GetID())
    p.SetParameter("device", "cpu")
    p.SetParameter("precision", "fp32")
    p.SetParameter("weightsPath", weights_file)
    existing = scene.AddNewNodeByClass("vtkMRMLVectorVolumeNode", "my output")
    # Where Slicer's UnionSerializer stores Union[Scalar, Vector, None] holding a vector volume (member 1):
    # "outputVolume.1" (serializers.py; the widget test runs that code itself).
    p.SetNodeReferenceID("outputVolume.1", existing.GetID())
    n_volumes = scene.GetNumberOfNodesByClass("vtkMRMLScalarVolumeNode")
    out = logic.processUsingParameterNode(p)
    assert out is existing and out.GetImageData().GetNumberOfScalarComponents() == 3
    assert scene.GetNumberOfNodesByClass("vtkMRMLScalarVolumeNode") == n_volumes  # no new node
    assert out.GetAttribute("ECFusion.precision") == "fp32"  # the parameter reached the engine


@pytest.mark.slow
def test_register_before_fusion_creates_an_editable_transform(scene, weights_file):
    """A PET node misaligned by a known motion: the logic registers it, fuses through the transform, keeps the
    transform node for inspection, and re-uses an edited transform with registration 'none'."""
    import SimpleITK as sitk

    from ECFusionLib.phantom import make_phantom
    from test_registration import errors, known_motion, moved_copy

    ph = make_phantom(size=(90, 108, 90), seed=3, spacing=2.0)
    motion = known_motion((0, 0, 8), (10, -6, 0))
    nodes = {}
    for key, img in (("MRI", ph["MRI"]), ("PET", moved_copy(ph["PET"], motion))):
        m = np.eye(4)
        m[:3, :3] = mv.RAS_TO_LPS @ np.array(img.GetDirection()).reshape(3, 3) @ np.diag(img.GetSpacing())
        m[:3, 3] = mv.RAS_TO_LPS @ np.array(img.GetOrigin())
        nodes[key] = add_volume(scene, sitk.GetArrayFromImage(img), m, {"MRI": "T1", "PET": "PET moved"}[key])
    before = snapshot(nodes["PET"])
    logic = ECFusionSlicerLogic(scene)
    out = logic.process(nodes["MRI"], nodes["PET"], task="PET-MRI", device="cpu", weights=weights_file,
                        register="rigid")
    tx = scene.GetNodeByID(out.GetAttribute("ECFusion.registration_transform"))
    assert tx.IsA("vtkMRMLLinearTransformNode") and tx.GetName() == "PET moved to T1 (ECFusion)"
    m = vtk.vtkMatrix4x4()
    tx.GetMatrixTransformFromParent(m)
    found = sitk.AffineTransform(3)
    lps = mv.lps_to_ras_matrix(mv.matrix_to_numpy(m))  # the same flip converts back
    found.SetMatrix(lps[:3, :3].ravel().tolist())
    found.SetTranslation(lps[:3, 3].tolist())
    angle, shift = errors(found, motion.GetInverse())
    assert angle < 1.0 and shift < 1.0
    assert json.loads(out.GetAttribute("ECFusion.alignment"))["misaligned"] is False
    assert same_snapshot(before, snapshot(nodes["PET"]))  # the PET itself was not moved
    # re-run with the (edited) transform and no new registration
    count = scene.GetNumberOfNodes()
    out2 = logic.process(nodes["MRI"], nodes["PET"], task="PET-MRI", device="cpu", weights=weights_file,
                         registrationTransformNode=tx)
    assert out2.GetAttribute("ECFusion.registration") == "given transform"
    assert scene.GetNumberOfNodes() == count + 1 + 1  # the output volume and its display node; no new transform


# ----------------------------------------------------------------- Slicer's defaults: auto window/level left ON
def _blob(shape_pos: np.ndarray, centre, radius) -> np.ndarray:
    return np.exp(-np.sum((shape_pos - np.asarray(centre)) ** 2, axis=-1) / (2 * radius**2))


def _head_and_whole_body_pet(scene):
    """An MRI of the head and a PET with a larger field of view whose hottest spot (a 'bladder') lies outside the
    MRI. Display nodes keep Slicer's defaults (auto window/level ON); the PET is shown with PET-Heat."""
    mri = add_volume(scene, np.zeros((20, 30, 30), np.float32), ijk2ras((2, 2, 2), (-30, -30, -20)), "T1")
    p = world_positions(mri)
    mri_arr = (800 * _blob(p, (0, 0, 0), 14) + 200 * _blob(p, (8, -6, 4), 4)).astype(np.float32)
    mri.GetImageData().GetPointData().SetScalars(mv.image_data_from_array(mri_arr).GetPointData().GetScalars())
    mri.GetImageData().Modified()
    pet = add_volume(scene, np.zeros((40, 40, 40), np.float32), ijk2ras((4, 4, 4), (-80, -80, -80)), "FDG PET")
    q = world_positions(pet)
    pet_arr = (3 + 7 * _blob(q, (0, 0, 0), 12) + 100 * _blob(q, (0, 0, -62), 9)).astype(np.float32)
    pet.GetImageData().GetPointData().SetScalars(mv.image_data_from_array(pet_arr).GetPointData().GetScalars())
    pet.GetImageData().Modified()
    d = pet.GetDisplayNode()
    d.SetAndObserveColorNodeID(scene.GetFirstNodeByName("PET-Heat").GetID())
    assert d.GetAutoWindowLevel() and mri.GetDisplayNode().GetAutoWindowLevel()
    return mri, pet


def _display_output(node) -> vtk.vtkImageData:
    """What the node's own display node shows: its RGBA output for the node's voxels."""
    conn = node.GetDisplayNode().GetOutputImageDataConnection()
    conn.GetProducer().Update()
    out = vtk.vtkImageData()
    out.DeepCopy(conn.GetProducer().GetOutputDataObject(conn.GetIndex()))
    return out


def _hue_and_chroma(rgb: np.ndarray):
    rgb = rgb[..., :3].astype(np.float64)
    cb = -0.168736 * rgb[..., 0] - 0.331264 * rgb[..., 1] + 0.5 * rgb[..., 2]
    cr = 0.5 * rgb[..., 0] - 0.418688 * rgb[..., 1] - 0.081312 * rgb[..., 2]
    return np.arctan2(cr, cb), np.hypot(cb, cr)


def test_pet_colours_are_the_displayed_colours_with_auto_window_level(scene, weights_file):
    mri, pet = _head_and_whole_body_pet(scene)
    d = pet.GetDisplayNode()
    shown = (d.GetWindow(), d.GetLevel())
    assert shown[0] > 30  # the auto range includes the bladder, outside the MRI (the head alone: about 10)
    before = snapshot(pet)
    out = ECFusionSlicerLogic(scene).process(mri, pet, task="PET-MRI", device="cpu", weights=weights_file)
    assert (d.GetWindow(), d.GetLevel()) == shown and same_snapshot(before, snapshot(pet))
    info = json.loads(out.GetAttribute("ECFusion.functional_display"))
    assert (info["window"], info["level"]) == pytest.approx(shown)
    # the display node's own colours, brought onto the MRI grid
    expected = mv.array_from_volume_data(mv.resample_onto(pet, mri, 0.0, image=_display_output(pet)))
    hue_exp, chroma_exp = _hue_and_chroma(expected)
    hue_out, chroma_out = _hue_and_chroma(mv.array_from_volume(out))
    mask = (chroma_exp > 12) & (chroma_out > 12)
    assert mask.sum() > 500
    err = np.degrees(np.abs(np.angle(np.exp(1j * (hue_out[mask] - hue_exp[mask])))))
    assert np.median(err) < 2.0 and np.mean(err) < 5.0, (np.median(err), np.mean(err))


def test_displayed_rgb_keeps_the_shown_window_level_on_another_image(scene):
    mri, pet = _head_and_whole_body_pet(scene)
    d = pet.GetDisplayNode()
    moved = mv.resample_onto(pet, mri)  # no bladder in here: an auto window/level would change
    rgb = mv.displayed_rgb(pet, moved)
    ours = apply_colormap(mv.array_from_volume_data(moved), colormap_table("PET-Heat"), d.GetWindow(), d.GetLevel())
    assert np.abs(rgb.astype(int) - ours.astype(int)).max() <= 1


# ----------------------------------------------------------------- responsiveness and cancel
@pytest.mark.slow
def test_cancel_during_the_last_batch_leaves_no_node(scene, phantom, weights_file):
    nodes = _phantom_nodes(scene, phantom)
    count = scene.GetNumberOfNodes()
    state = {"done": 0, "total": -1}

    def progress(done, total):
        state.update(done=done, total=total)

    phases = []
    with pytest.raises(CancelledError):
        ECFusionSlicerLogic(scene).process(
            nodes["MRI"], nodes["PET"], device="cpu", weights=weights_file, batch_size=4, progressCallback=progress,
            cancelCheck=lambda: state["done"] == state["total"], statusCallback=phases.append)
    assert state["done"] == state["total"] > 0  # every batch ran, then the cancel was honoured
    assert scene.GetNumberOfNodes() == count
    # Each status is shown before its cancel check (showing it lets Qt run a Cancel or a scene close, which the
    # check then sees): the last one shown is "Writing the result...", and nothing was written.
    assert phases[:2] == ["Loading PyTorch...", "Loading the network..."] and phases[-1] == "Writing the result..."


@pytest.mark.parametrize("stop_at", ["Loading PyTorch...", "Loading the network...", "Resampling...", "Fusing..."])
def test_every_phase_checks_cancel(scene, phantom, weights_file, stop_at):
    nodes = _phantom_nodes(scene, phantom)
    count = scene.GetNumberOfNodes()
    seen = []
    with pytest.raises(CancelledError):
        ECFusionSlicerLogic(scene).process(nodes["MRI"], nodes["PET"], device="cpu", weights=weights_file,
                                           statusCallback=seen.append, cancelCheck=lambda: stop_at in seen)
    assert seen[-1] == stop_at and scene.GetNumberOfNodes() == count


def test_cancel_during_registration_adds_no_transform(scene, phantom, weights_file):
    nodes = _phantom_nodes(scene, phantom)
    count = scene.GetNumberOfNodes()
    calls = [0]

    def cancel():
        calls[0] += 1
        return calls[0] > 12  # a few optimizer iterations in

    with pytest.raises(CancelledError):
        ECFusionSlicerLogic(scene).process(nodes["MRI"], nodes["PET"], device="cpu", weights=weights_file,
                                           register="rigid", cancelCheck=cancel)
    assert scene.GetNumberOfNodes() == count and calls[0] < 40


# ----------------------------------------------------------------- input checks
@pytest.mark.parametrize("kwargs, message", [
    ({"batch_size": -1}, "batch_size must be between 0 and 256"),
    ({"batch_size": 2.5}, "whole number"),
    ({"ct_window": 0}, "ct_window must be between 1"),
    ({"ct_window": -150}, "ct_window must be between 1"),
    ({"ct_level": float("nan")}, "ct_level must be a finite number"),
    ({"window": float("inf")}, "window must be a finite number"),
    ({"window": 0}, "window must be > 0"),
    ({"level": float("nan")}, "level must be a finite number"),
    ({"register": "elastic"}, "unknown registration 'elastic'"),
    ({"batchSize": 4}, "unknown setting.*batchSize"),
])
def test_numeric_settings_are_validated(scene, phantom, kwargs, message):
    nodes = _phantom_nodes(scene, phantom)
    count = scene.GetNumberOfNodes()
    with pytest.raises(ECFusionError, match=message):
        ECFusionSlicerLogic(scene).process(nodes["MRI"], nodes["PET"], device="cpu", **kwargs)
    assert scene.GetNumberOfNodes() == count


@pytest.mark.slow
def test_parameter_node_values_reach_the_logic_as_given(scene, phantom, weights_file):
    """CT level 0 HU is 0 (not the default); an out-of-range value stored in the node is refused; without a chosen
    output every run makes a new node (a previous result is never overwritten silently)."""
    nodes = _phantom_nodes(scene, phantom)
    logic = ECFusionSlicerLogic(scene)
    p = logic.getParameterNode()
    p.SetNodeReferenceID("anatomicalVolume", nodes["MRI"].GetID())
    p.SetNodeReferenceID("functionalVolume", nodes["CT"].GetID())
    for key, value in {"task": "CT-MRI", "device": "cpu", "weightsPath": weights_file, "ctLevel": "0.0"}.items():
        p.SetParameter(key, value)
    first = logic.processUsingParameterNode(p)
    assert json.loads(first.GetAttribute("ECFusion.second_intensity"))["level"] == 0.0
    assert first.GetAttribute("ECFusion.keep_salient") == "true"  # the default, as in `ecfusion fuse`
    p.SetParameter("keepSalient", "False")  # what parameterNodeWrapper's BoolSerializer writes for the unticked box
    second = logic.processUsingParameterNode(p)
    assert second is not first and node_reference_or_none(p) is None
    assert second.GetAttribute("ECFusion.keep_salient") == "false"  # the switch reached the fusion and its provenance
    assert not np.array_equal(mv.array_from_volume(first), mv.array_from_volume(second))  # and the pixels
    p.SetParameter("ctWindow", "0")
    with pytest.raises(ECFusionError, match="ctWindow"):
        logic.processUsingParameterNode(p)


def node_reference_or_none(p):
    from ECFusionSlicerLib.parameters import node_reference

    return node_reference(p, "outputVolume")


def test_same_volume_twice_is_refused(scene, phantom):
    nodes = _phantom_nodes(scene, phantom)
    with pytest.raises(ECFusionError, match="both the anatomical and the functional"):
        ECFusionSlicerLogic(scene).process(nodes["MRI"], nodes["MRI"], task="CT-MRI", device="cpu")


def test_first_anatomical_candidate_is_a_grey_image(scene):
    from ECFusionSlicerLib.logic import first_anatomical_candidate

    label = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "labels")
    label.SetAndObserveImageData(mv.image_data_from_array(np.zeros((4, 4, 4), np.uint8)))
    add_volume(scene, np.zeros((4, 4, 4, 3), np.uint8), np.eye(4), "RGB photo", vector=True)
    assert first_anatomical_candidate(scene) is None
    grey = add_volume(scene, np.zeros((4, 4, 4), np.float32), np.eye(4), "T1")
    assert first_anatomical_candidate(scene) is grey


def test_scene_without_colour_nodes_colours_in_grey(phantom, weights_file):
    """A bare vtkMRMLScene (no Colors logic): the PET's display node points to a Grey node that does not exist."""
    scene = slicer.vtkMRMLScene()
    nodes = {}
    for key in ("MRI", "PET"):
        img = phantom[key]
        m = np.eye(4)
        m[:3, :3] = mv.RAS_TO_LPS @ np.array(img.GetDirection()).reshape(3, 3) @ np.diag(img.GetSpacing())
        m[:3, 3] = mv.RAS_TO_LPS @ np.array(img.GetOrigin())
        import SimpleITK as sitk

        nodes[key] = add_volume(scene, sitk.GetArrayFromImage(img), m, key)
    assert nodes["PET"].GetDisplayNode().GetColorNode() is None
    out = ECFusionSlicerLogic(scene).process(nodes["MRI"], nodes["PET"], task="PET-MRI", device="cpu",
                                            weights=weights_file)
    assert json.loads(out.GetAttribute("ECFusion.functional_display"))["colorNode"] == "Grey"
    arr = mv.array_from_volume(out).astype(int)
    assert np.abs(arr[..., 0] - arr[..., 1]).max() <= 2  # grey in, grey out


def test_new_scene_logs_no_errors():
    import subprocess
    import sys

    code = ("import sys; sys.path.insert(0, %r); from ECFusionSlicerLib import mrml_volumes as mv; "
            "s = mv.new_scene(); v = mv.volumes_logic(s); print(s.GetFirstNodeByName('PET-Heat') is not None)")
    res = subprocess.run([sys.executable, "-c", code % str(mv.__file__.rsplit("/ECFusionSlicerLib", 1)[0])],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0 and res.stdout.strip() == "True", res.stderr
    assert "ERR" not in res.stderr and "WARN" not in res.stderr, res.stderr


def test_the_logic_leaves_the_process_settings_alone(phantom, weights_file):
    """Inside Slicer the process is the application's: neither importing the logic nor fusing sets the OpenMP wait
    policy or tunes the allocator (ECFusionLib.runtime.tune_cpu is for the command line)."""
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    code = ("import os, sys; sys.path.insert(0, %r); sys.path.insert(0, %r); import ECFusionSlicerLib.logic; "
            "from ECFusionSlicerLib import mrml_volumes as mv; from ECFusionSlicerLib.logic import ECFusionSlicerLogic; "
            "import numpy as np; s = mv.new_scene(); a = s.AddNewNodeByClass('vtkMRMLScalarVolumeNode', 'T1'); "
            "a.SetAndObserveImageData(mv.image_data_from_array((np.indices((8, 32, 32)).sum(0) * 10).astype(np.float32))); "
            "a.CreateDefaultDisplayNodes(); b = s.AddNewNodeByClass('vtkMRMLScalarVolumeNode', 'CT'); "
            "b.SetAndObserveImageData(mv.image_data_from_array((np.indices((8, 32, 32)).sum(0) * 20 - 500).astype(np.float32))); "
            "b.CreateDefaultDisplayNodes(); ECFusionSlicerLogic(s).process(a, b, task='CT-MRI', device='cpu', weights=%r); "
            "from ECFusionLib import runtime; print(os.environ.get('OMP_WAIT_POLICY'), runtime._ALLOCATOR_TUNED)"
            ) % (str(mv.__file__.rsplit("/ECFusionSlicerLib", 1)[0]), str(Path(mv.__file__).parents[2]), weights_file)
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=env)
    assert res.returncode == 0, res.stderr[-2000:]
    assert res.stdout.strip().splitlines()[-1] == "None False"


def test_torch_minimum_and_what_is_offered_without_it():
    """torch >= 2.2 runs the network (2.2.2 is the last for Slicer's Intel-Mac build); without one, ONNX Runtime
    is offered where ECFusionLib has it, else PyTorch through the extension; an imported old torch is never
    replaced in-process."""
    from ECFusionSlicerLib.dependencies import plan, torch_problem

    assert torch_problem("2.2.2") is None and torch_problem("2.13.0+cpu") is None
    assert "older than 2.2" in torch_problem("2.1.2+cu121") and torch_problem(None) == "PyTorch is not installed"
    assert plan("2.2.2", None, True, False).backend == "torch"
    assert plan(None, "1.19.2", True, True).backend == "onnxruntime"
    mac = plan(None, None, True, True)
    assert mac.backend is None and mac.install == "onnxruntime" and "Intel build" in mac.message
    assert "2.2.2" in plan(None, None, True, False).message and plan(None, None, True, False).install == "torch"
    assert plan("2.1.0", "1.19.2", False, False).backend is None


# The logic's own detection rules before issue 12 moved them to ECFusionLib.tasks: the registry must keep them.
DICOM_MODALITY_TO_TASK_BEFORE = {"PT": "PET-MRI", "NM": "SPECT-MRI", "ST": "SPECT-MRI", "CT": "CT-MRI"}
NAME_PATTERNS_BEFORE = [
    (r"(^|[^a-z])(pet|pt|fdg|suv|amyloid|tau)([^a-z]|$)", "PET-MRI"),
    (r"(^|[^a-z])(spect|nm|hmpao|ecd|datscan|perfusion)([^a-z]|$)", "SPECT-MRI"),
    (r"(^|[^a-z])(ct|cta|hu)([^a-z]|$)", "CT-MRI"),
]
NAMES = ["FDG PET", "pet_ct", "PT 3", "SUVbw", "amyloid-PIB", "Tau 2", "brain SPECT", "NM tomo", "HMPAO", "ECD_1",
         "DaTscan", "perfusion", "head CT", "CTA neck", "HU", "CT-PET", "series 3", "petrous", "spectral", "act",
         "T1 MPRAGE", "nmr", "ctx", ""]


def _task_before(modality: str, name: str):
    if modality.upper() in DICOM_MODALITY_TO_TASK_BEFORE:
        return DICOM_MODALITY_TO_TASK_BEFORE[modality.upper()]
    return next((task for pattern, task in NAME_PATTERNS_BEFORE if re.search(pattern, name.lower())), None)


@pytest.mark.parametrize("modality", ["", "PT", "nm", "ST", "CT", "MR", "OT"])
def test_detection_keeps_the_rules_it_had_and_reads_the_subject_hierarchy(scene, modality):
    """detectTask (now ECFusionLib.tasks.detect_task, as on the command line) answers as the logic's own tables did,
    for the modality on the node or on its subject-hierarchy item (what Slicer's DICOM import sets)."""
    logic = ECFusionSlicerLogic(scene)
    sh = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)
    for index, name in enumerate(NAMES):
        node = add_volume(scene, np.zeros((2, 2, 2), np.float32), np.eye(4), name)
        node.SetName(name)
        if modality and index % 2:
            sh.SetItemAttribute(sh.CreateItem(sh.GetSceneItemID(), node), "DICOM.Modality", modality)
        elif modality:
            node.SetAttribute("DICOM.Modality", modality)
        expected = _task_before(modality, name)
        if expected is None:
            with pytest.raises(ECFusionError, match="choose the task"):
                logic.detectTask(node)
        else:
            assert logic.detectTask(node) == expected, (modality, name)
