"""recon: sparse-view 3D Gaussian reconstruction.

Data flows one way: data -> priors -> init -> optimise -> evaluate / view / export.
"""

import os as _os
import sys as _sys

__version__ = "0.1.0"

# OpenMP threads that spin while waiting make a busy machine 10x slower: a thread spinning
# at a barrier holds its core while the peer it waits for sits descheduled behind another
# process. Passive waiting (sleep at once) costs little on an idle machine. libgomp reads
# this when it loads, i.e. when torch is first imported, so it must be set before that;
# an explicit OMP_WAIT_POLICY / GOMP_SPINCOUNT from the user wins.
if "torch" not in _sys.modules and "GOMP_SPINCOUNT" not in _os.environ:
    _os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
