"""ECFusionLib: edge-augmented cross-scale transformer fusion of MRI with CT, PET or SPECT.

Pure Python (torch, numpy, SimpleITK, scikit-image); no Qt or Slicer imports. Importing it changes nothing
process-wide; programs that own their process may call ``ECFusionLib.runtime.tune_cpu()``.
"""
__version__ = "0.1.0"
