"""ECFusionLib: edge-augmented cross-scale transformer fusion of MRI with CT, PET or SPECT.

Pure Python (torch, numpy, SimpleITK, scikit-image); no Qt or Slicer imports.
"""
__version__ = "0.1.0"
