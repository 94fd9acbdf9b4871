"""The Green's function table (:class:`GreensTable`), its version keys and layout constants.

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
  analytically (:func:`~popsynth.mc.interpolate.transmitted_fraction`: exp(-N_H sigma_tot(E)) for lines of sight through
  the torus, 1 in the opening); T_mc is kept so tests can compare the two.

For the slab (pexrav / pexmon set-up, Magdziarz & Zdziarski 1995; Nandra et al. 2007) the
isotropic point source sits on the surface of a semi-infinite slab covering 2 pi sr, so G is the
reflection spectrum for reflection factor R = 1: scale by R for other values.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np
import torch

from .transport import MC_TRANSPORT_VERSION

GREENS_FORMAT_VERSION = "1"
"""Layout version of the HDF5 files (bumped when datasets or attributes change meaning)."""

NORMALISATION = (
    "N_out[i,o] = sum_j G[i,o,j] N_in[j]; N_in = photons per input bin the same observer receives "
    "directly from the bare isotropic source; G = escaping photons per unit solid angle x 4 pi / "
    "injected photons (per energy pair); slab: R = 1 (2 pi sr); transmitted beam not included"
)

_ARRAYS = ("G", "G_line", "T_mc", "G_rel_err", "G_line_rel_err", "T_mc_rel_err")

#: dtype in memory of each big array (float16 error arrays are widened as before).
_ARRAY_DTYPES = {"G": np.float32, "G_line": np.float32, "T_mc": np.float32, "G_rel_err": np.float32,
                 "G_line_rel_err": np.float32, "T_mc_rel_err": np.float32}


class Reprocessed(NamedTuple):
    """Reprocessed photon spectrum returned by :func:`apply_greens`.

    continuum: [..., n_out] photons per output bin (scattered continuum incl. Compton
    shoulders); lines: [..., L] photons in each fluorescence line (delta functions at
    ``GreensTable.line_energies_keV``). Same units as the input spectrum.
    """

    continuum: torch.Tensor
    lines: torch.Tensor


@dataclass
class GreensTable:
    """Green's functions of one geometry kind on a (log N_H, theta_tor, inclination) grid.

    kind: "torus" or "slab". e_in_edges [n_in + 1], e_out_edges [n_out + 1]: keV.
    log_nh [n_nh]: log10 N_H nodes (cm^-2; the slab has one node, +inf for semi-infinite).
    theta_tor_deg [n_th]: torus half-opening angles (slab: one node, NaN).
    cos_edges [n_th, n_inc + 1]: inclination bin edges in cos i for each theta node.
    n_torus_bins: the first ``n_torus_bins`` inclination bins look through the torus (0: slab).
    line_names (L), line_energies_keV [L].
    G [n_nh, n_th, n_inc, n_out, n_in], G_line [n_nh, n_th, n_inc, L, n_in],
    T_mc [n_nh, n_th, n_inc, n_in]: see the module docstring (float32 on disk).
    G_rel_err, G_line_rel_err, T_mc_rel_err: Monte Carlo relative standard errors of the same
    shapes (from the scatter between independent photon batches; 0 where the entry is 0).
    photons [n_nh, n_th]: photons injected per configuration.
    absorbed, dropped, roulette [n_nh, n_th, n_in]: fractions of injected photons absorbed,
    scattered below the energy floor, and removed net by Russian roulette.
    meta: provenance (version_key, seed, device, timings, code versions, xraydb version and
    database sha256, ...).
    medium_ref: the tabulated physics the table was built with (:func:`medium_reference`:
    rows [2 + L, n_medium] float64, ln_e0, dln, scattering, line_names, line_energies_keV,
    source), compared with today's by :func:`check_table`; empty for tables that predate it.
    """

    kind: str
    e_in_edges: np.ndarray
    e_out_edges: np.ndarray
    log_nh: np.ndarray
    theta_tor_deg: np.ndarray
    cos_edges: np.ndarray
    n_torus_bins: int
    line_names: tuple[str, ...]
    line_energies_keV: np.ndarray
    G: np.ndarray
    G_line: np.ndarray
    T_mc: np.ndarray
    G_rel_err: np.ndarray
    G_line_rel_err: np.ndarray
    T_mc_rel_err: np.ndarray
    photons: np.ndarray
    absorbed: np.ndarray
    dropped: np.ndarray
    roulette: np.ndarray
    meta: dict = field(default_factory=dict)
    medium_ref: dict = field(default_factory=dict, repr=False, compare=False)
    _torch_cache: dict = field(default_factory=dict, repr=False, compare=False)
    # popsynth.io.greens._LazyArrays of a lazily read table
    _lazy: object | None = field(default=None, repr=False, compare=False)

    def __getattr__(self, name: str):
        # Only reached when ordinary lookup fails: a big array of a table read lazily
        # (read_greens(lazy=True), load_greens) that has not been used yet is read now.
        lazy = self.__dict__.get("_lazy")
        if lazy is not None and name in lazy.names:
            value = lazy.read(name)
            self.__dict__[name] = value
            return value
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    def loaded_arrays(self) -> tuple[str, ...]:
        """Names of the big arrays (``G``, ``G_line``, ``T_mc`` and their errors) held in memory;
        those of a lazily read table that were never used are still on disk."""
        return tuple(n for n in _ARRAYS if n in self.__dict__)

    @property
    def n_in(self) -> int:
        return len(self.e_in_edges) - 1

    @property
    def n_out(self) -> int:
        return len(self.e_out_edges) - 1

    @property
    def n_inc(self) -> int:
        return self.cos_edges.shape[1] - 1

    @property
    def version_key(self) -> str:
        return str(self.meta.get("version_key", ""))

    def tensors(self, device: torch.device | str = "cpu") -> dict[str, torch.Tensor]:
        """Tensors on ``device`` (cached per device): G and G_line as stored (float32, to halve
        the memory of the big arrays; gathered slices are promoted to float64), cos_edges and
        the nodes as float64."""
        key = str(torch.device(device))
        if key not in self._torch_cache:
            t = lambda a: torch.as_tensor(np.asarray(a, dtype=np.float64), device=device)  # noqa: E731
            t32 = lambda a: torch.as_tensor(np.asarray(a, dtype=np.float32), device=device)  # noqa: E731
            self._torch_cache[key] = {
                "G": t32(self.G), "G_line": t32(self.G_line), "cos_edges": t(self.cos_edges),
                "log_nh": t(self.log_nh), "theta": t(self.theta_tor_deg),
            }
        return self._torch_cache[key]

    def line_bin_matrix(self, device: torch.device | str = "cpu") -> torch.Tensor:
        """[n_out, L] float64 0/1 matrix putting each line into the output bin holding it."""
        m = np.zeros((self.n_out, len(self.line_names)))
        for l, e in enumerate(self.line_energies_keV):
            o = int(np.searchsorted(self.e_out_edges, e, side="right")) - 1
            if 0 <= o < self.n_out:
                m[o, l] = 1.0
        return torch.as_tensor(m, device=device)


def version_key(spec: dict) -> str:
    """sha256 (first 20 hex digits) of a JSON-serialisable build specification."""
    def enc(o):
        if isinstance(o, np.ndarray):
            return hashlib.sha256(np.ascontiguousarray(o, dtype=np.float64).tobytes()).hexdigest()
        raise TypeError(type(o))

    return hashlib.sha256(json.dumps(spec, sort_keys=True, default=enc).encode()).hexdigest()[:20]


def grids_key(kind, e_in, e_out, nh_nodes, th_nodes, cos_edges) -> str:
    """sha256 (20 hex digits) of a table's kind and grids (energy edges, log N_H and theta_tor
    nodes, inclination edges): the exact-match part of :func:`check_table`."""
    return version_key({
        "kind": str(kind), "e_in": np.asarray(e_in, dtype=np.float64),
        "e_out": np.asarray(e_out, dtype=np.float64),
        "log_nh": [float(x) for x in nh_nodes],
        "theta": [None if math.isnan(t) else float(t) for t in th_nodes],
        "cos_edges": np.asarray(cos_edges, dtype=np.float64),
    })


def _physics_spec(kind, medium_fingerprint, e_in, e_out, nh_nodes, th_nodes, cos_edges) -> dict:
    """What a table's values depend on apart from photon numbers and seeds (physics_key)."""
    return {
        "format": GREENS_FORMAT_VERSION, "transport": MC_TRANSPORT_VERSION, "kind": kind,
        "medium": medium_fingerprint, "e_in": np.asarray(e_in, dtype=np.float64),
        "e_out": np.asarray(e_out, dtype=np.float64),
        "log_nh": [float(x) for x in nh_nodes],
        "theta": [None if math.isnan(t) else float(t) for t in th_nodes],
        "cos_edges": np.asarray(cos_edges, dtype=np.float64),
    }
