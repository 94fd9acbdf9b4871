"""Green's function tables of the photon Monte Carlo: the public names.

The code lives in modules by responsibility (none imports this one):
:mod:`popsynth.mc.grids` (energy and inclination bins, default nodes), :mod:`popsynth.mc.table`
(:class:`GreensTable`, version keys), :mod:`popsynth.mc.simulate` (the Monte Carlo driver:
:func:`simulate_config`, :func:`build_table`, :func:`dask_map`), :mod:`popsynth.mc.currency`
(:func:`check_table`: built with today's physics?), :mod:`popsynth.io.greens` (HDF5 files:
:func:`write_greens`, :func:`read_greens`, :func:`add_medium_reference`),
:mod:`popsynth.mc.shipped` (the shipped tables, read and checked once per process:
:func:`load_greens`) and :mod:`popsynth.mc.interpolate` (:func:`response_matrix`,
:func:`apply_greens`, :func:`transmitted_fraction`). This module re-exports their names for
``popsynth.mc.build``, benchmarks and tests.

Normalisation convention
------------------------
For an observer at inclination i (angle from the slab normal / torus symmetry axis),

    N_out[i, o] = sum_j G[i, o, j] * N_in[j]

where N_in[j] is the photon spectrum per input bin j that the SAME observer would receive
directly from the bare isotropic source (photons per bin, any flux unit), and N_out[i, o] is
the reprocessed photon spectrum per output bin o in the same unit. Equivalently

    G[i, o, j] = (photons escaping into inclination bin i and output bin o, per unit solid
                  angle) x 4 pi / (photons injected in input bin j by the isotropic source),

which a run estimates as W / (N_j * dmu_i): W the escaped weight in the bin, N_j the photons
injected in input bin j, dmu_i the width of inclination bin i in cos i. (The torus source is
isotropic over 4 pi and escapes are folded onto cos i = |d_z|, solid angle 4 pi dmu; the slab
source sends the downward half of an isotropic source, N_j = half of the isotropic total, into
the slab, and reflection leaves into 2 pi dmu. Both reduce to W / (N_j dmu).)

Components are kept apart:

* ``G``       [n_nh, n_th, n_inc, n_out, n_in]: scattered continuum, including fluorescence
  photons that were Compton scattered after emission (the Compton shoulder);
* ``G_line``  [n_nh, n_th, n_inc, L, n_in]: fluorescence line photons (Fe Ka, Fe Kb, Ni Ka,
  Ni Kb) escaping unscattered, as delta functions at the line energies (photons, not per bin);
* ``T_mc``    [n_nh, n_th, n_inc, n_in]: the Monte Carlo's own zeroth-order (never interacted)
  beam, in the same normalisation. It is NOT part of G: the transmitted beam is applied
  analytically (:func:`transmitted_fraction`: exp(-N_H sigma_tot(E)) for lines of sight through
  the torus, 1 in the opening); T_mc is kept so tests can compare the two.

For the slab (pexrav / pexmon set-up, Magdziarz & Zdziarski 1995; Nandra et al. 2007) the
isotropic point source sits on the surface of a semi-infinite slab covering 2 pi sr, so G is the
reflection spectrum for reflection factor R = 1: scale by R for other values.

Interpolation and grid limits
-----------------------------
:func:`response_matrix` and :func:`apply_greens` interpolate linearly in log N_H and theta_tor
between table nodes and linearly in cos i between the centres of the inclination bins that lie
on the same side of the torus opening as the requested line of sight (so an observer in the
opening never mixes with bins seen through the torus); beyond the outermost bin centre of that
side the end bin is used (nearest). log N_H or theta_tor outside the node range raise
:class:`~popsynth.errors.PopsynthError`, or, with ``out_of_grid="clamp"``, are clamped to the
nearest node with a ``UserWarning``: never silently.

Currency (is a table built with today's physics?)
------------------------------------------------
Each table stores the tabulated interaction physics it was built with (``medium_rows``: the
:class:`~popsynth.mc.transport.Medium` rows, ln sigma_tot, P_C and P_line on every node of
the medium's energy grid; the line energies, yields, K edges and jump ratios; the tabulation
arguments) and the xraydb version and database sha256. :func:`check_table` compares these
with today's code and data: the format and transport versions, the kind, the table's grids
(``grids_key``) and the medium's tabulation arguments must match exactly; the tabulated
arrays and line data must agree within the relative tolerance :data:`MEDIUM_RTOL` (1e-9), so
floating-point noise (numpy's AVX-512 ``exp`` differs by 1 ulp on some nodes) passes while a
real change of a cross section, yield or line energy (1e-6 and up) does not.
:func:`load_greens` runs a sampled version of the check once per process per file and warns
with :class:`StaleTableWarning` (the table is still used); :func:`check_shipped_tables` returns
the results. Rebuild stale tables with ``python -m popsynth.mc.build --kind all``.
"""

from __future__ import annotations

# re-exports (the definitions are in the modules named above)
from ..io.greens import (  # noqa: F401
    MEDIUM_DATASET,
    _LazyArrays,
    _read_medium_reference,
    _round_mantissa,
    _write_medium_reference,
    add_medium_reference,
    read_greens,
    write_greens,
)
from .currency import (  # noqa: F401
    CHECK_EDGE_HALF_WIDTH,
    CHECK_STRIDE,
    MEDIUM_REFERENCE_VERSION,
    MEDIUM_RTOL,
    REBUILD_COMMAND,
    StaleTableWarning,
    TableCheck,
    build_tabulation,
    check_nodes,
    check_table,
    is_current,
    medium_reference,
    xraydb_provenance,
)
from .grids import (  # noqa: F401
    DEFAULT_THETA_TOR,
    FE_K_EDGE_KEV,
    NI_K_EDGE_KEV,
    default_torus_log_nh,
    input_energy_edges,
    output_energy_edges,
    slab_cos_edges,
    torus_cos_edges,
)
from .interpolate import (  # noqa: F401
    apply_greens,
    interpolation_corners,
    response_matrix,
    transmitted_fraction,
)
from .shipped import _clear_check_caches, check_shipped_tables, default_table_path, load_greens  # noqa: F401
from .simulate import (  # noqa: F401
    ConfigResult,
    build_table,
    config_seed,
    dask_map,
    run_config_job,
    simulate_config,
)
from .table import (  # noqa: F401
    _ARRAY_DTYPES,
    _ARRAYS,
    GREENS_FORMAT_VERSION,
    NORMALISATION,
    GreensTable,
    Reprocessed,
    grids_key,
    version_key,
)
