"""Photon Monte Carlo for disk reflection (slab) and torus reprocessing (BNTorus geometry), and
its Green's function tables.

* :mod:`popsynth.mc.geometry`    - slab and sphere-with-bicone matter along rays (exact re-entry).
* :mod:`popsynth.mc.transport`   - the vectorised photon loop (torch, CPU or CUDA).
* :mod:`popsynth.mc.grids`       - energy and inclination bins, default nodes of the tables.
* :mod:`popsynth.mc.table`       - :class:`GreensTable` (normalisation and components), version keys.
* :mod:`popsynth.mc.simulate`    - the Monte Carlo driver: one configuration, jobs, a whole table.
* :mod:`popsynth.mc.currency`    - was a table built with today's code and physics data?
* :mod:`popsynth.mc.shipped`     - the shipped tables: named (:class:`ShippedTable`), read and
  checked once per process (:func:`load_greens`).
* :mod:`popsynth.mc.interpolate` - applying a table: interpolation, response matrices, the
  transmitted beam.
* :mod:`popsynth.io.greens`      - the HDF5 files (read, write, lazy arrays).
* :mod:`popsynth.mc.build`       - the command that rebuilds the shipped tables
  (``python -m popsynth.mc.build --help``).

Typical use::

    from popsynth.mc import load_greens, apply_greens, transmitted_fraction
    torus = load_greens("torus")                     # data/greens/torus.h5
    out = apply_greens(torus, n_in, inclination_deg=87.0, log_nh=24.5, theta_tor_deg=58.0)
    out.continuum  # [..., n_out] photons per torus.e_out_edges bin; out.lines: [..., 4]
"""

# name -> the module defining it, read on first use (PEP 562), so that importing one submodule
# (popsynth.mc.table from popsynth.io.greens, say) does not import the others
_EXPORTS = {
    "GreensTable": "table", "Reprocessed": "table", "StaleTableWarning": "currency", "check_table": "currency",
    "is_current": "currency", "check_shipped_tables": "shipped", "load_greens": "shipped",
    "ShippedTable": "shipped", "apply_greens": "interpolate", "response_matrix": "interpolate",
    "transmitted_fraction": "interpolate", "read_greens": "..io.greens", "write_greens": "..io.greens",
}
__all__ = list(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        from importlib import import_module

        mod = _EXPORTS[name]
        return getattr(import_module(mod if mod.startswith("..") else f".{mod}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
