"""sparseskull: sparse CNN skull shape completion and cranial implant design.

Core package of the SparseSkullCompletion 3D Slicer extension (Li et al. 2023, Sci Rep,
"Sparse convolutional neural network for high-resolution skull shape completion and shape
super-resolution"). Nothing here imports Slicer or Qt.
"""

__version__ = "0.1.0"
