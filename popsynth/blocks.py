"""The 15 A19 blocks (section 5.1), defined once: names, N_H classes, log L ranges, masks, CT selector.

Block k = n_lum * c + j, with N_H class c (0 unabsorbed: log N_H 20-22, 1 Compton-thin: 22-24,
2 Compton-thick: 24-26) and luminosity range j over log L [41,42), [42,43), [43,44), [44,45),
[45,47] (erg/s). Every module asks :data:`BLOCKS` (a :class:`Blocks`) for the layout; the old
names in :mod:`popsynth.grid` (``N_BLOCKS``, ``block_names``, ``nh_class_of_blocks``,
``lum_range_of_blocks``, ``block_index_of``) and :func:`popsynth.cxb.class_of_block` are aliases
onto it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ._tensor import DTYPE

__all__ = ["Blocks", "BLOCKS"]


@dataclass(frozen=True)
class Blocks:
    """The block layout: N_H class edges and names, log L range edges, and what follows from them.

    Attributes: ``nh_edges`` (log10 cm^-2, 4 values), ``nh_names`` (3), ``logl_edges`` (log10 erg/s,
    6 values), ``ct_class`` (index of the Compton-thick class, 2).
    """

    nh_edges: tuple = (20.0, 22.0, 24.0, 26.0)
    nh_names: tuple = ("unabsorbed", "compton_thin", "compton_thick")
    logl_edges: tuple = (41.0, 42.0, 43.0, 44.0, 45.0, 47.0)
    ct_class: int = 2

    @property
    def n_classes(self) -> int:
        """Number of N_H classes (3)."""
        return len(self.nh_edges) - 1

    @property
    def n_lum(self) -> int:
        """Number of log L ranges (5)."""
        return len(self.logl_edges) - 1

    @property
    def n(self) -> int:
        """Number of blocks (15)."""
        return self.n_classes * self.n_lum

    def index_of(self, nh_class, lum_range):
        """Block index k of N_H class c and luminosity range j: k = n_lum * c + j (ints, arrays or tensors)."""
        return self.n_lum * nh_class + lum_range

    def nh_class(self) -> torch.Tensor:
        """N_H class (0 unabsorbed, 1 Compton-thin, 2 Compton-thick) of each block: long [15]."""
        return torch.arange(self.n) // self.n_lum

    def lum_range(self) -> torch.Tensor:
        """Luminosity range j (0: log L 41-42, ..., 4: 45-47) of each block: long [15]."""
        return torch.arange(self.n) % self.n_lum

    def is_ct(self) -> torch.Tensor:
        """The CT selector: True for the Compton-thick blocks (log N_H 24-26), bool [15]."""
        return self.nh_class() == self.ct_class

    def names(self) -> list[str]:
        """Names of the blocks in index order, e.g. ``'compton_thin:L43-44'``."""
        return [f"{cname}:L{self.logl_edges[j]:g}-{self.logl_edges[j + 1]:g}"
                for cname in self.nh_names for j in range(self.n_lum)]

    def classes_of_cells(self, lognh) -> np.ndarray:
        """N_H class of log N_H cell centres ``lognh`` [nN] (log10 cm^-2): int array [nN]."""
        c = np.searchsorted(np.asarray(self.nh_edges), np.asarray(lognh), side="right") - 1
        return np.clip(c, 0, self.n_classes - 1)

    def ranges_of_cells(self, logl) -> np.ndarray:
        """Luminosity range of log L cell centres ``logl`` [nL] (log10 erg/s): int array [nL]."""
        j = np.searchsorted(np.asarray(self.logl_edges), np.asarray(logl), side="right") - 1
        return np.clip(j, 0, self.n_lum - 1)

    def index_of_cells(self, logl, lognh) -> torch.Tensor:
        """Block of every (log L, log N_H) cell: long [nL, nN]."""
        c, j = self.classes_of_cells(lognh), self.ranges_of_cells(logl)
        return torch.as_tensor(self.index_of(c[None, :], j[:, None]), dtype=torch.long)

    def masks(self, block_index: torch.Tensor, device=None) -> torch.Tensor:
        """One-hot block membership from a cell map ``block_index`` [nL, nN]: float64 [15, nL, nN]."""
        bi = block_index.to(device)
        return (bi[None] == torch.arange(self.n, device=device)[:, None, None]).to(DTYPE)


#: The A19 layout used everywhere.
BLOCKS = Blocks()
