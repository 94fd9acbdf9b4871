"""Left-over names of the former ``popsynth.mc.greens`` module (split by responsibility, issue 11).

The code is in :mod:`popsynth.mc.grids`, :mod:`popsynth.mc.table`, :mod:`popsynth.mc.simulate`,
:mod:`popsynth.mc.currency`, :mod:`popsynth.mc.shipped`, :mod:`popsynth.mc.interpolate` and
:mod:`popsynth.io.greens` (see :mod:`popsynth.mc`); import from there. Only the names that
``benchmarks/bench_mc.py`` still imports from here are kept; this module goes once it imports
them from those modules.
"""

from __future__ import annotations

from ..io.greens import read_greens  # noqa: F401
from .grids import (  # noqa: F401
    DEFAULT_THETA_TOR,
    default_torus_log_nh,
    input_energy_edges,
    output_energy_edges,
    slab_cos_edges,
    torus_cos_edges,
)
from .interpolate import response_matrix  # noqa: F401
from .shipped import default_table_path, load_greens  # noqa: F401
