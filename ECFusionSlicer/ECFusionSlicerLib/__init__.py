"""Qt-free parts of the ECFusionSlicer module (run with the full Slicer or with the slicer-core wheel)."""
