"""Photon Monte Carlo for disk reflection (slab) and torus reprocessing (BNTorus geometry).

* :mod:`popsynth.mc.geometry`  - slab and sphere-with-bicone matter along rays (exact re-entry).
* :mod:`popsynth.mc.transport` - the vectorised photon loop (torch, CPU or CUDA).
* :mod:`popsynth.mc.greens`    - Green's function tables (names re-exported from grids, table,
  simulate, currency, shipped, interpolate and :mod:`popsynth.io.greens`).
* :mod:`popsynth.mc.build`     - the command that rebuilds the shipped tables
  (``python -m popsynth.mc.build --help``).

Typical use::

    from popsynth.mc import load_greens, apply_greens, transmitted_fraction
    torus = load_greens("torus")                     # data/greens/torus.h5
    out = apply_greens(torus, n_in, inclination_deg=87.0, log_nh=24.5, theta_tor_deg=58.0)
    out.continuum  # [..., n_out] photons per torus.e_out_edges bin; out.lines: [..., 4]
"""

_EXPORTS = ("GreensTable", "Reprocessed", "StaleTableWarning", "check_shipped_tables", "check_table", "apply_greens",
            "is_current", "load_greens", "read_greens", "response_matrix", "transmitted_fraction", "write_greens")
__all__ = list(_EXPORTS)


def __getattr__(name: str):
    # The names above are read from popsynth.mc.greens on first use (PEP 562), so importing a
    # submodule (popsynth.mc.table from popsynth.io.greens, say) does not import all of them.
    if name in _EXPORTS:
        from . import greens

        return getattr(greens, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
