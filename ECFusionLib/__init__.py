"""ECFusionLib: edge-augmented cross-scale transformer fusion of MRI with CT, PET or SPECT.

Pure Python (torch, numpy, SimpleITK, scikit-image); no Qt or Slicer imports.
"""
__version__ = "0.1.0"

import os as _os

# OpenMP threads that spin while waiting collapse when another process (a Slicer session, a training
# run) uses the other cores; passive waiting costs little when the machine is idle. Only takes effect
# if set before torch starts its thread pool, so it is set here, at package import.
_os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
