"""Left-over names of the former ``popsynth.spectra.model`` module (split by responsibility, issue 11).

The code lives in modules by responsibility, each importing only those below it (no cycles):

* :mod:`popsynth.spectra.component` - the :class:`Component` base class, :class:`Transmitted`
  and :class:`Scattered`;
* :mod:`popsynth.spectra.reprocessed` - disk reflection and torus reprocessing (Green's tables);
* :mod:`popsynth.spectra.external_torus` - an XSPEC torus table as a component;
* :mod:`popsynth.spectra.registry` - the named spectral models (:func:`make_components`,
  :func:`load_tables`);
* :mod:`popsynth.spectra.table` - :class:`SpectralTable` and its builder (no IO);
* :mod:`popsynth.spectra.cache` - cache keys and the on-disk cache (:func:`build_spectral_table`).

Import from there. Only the names that modules of other areas still import from here are kept
(run, config, resources, cxb, observables, constraints, mock, unresolved, physical_run,
physical_spectra, benchmarks and their tests); this module goes once they import them from
those modules.
"""

from __future__ import annotations

from .cache import build_spectral_table  # noqa: F401
from .registry import SPECTRAL_MODELS, make_components  # noqa: F401
from .table import SpectralTable, default_energy_grid  # noqa: F401
