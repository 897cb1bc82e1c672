"""ECFusionLib: edge-augmented cross-scale transformer fusion of MRI with CT, PET or SPECT.

The public API, imported on first use (``import ECFusionLib`` itself loads neither torch nor SimpleITK):

    import ECFusionLib
    fused = ECFusionLib.fuse("mri.nii.gz", "pet.nii.gz", task="PET-MRI")   # SimpleITK image (api.fuse)
    done = ECFusionLib.fuse_file("mri.nii.gz", "ct.nii.gz", "fused.nrrd", task="CT-MRI", ct_window=1800)

Also: ``fuse_pair_folder`` (2D PNG pairs), ``evaluate_pairs`` (metrics of fused PNGs), ``FuseRequest`` /
``FusionSettings`` (the settings objects), ``fuse_images`` (images in, ``FusionResult`` out), ``load_model`` and
``create_model`` (networks), ``TASK_NAMES``. Pure Python (torch, numpy, SimpleITK, scikit-image); no Qt or Slicer
imports. Importing it changes nothing process-wide; programs that own their process may call
``ECFusionLib.runtime.tune_cpu()``.
"""
__version__ = "0.1.0"

# public name -> module that defines it (imported when the name is first used)
_EXPORTS = {
    "fuse": "api", "fuse_file": "api",
    "fuse_pair_folder": "fuse_pairs", "evaluate_pairs": "evaluation",
    "FuseRequest": "fuse_files", "FuseOutcome": "fuse_files",
    "FusionSettings": "fusion", "FusionResult": "fusion", "fuse_images": "fusion",
    "load_model": "weights", "create_model": "registry", "TASK_NAMES": "tasks",
    "ECFusionError": "errors", "WeightsError": "errors",
}
__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'ECFusionLib' has no attribute '{name}'")
    import importlib

    value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    globals()[name] = value  # later uses skip this function
    return value


def __dir__():
    return sorted(set(globals()) | set(__all__))
