"""assay: a PyTorch workbench for the science of deep learning.

Interpretability methods (dictionaries, probes, steering, lenses, attribution, data
attribution, robustness, pruning) checked against worlds whose ground truth is known.
Importing the package does no work: every submodule is imported on demand.
"""

__version__ = "0.1.0"
