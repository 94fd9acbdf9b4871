"""popsynth: differentiable AGN population synthesis for the cosmic X-ray background.

The engine reproduces and extends Ananna et al. 2019 (ApJ 871, 240; "A19"): an X-ray
luminosity function held on a (z, log L, log N_H) grid, AGN X-ray spectra tabulated as
tensors, and the cosmic X-ray background (CXB) as a differentiable function of block
weights, fitted by autograd over many random starts at once.
"""

__version__ = "0.1.0"

from .errors import PopsynthError  # noqa: F401
