"""recon: sparse-view 3D Gaussian reconstruction.

Data flows one way: data -> priors -> init -> optimise -> evaluate / view / export.
"""

__version__ = "0.1.0"
