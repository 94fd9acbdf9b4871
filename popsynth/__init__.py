"""popsynth: differentiable AGN population synthesis for the cosmic X-ray background.

The engine reproduces and extends Ananna et al. 2019 (ApJ 871, 240; "A19"): an X-ray
luminosity function held on a (z, log L, log N_H) grid, AGN X-ray spectra tabulated as
tensors, and the cosmic X-ray background (CXB) as a differentiable function of block
weights, fitted by autograd over many random starts at once.
"""

__version__ = "0.1.0"

import os as _os

# Large CPU tensors (cubes of tens of MB, the [Q, M] gathers of the spectral interpolation) are
# fresh mmap allocations each time; with 4 kB pages the first touch of every page faults, which
# made building a [10, 119, 120, 60] cube 4x slower than the same numpy code (numpy asks for
# transparent huge pages on large arrays by default). torch does the same when this variable is
# set before its first large allocation; results are unchanged (allocation only). A value set
# by the user wins; THP_MEM_ALLOC_ENABLE=0 turns it off.
_os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")

from .errors import PopsynthError  # noqa: F401
