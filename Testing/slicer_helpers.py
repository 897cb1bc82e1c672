"""Building real MRML scenes with slicer-core for the logic tests."""
from __future__ import annotations

import numpy as np

from ECFusionSlicerLib import mrml_volumes as mv


def rotation(axis: str, degrees: float) -> np.ndarray:
    a = np.deg2rad(degrees)
    c, s = np.cos(a), np.sin(a)
    i, j = {"x": (1, 2), "y": (0, 2), "z": (0, 1)}[axis]
    m = np.eye(4)
    m[i, i], m[i, j], m[j, i], m[j, j] = c, -s, s, c
    return m


def ijk2ras(spacing, origin, rot=np.eye(4)) -> np.ndarray:
    m = np.eye(4)
    m[:3, :3] = rot[:3, :3] @ np.diag(spacing)
    m[:3, 3] = origin
    return m


def add_volume(scene, arr: np.ndarray, matrix: np.ndarray, name: str, vector: bool = False):
    cls = "vtkMRMLVectorVolumeNode" if vector else "vtkMRMLScalarVolumeNode"
    node = scene.AddNewNodeByClass(cls, name)
    node.SetIJKToRASMatrix(mv.numpy_to_matrix(matrix))
    node.SetAndObserveImageData(mv.image_data_from_array(arr, vector=vector))
    node.CreateDefaultDisplayNodes()
    return node


def add_linear_transform(scene, matrix: np.ndarray, name="T"):
    t = scene.AddNewNodeByClass("vtkMRMLLinearTransformNode", name)
    t.SetMatrixTransformToParent(mv.numpy_to_matrix(matrix))
    return t


def world_positions(node) -> np.ndarray:
    """World RAS (k x j x i x 3) of every voxel centre of ``node`` through its (linear) transforms."""
    m = mv.world_ijk_to_ras(node)
    dims = node.GetImageData().GetDimensions()
    k, j, i = np.indices((dims[2], dims[1], dims[0]))
    ijk1 = np.stack([i, j, k, np.ones_like(i)], -1).astype(float)
    return (ijk1 @ m.T)[..., :3]


def snapshot(node) -> dict:
    """What must not change on an input: voxels, geometry, transform, display settings."""
    d = node.GetDisplayNode()
    return {"array": mv.array_from_volume(node).copy(), "ijk2ras": mv.ijk_to_ras(node).copy(),
            "transform": node.GetTransformNodeID(), "mtime_image": node.GetImageData().GetMTime(),
            "display": (d.GetColorNodeID(), d.GetWindow(), d.GetLevel()) if d else None, "name": node.GetName()}


def same_snapshot(a: dict, b: dict) -> bool:
    return (np.array_equal(a["array"], b["array"]) and np.array_equal(a["ijk2ras"], b["ijk2ras"])
            and a["transform"] == b["transform"] and a["display"] == b["display"] and a["name"] == b["name"]
            and a["mtime_image"] == b["mtime_image"])
