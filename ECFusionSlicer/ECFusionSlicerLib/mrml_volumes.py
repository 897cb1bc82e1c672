"""MRML volume helpers that need no Qt: arrays, geometry, exact resampling through transforms, colours.

Coordinates: MRML uses RAS; SimpleITK uses LPS. ``IJKToRAS`` matrices map voxel indices (i, j, k) to RAS mm.
Volume image data has origin 0 and spacing 1: all geometry is in the node's IJKToRAS matrix.
"""
from __future__ import annotations

import numpy as np
import slicer
import vtk
from vtk.util import numpy_support

RAS_TO_LPS = np.diag([-1.0, -1.0, 1.0])


def matrix_to_numpy(m: vtk.vtkMatrix4x4) -> np.ndarray:
    return np.array([[m.GetElement(r, c) for c in range(4)] for r in range(4)])


def numpy_to_matrix(a: np.ndarray) -> vtk.vtkMatrix4x4:
    m = vtk.vtkMatrix4x4()
    for r in range(4):
        for c in range(4):
            m.SetElement(r, c, float(a[r, c]))
    return m


def ijk_to_ras(node) -> np.ndarray:
    m = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(m)
    return matrix_to_numpy(m)


def world_ijk_to_ras(node) -> np.ndarray | None:
    """IJK -> world RAS including a *linear* parent transform chain; None if the chain is non-linear."""
    parent = node.GetParentTransformNode()
    if parent is None:
        return ijk_to_ras(node)
    if not parent.IsTransformToWorldLinear():
        return None
    to_world = vtk.vtkMatrix4x4()
    parent.GetMatrixTransformToWorld(to_world)
    return matrix_to_numpy(to_world) @ ijk_to_ras(node)


def array_from_volume(node) -> np.ndarray:
    """A copy of the voxels as k x j x i (x components) numpy array."""
    return array_from_volume_data(node.GetImageData())


def image_data_from_array(arr: np.ndarray, vector: bool = False) -> vtk.vtkImageData:
    """k x j x i (x c) numpy array -> vtkImageData (origin 0, spacing 1)."""
    ncomp = arr.shape[-1] if vector else 1
    shape = arr.shape[:-1] if vector else arr.shape
    img = vtk.vtkImageData()
    img.SetDimensions(shape[2], shape[1], shape[0])
    flat = np.ascontiguousarray(arr).reshape(-1, ncomp) if vector else np.ascontiguousarray(arr).ravel()
    scalars = numpy_support.numpy_to_vtk(flat, deep=True, array_type=numpy_support.get_vtk_array_type(arr.dtype))
    scalars.SetNumberOfComponents(ncomp)
    img.GetPointData().SetScalars(scalars)
    return img


def resample_onto(moving, reference, background: float | None = None, image: vtk.vtkImageData | None = None,
                  registration: np.ndarray | None = None) -> vtk.vtkImageData:
    """The voxels of ``moving`` (or ``image``, on ``moving``'s grid) sampled at ``reference``'s voxel centres.

    Exact for any parent transforms of either node (linear or not): output IJK -> reference RAS ->
    world -> moving RAS -> moving IJK, all composed into one vtkGeneralTransform for vtkImageReslice
    (Slicer's ResampleVolumeToReferenceVolume ignores a transform on the reference). Linear interpolation;
    points outside ``moving`` get ``background`` (default: its minimum). ``registration`` (4x4, RAS) maps
    reference world points to moving world points (a registration result) and is applied in between.
    """
    t = vtk.vtkGeneralTransform()
    t.PostMultiply()
    t.Concatenate(numpy_to_matrix(ijk_to_ras(reference)))
    ref_to_world = vtk.vtkGeneralTransform()
    slicer.vtkMRMLTransformNode.GetTransformBetweenNodes(reference.GetParentTransformNode(), None, ref_to_world)
    t.Concatenate(ref_to_world)
    if registration is not None:
        t.Concatenate(numpy_to_matrix(registration))
    world_to_moving = vtk.vtkGeneralTransform()
    slicer.vtkMRMLTransformNode.GetTransformBetweenNodes(None, moving.GetParentTransformNode(), world_to_moving)
    t.Concatenate(world_to_moving)
    ras_to_ijk = vtk.vtkMatrix4x4()
    moving.GetRASToIJKMatrix(ras_to_ijk)
    t.Concatenate(ras_to_ijk)

    src = vtk.vtkImageData()
    src.ShallowCopy(image if image is not None else moving.GetImageData())
    src.SetOrigin(0, 0, 0)
    src.SetSpacing(1, 1, 1)
    reslice = vtk.vtkImageReslice()
    reslice.SetInputData(src)
    reslice.SetResliceTransform(t)
    reslice.SetInterpolationModeToLinear()
    reslice.SetBackgroundLevel(float(src.GetScalarRange()[0]) if background is None else background)
    dims = reference.GetImageData().GetDimensions()
    reslice.SetOutputExtent(0, dims[0] - 1, 0, dims[1] - 1, 0, dims[2] - 1)
    reslice.SetOutputOrigin(0, 0, 0)
    reslice.SetOutputSpacing(1, 1, 1)
    reslice.Update()
    out = vtk.vtkImageData()
    out.DeepCopy(reslice.GetOutput())
    return out


def overlap_fraction(moving, reference, registration: np.ndarray | None = None) -> float:
    """Fraction of reference voxels whose world position falls inside ``moving``."""
    ones = vtk.vtkImageData()
    ones.SetDimensions(moving.GetImageData().GetDimensions())
    ones.AllocateScalars(vtk.VTK_UNSIGNED_CHAR, 1)
    ones.GetPointData().GetScalars().Fill(1)
    inside = resample_onto(moving, reference, 0.0, image=ones, registration=registration)
    return float(numpy_support.vtk_to_numpy(inside.GetPointData().GetScalars()).mean())


def sitk_geometry(ijk2ras: np.ndarray) -> tuple[list, list, list]:
    """(origin, spacing, direction) in LPS for SimpleITK from an IJKToRAS matrix."""
    lin = RAS_TO_LPS @ ijk2ras[:3, :3]
    spacing = np.linalg.norm(lin, axis=0)
    direction = lin / spacing
    origin = RAS_TO_LPS @ ijk2ras[:3, 3]
    return origin.tolist(), spacing.tolist(), direction.ravel().tolist()


def displayed_rgb(volume_node, image: vtk.vtkImageData) -> np.ndarray:
    """RGB (k x j x i x 3 uint8) of ``image`` coloured exactly as ``volume_node``'s display node shows
    its own voxels: same colour node, window/level, thresholds. The node is not modified: a detached
    copy of its display node is run on ``image``.

    The copy must not recompute its window/level: ``vtkMRMLScalarVolumeDisplayNode::CopyContent`` copies
    ``AutoWindowLevel`` and ``AutoThreshold``, and ``ProcessMRMLEvents`` runs ``CalculateAutoLevels`` on every
    Modified of the node or of its input (Libs/MRML/Core/vtkMRMLScalarVolumeDisplayNode.cxx). Connecting the
    resampled ``image`` would then set window/level from *its* histogram (0.1-99.9 %), not the one the user
    sees: a PET with a larger field of view than the MRI (whole body, a hot bladder) changed colour. So
    auto window/level and auto threshold are switched off on the copy and the displayed values set again.
    """
    display = volume_node.GetDisplayNode()
    tmp = slicer.vtkMRMLScalarVolumeDisplayNode()
    tmp.SetScene(volume_node.GetScene())
    tmp.CopyContent(display)
    was_modifying = tmp.StartModify()
    tmp.AutoWindowLevelOff()
    tmp.AutoThresholdOff()
    tmp.SetWindowLevel(display.GetWindow(), display.GetLevel())
    tmp.SetThreshold(display.GetLowerThreshold(), display.GetUpperThreshold())
    tmp.EndModify(was_modifying)
    producer = vtk.vtkTrivialProducer()
    producer.SetOutput(image)
    tmp.SetInputImageDataConnection(producer.GetOutputPort())
    conn = tmp.GetOutputImageDataConnection()
    conn.GetProducer().Update()
    rgba = conn.GetProducer().GetOutputDataObject(conn.GetIndex())
    dims = rgba.GetDimensions()
    arr = numpy_support.vtk_to_numpy(rgba.GetPointData().GetScalars()).reshape(dims[2], dims[1], dims[0], -1)
    return np.ascontiguousarray(arr[..., :3]).astype(np.uint8)


def colour_table(color_node, n: int = 256) -> np.ndarray:
    """n x 3 (0-1) samples of a colour node over its own range (procedural or table)."""
    stc = color_node.GetScalarsToColors()
    lo, hi = stc.GetRange()
    out = np.empty((n, 3), dtype=np.float32)
    rgb = [0.0, 0.0, 0.0]
    for i in range(n):  # GetColor(v, rgb): the form both vtkLookupTable and vtkColorTransferFunction wrap
        stc.GetColor(lo + (hi - lo) * i / (n - 1), rgb)
        out[i] = rgb
    return out


def array_from_volume_data(image: vtk.vtkImageData) -> np.ndarray:
    """k x j x i (x components) copy of a vtkImageData's scalars."""
    dims = image.GetDimensions()
    ncomp = image.GetNumberOfScalarComponents()
    arr = numpy_support.vtk_to_numpy(image.GetPointData().GetScalars()).copy()
    return arr.reshape((dims[2], dims[1], dims[0]) + ((ncomp,) if ncomp > 1 else ()))


# Slicer's PET colour nodes: name -> vtkMRMLPETProceduralColorNode type constant.
PET_COLOUR_TYPES = {"PET-Heat": "PETheat", "PET-Rainbow": "PETrainbow", "PET-Rainbow2": "PETrainbow2",
                    "PET-DICOM": "PETDICOM", "PET-HotMetalBlue": "PEThotMetalBlue", "PET-MaximumIntensityProjection": "PETMIP"}


def pet_colour_node(scene, name: str):
    """The scene's PET colour node called ``name`` (PET-Heat, PET-Rainbow2, ...), created if missing.

    Works around a Slicer quirk: ``vtkMRMLPETProceduralColorNode.SetTypeToRainbow2()`` sets the *Rainbow*
    type; the enum value is set directly instead.
    """
    node = scene.GetFirstNodeByName(name)
    if node is not None:
        return node
    if name not in PET_COLOUR_TYPES:
        raise ValueError(f"unknown PET colour node '{name}': use one of {', '.join(PET_COLOUR_TYPES)}")
    node = slicer.vtkMRMLPETProceduralColorNode()
    node.SetType(getattr(node, PET_COLOUR_TYPES[name]))
    node.SetName(name)
    return scene.AddNode(node)


def new_scene():
    """A scene with Slicer's default colour nodes and a Volumes logic, for use outside the application
    (slicer-core). ``volumes_logic(scene)`` returns its Volumes logic.

    Set up as the application does (qSlicerCoreApplication registers module logics with the application
    logic): the Colors logic needs an application logic with a home/share directory, or it logs
    "FindDefaultColorFiles failed"; the Volumes logic finds the Colors logic through
    ``GetModuleLogic("Colors")``, or it logs "invalid Colors module logic" for every volume it loads. The
    share directory is an empty temporary one (Slicer's default colour nodes are built in, not read from it).
    """
    import os
    import shutil
    import tempfile

    scene = slicer.vtkMRMLScene()
    app_logic = slicer.vtkSlicerApplicationLogic()
    app_logic.SetMRMLScene(scene)
    home = tempfile.mkdtemp(prefix="ecfusion-slicer-")
    try:
        os.makedirs(os.path.join(home, "share", "ColorFiles"))
        app_logic.SetHomeDirectory(home)
        app_logic.SetShareDirectory("share")
        colors = slicer.vtkSlicerColorLogic()
        colors.SetMRMLApplicationLogic(app_logic)
        app_logic.SetModuleLogic("Colors", colors)
        colors.SetMRMLScene(scene)  # adds the default colour nodes (Grey, PET-Heat, ...)
    finally:
        shutil.rmtree(home, ignore_errors=True)
    volumes = slicer.vtkSlicerVolumesLogic()
    volumes.SetMRMLApplicationLogic(app_logic)
    app_logic.SetModuleLogic("Volumes", volumes)
    volumes.SetMRMLScene(scene)
    scene._ecfusion_logics = {"application": app_logic, "Colors": colors, "Volumes": volumes}  # alive with the scene
    return scene


def volumes_logic(scene):
    """The Volumes module logic for ``scene``: the application's inside Slicer, else the one ``new_scene`` made."""
    logics = getattr(scene, "_ecfusion_logics", None)
    if logics is not None:
        return logics["Volumes"]
    modules = getattr(slicer, "modules", None)
    if modules is not None and hasattr(modules, "volumes"):
        return modules.volumes.logic()
    raise ValueError("no Volumes logic for this scene: create it with new_scene() outside the Slicer application")


def sitk_image(arr: np.ndarray, ijk2ras: np.ndarray):
    """``arr`` ((k, j, i) grey or (k, j, i, 3) RGB) as a SimpleITK image with the geometry of ``ijk2ras`` (in LPS)."""
    import SimpleITK as sitk

    img = sitk.GetImageFromArray(arr, isVector=arr.ndim == 4)
    origin, spacing, direction = sitk_geometry(ijk2ras)
    img.SetOrigin(origin)
    img.SetSpacing(spacing)
    img.SetDirection(direction)
    return img


def sitk_image_on(reference, arr: np.ndarray):
    """``arr``, voxels on ``reference``'s grid, as a SimpleITK image placed where ``reference`` is shown: through
    its linear parent transforms, or on its own grid under a non-linear one (the fused output then follows it)."""
    world = world_ijk_to_ras(reference)
    return sitk_image(arr, world if world is not None else ijk_to_ras(reference))


def sitk_image_in_world(node):
    """The node's voxels as a SimpleITK image placed in world space (linear parent transforms applied to the
    geometry, no resampling). Raises ValueError for a non-linear parent transform."""
    m = world_ijk_to_ras(node)
    if m is None:
        raise ValueError(f"'{node.GetName()}' is under a non-linear transform: harden it first to register")
    return sitk_image(array_from_volume(node), m)


def lps_to_ras_matrix(m_lps: np.ndarray) -> np.ndarray:
    """A 4x4 point mapping in LPS coordinates expressed in RAS (F M F with F = diag(-1, -1, 1, 1))."""
    f = np.diag([-1.0, -1.0, 1.0, 1.0])
    return f @ m_lps @ f
