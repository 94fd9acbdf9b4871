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

Blocks: k = 5 * c + j, with N_H class c = 0 unabsorbed (20-22), 1 Compton-thin (22-24),
2 Compton-thick (24-26) and luminosity range j over [41,42), [42,43), [43,44), [44,45), [45,47].
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from ._tensor import DTYPE
from .errors import PopsynthError

NH_CLASS_EDGES = (20.0, 22.0, 24.0, 26.0)
NH_CLASS_NAMES = ("unabsorbed", "compton_thin", "compton_thick")
LOGL_BLOCK_EDGES = (41.0, 42.0, 43.0, 44.0, 45.0, 47.0)
N_BLOCKS = (len(NH_CLASS_EDGES) - 1) * (len(LOGL_BLOCK_EDGES) - 1)


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
    """Block index k of N_H class c and luminosity range j: k = n_lum * c + j (the one place the layout is set).

    Works on ints and on integer arrays/tensors alike."""
    return (len(LOGL_BLOCK_EDGES) - 1) * nh_class + lum_range


def lum_range_of_blocks():
    """Luminosity range j (0: log L 41-42, ..., 4: 45-47) of each block: long tensor [15]."""
    return torch.arange(N_BLOCKS) % (len(LOGL_BLOCK_EDGES) - 1)


def nh_class_of_blocks():
    """N_H class (0 unabsorbed, 1 Compton-thin, 2 Compton-thick) of each block: long tensor [15]."""
    return torch.arange(N_BLOCKS) // (len(LOGL_BLOCK_EDGES) - 1)


def block_names() -> list[str]:
    """Names of the 15 blocks in index order, e.g. ``'compton_thin:L43-44'``."""
    names = []
    for c, cname in enumerate(NH_CLASS_NAMES):
        for j in range(len(LOGL_BLOCK_EDGES) - 1):
            lo, hi = LOGL_BLOCK_EDGES[j], LOGL_BLOCK_EDGES[j + 1]
            names.append(f"{cname}:L{lo:g}-{hi:g}")
    return names


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
        c = np.searchsorted(np.asarray(NH_CLASS_EDGES), self.lognh, side="right") - 1
        j = np.searchsorted(np.asarray(LOGL_BLOCK_EDGES), self.logl, side="right") - 1
        c = np.clip(c, 0, len(NH_CLASS_EDGES) - 2)
        j = np.clip(j, 0, len(LOGL_BLOCK_EDGES) - 2)
        self.nh_class = torch.as_tensor(c, dtype=torch.long)
        self.block_index = torch.as_tensor(block_index_of(c[None, :], j[:, None]), dtype=torch.long)

    @property
    def shape(self) -> tuple[int, int, int]:
        """(nz, nL, nN)."""
        return (self.z.size, self.logl.size, self.lognh.size)

    def block_masks(self, device=None) -> torch.Tensor:
        """One-hot block membership, float64 [N_BLOCKS, nL, nN]."""
        bi = self.block_index.to(device)
        return (bi[None] == torch.arange(N_BLOCKS, device=device)[:, None, None]).to(DTYPE)

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
