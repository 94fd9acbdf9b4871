"""The (z, log L, log N_H) grid, its quadrature weights and the 15 A19 blocks.

Axes
----
- z: nodes with trapezoid weights. Default: the published A19 array's 119 nodes
  (0.002..0.097 step 0.005, 0.10..0.95 step 0.05, 1.00..5.00 step 0.05). The range
  0 < z < 0.002 is left out, as in A19 (it holds ~1e-8 of the comoving volume to z = 5).
- log L (L = intrinsic rest-frame 2-10 keV luminosity, erg/s): cells of equal width,
  default 120 cells of 0.05 dex over 41-47. A value on this axis is the cell average.
- log N_H (cm^-2): cells of equal width, default 60 cells of 0.1 dex over 20-26. The
  absorption function is piecewise constant per dex, so its cell values are exact.

Cell edges include every block boundary (log L = 42, 43, 44, 45; log N_H = 22, 24), so the
15 blocks of A19 section 5.1 partition the (log L, log N_H) plane exactly and the absorption
function integrates exactly. (A19's published array samples log L and log N_H at nodes
linspace(41, 47, 150) and linspace(20, 26, 80); the export writes that layout too.)

Blocks: defined once in :mod:`popsynth.blocks` (N_H classes unabsorbed 20-22, Compton-thin 22-24,
Compton-thick 24-26, times the luminosity ranges [41,42), [42,43), [43,44), [44,45), [45,47]).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from ._tensor import as_tensor
from .blocks import BLOCKS
from .errors import PopsynthError

# aliases onto the block layout (popsynth.blocks.BLOCKS), kept for their importers
NH_CLASS_EDGES = BLOCKS.nh_edges
NH_CLASS_NAMES = BLOCKS.nh_names
LOGL_BLOCK_EDGES = BLOCKS.logl_edges
N_BLOCKS = BLOCKS.n


def a19_z_nodes() -> np.ndarray:
    """The 119 redshift nodes of the published A19 XLF array (unitless z)."""
    return np.concatenate(
        [np.arange(0.002, 0.1, 0.005), np.arange(0.1, 1.0, 0.05), np.arange(1.0, 5.05, 0.05)]
    )


def a19_logl_nodes() -> np.ndarray:
    """The 150 log L nodes of the published A19 array (log10 erg/s, 41..47)."""
    return np.linspace(41.0, 47.0, 150)


def a19_lognh_nodes() -> np.ndarray:
    """The 80 log N_H nodes of the published A19 array (log10 cm^-2, 20..26)."""
    return np.linspace(20.0, 26.0, 80)


def trapezoid_weights(x: np.ndarray) -> np.ndarray:
    """Trapezoid-rule weights for nodes ``x`` [n]: sum(w * f(x)) approximates the integral."""
    dx = np.diff(x)
    w = np.zeros_like(x)
    w[:-1] += dx / 2
    w[1:] += dx / 2
    return w


def block_index_of(nh_class, lum_range):
    """Alias of :meth:`popsynth.blocks.Blocks.index_of`: block k of N_H class c and luminosity range j."""
    return BLOCKS.index_of(nh_class, lum_range)


def lum_range_of_blocks():
    """Alias of :meth:`popsynth.blocks.Blocks.lum_range`: long tensor [15]."""
    return BLOCKS.lum_range()


def nh_class_of_blocks():
    """Alias of :meth:`popsynth.blocks.Blocks.nh_class`: long tensor [15]."""
    return BLOCKS.nh_class()


def block_names() -> list[str]:
    """Alias of :meth:`popsynth.blocks.Blocks.names`: the 15 names in index order."""
    return BLOCKS.names()


@dataclass
class Grid:
    """Grid of the XLF cube phi[z, log L, log N_H] with quadrature weights.

    Attributes (numpy float64 unless stated):
      z [nz], z_weights [nz] (trapezoid, unitless);
      logl_edges [nL+1], logl [nL] (cell centres, log10 erg/s), dlogl [nL] (dex);
      lognh_edges [nN+1], lognh [nN] (log10 cm^-2), dlognh [nN] (dex);
      block_index: torch.long [nL, nN], the block k of every (log L, log N_H) cell;
      nh_class: torch.long [nN], 0/1/2 for unabsorbed / Compton-thin / Compton-thick.
    """

    z: np.ndarray = field(default_factory=a19_z_nodes)
    logl_edges: np.ndarray = field(default_factory=lambda: np.linspace(41.0, 47.0, 121))
    lognh_edges: np.ndarray = field(default_factory=lambda: np.linspace(20.0, 26.0, 61))

    def __post_init__(self):
        self.z = np.asarray(self.z, dtype=np.float64)
        self.logl_edges = np.asarray(self.logl_edges, dtype=np.float64)
        self.lognh_edges = np.asarray(self.lognh_edges, dtype=np.float64)
        if self.z.ndim != 1 or self.z.size < 3 or np.any(np.diff(self.z) <= 0) or self.z[0] <= 0:
            raise PopsynthError("z nodes must be >= 3 increasing values > 0", "fix the grid definition")
        for name, edges, must in (
            ("log L", self.logl_edges, LOGL_BLOCK_EDGES),
            ("log N_H", self.lognh_edges, NH_CLASS_EDGES),
        ):
            if edges.ndim != 1 or np.any(np.diff(edges) <= 0):
                raise PopsynthError(f"{name} cell edges must increase", "fix the grid definition")
            for b in must:
                if not np.any(np.isclose(edges, b, atol=1e-9)):
                    raise PopsynthError(
                        f"{name} cell edges must include the block boundary {b:g}",
                        f"choose edges that contain {must}",
                    )
        self.z_weights = trapezoid_weights(self.z)
        self.logl = 0.5 * (self.logl_edges[1:] + self.logl_edges[:-1])
        self.dlogl = np.diff(self.logl_edges)
        self.lognh = 0.5 * (self.lognh_edges[1:] + self.lognh_edges[:-1])
        self.dlognh = np.diff(self.lognh_edges)
        self.blocks = BLOCKS
        self.nh_class = torch.as_tensor(BLOCKS.classes_of_cells(self.lognh), dtype=torch.long)
        self.block_index = BLOCKS.index_of_cells(self.logl, self.lognh)
        self._cache = {}

    @property
    def shape(self) -> tuple[int, int, int]:
        """(nz, nL, nN)."""
        return (self.z.size, self.logl.size, self.lognh.size)

    def _cached(self, key, make):
        # one value per key; the returned tensors are shared, so callers must not modify them in place
        if key not in self._cache:
            self._cache[key] = make()
        return self._cache[key]

    def block_slices(self) -> tuple[list[slice], list[slice]]:
        """The blocks as contiguous cell ranges: (log L slices [n_lum], log N_H slices [n_classes]).

        Block k = n_lum * c + j holds the cells [lum[j], nh[c]]. The cell edges increase and
        contain every block boundary, so each range is one non-empty run of cells."""

        def runs(of_cells, n):
            of_cells = np.asarray(of_cells)
            out = [slice(int(np.searchsorted(of_cells, i, "left")), int(np.searchsorted(of_cells, i, "right")))
                   for i in range(n)]
            assert all(s.stop > s.start for s in out) and np.all(np.diff(of_cells) >= 0)
            return out

        return self._cached(("block_slices",), lambda: (runs(self.blocks.ranges_of_cells(self.logl), self.blocks.n_lum),
                                                       runs(self.blocks.classes_of_cells(self.lognh), self.blocks.n_classes)))

    def block_masks(self, device=None) -> torch.Tensor:
        """One-hot block membership, float64 [N_BLOCKS, nL, nN] (a shared buffer: do not modify)."""
        dev = torch.device("cpu") if device is None else torch.device(device)
        return self._cached(("masks", str(dev)), lambda: self.blocks.masks(self.block_index, dev))

    def buffer(self, name: str, device=None) -> torch.Tensor:
        """A grid array as a float64 tensor on ``device``, made once (shared: do not modify).

        ``name``: one of z, z_weights, logl, logl_edges, dlogl, lognh, lognh_edges, dlognh, or
        ``lum_weight`` (L dlogL per log L cell, 10^logl * dlogl, erg/s dex)."""
        dev = torch.device("cpu") if device is None else torch.device(device)
        arrays = {"lum_weight": lambda: 10.0 ** self.logl * self.dlogl}
        if name not in arrays and name not in ("z", "z_weights", "logl", "logl_edges", "dlogl", "lognh",
                                                "lognh_edges", "dlognh"):
            raise PopsynthError(f"the grid has no array `{name}`", "ask for z, z_weights, logl, dlogl, lognh or dlognh")
        return self._cached((name, str(dev)),
                            lambda: as_tensor(arrays[name]() if name in arrays else getattr(self, name), dev))

    def distances(self, cosmology=None, device=None) -> dict:
        """:func:`popsynth.cosmology.distance_tables` at the grid's z nodes, computed once per
        cosmology and device (shared tensors: do not modify)."""
        from .cosmology import CosmologyParams, distance_tables

        cosmology = CosmologyParams() if cosmology is None else cosmology
        dev = torch.device("cpu") if device is None else torch.device(device)
        return self._cached(("distances", repr(cosmology), str(dev)),
                            lambda: distance_tables(self.z, cosmology, device=dev))

    def describe(self) -> dict:
        """Plain-dict summary of the grid (for checkpoints and file headers)."""
        return {
            "z": self.z.tolist(),
            "logl_edges": self.logl_edges.tolist(),
            "lognh_edges": self.lognh_edges.tolist(),
        }

    @classmethod
    def from_description(cls, d: dict) -> "Grid":
        return cls(z=np.asarray(d["z"]), logl_edges=np.asarray(d["logl_edges"]), lognh_edges=np.asarray(d["lognh_edges"]))
