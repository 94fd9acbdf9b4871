"""AGN X-ray spectra as sums of components, tabulated per log N_H cell: the public names.

The code lives in modules by responsibility, each importing only those below it (no cycles):

* :mod:`popsynth.spectra.component` - the :class:`Component` base class, :class:`Transmitted`
  and :class:`Scattered`;
* :mod:`popsynth.spectra.reprocessed` - disk reflection and torus reprocessing (Green's tables);
* :mod:`popsynth.spectra.external_torus` - an XSPEC torus table as a component;
* :mod:`popsynth.spectra.registry` - the named spectral models (:func:`make_components`);
* :mod:`popsynth.spectra.table` - :class:`SpectralTable` and its builder (no IO);
* :mod:`popsynth.spectra.cache` - cache keys and the on-disk cache (:func:`build_spectral_table`).

This module re-exports their public names, so ``from popsynth.spectra.model import ...`` keeps
working for the modules that use it (run, cxb, observables, mock, physical_run, unresolved,
constraints, figures, benchmarks and tests).
"""

from __future__ import annotations

__all__ = ["build_spectral_table", "file_sha256", "spectral_table_key", "Component", "Scattered", "Transmitted",
           "SPECTRAL_MODELS", "default_components", "make_components", "OBSCURED_LOGNH", "TABLE_FORMAT",
           "SpectralTable", "compute_spectral_table", "default_energy_grid", "spectra_per_draw"]

# re-exports for the importers named above (the definitions are in the modules listed)
from .cache import (  # noqa: F401
    _describe_for_key,
    _greens_sha256,
    build_spectral_table,
    file_sha256,
    spectral_table_key,
)
from .component import Component, Scattered, Transmitted  # noqa: F401
from .registry import SPECTRAL_MODELS, default_components, make_components  # noqa: F401
from .table import (  # noqa: F401
    OBSCURED_LOGNH,
    TABLE_FORMAT,
    SpectralTable,
    compute_spectral_table,
    default_energy_grid,
    spectra_per_draw,
)
