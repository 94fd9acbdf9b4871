"""Photon Monte Carlo for disk reflection (slab) and torus reprocessing (BNTorus geometry).

* :mod:`popsynth.mc.geometry`  - slab and sphere-with-bicone matter along rays (exact re-entry).
* :mod:`popsynth.mc.transport` - the vectorised photon loop (torch, CPU or CUDA).
* :mod:`popsynth.mc.greens`    - Green's function tables: grids, HDF5 IO, application.
* :mod:`popsynth.mc.build`     - the command that rebuilds the shipped tables
  (``python -m popsynth.mc.build --help``).

Typical use::

    from popsynth.mc import load_greens, apply_greens, transmitted_fraction
    torus = load_greens("torus")                     # data/greens/torus.h5
    out = apply_greens(torus, n_in, inclination_deg=87.0, log_nh=24.5, theta_tor_deg=58.0)
    out.continuum  # [..., n_out] photons per torus.e_out_edges bin; out.lines: [..., 4]
"""

from .greens import (  # noqa: F401
    GreensTable,
    Reprocessed,
    StaleTableWarning,
    check_shipped_tables,
    check_table,
    apply_greens,
    is_current,
    load_greens,
    read_greens,
    response_matrix,
    transmitted_fraction,
    write_greens,
)
