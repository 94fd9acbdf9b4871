"""Grids of the Green's function tables: energy bins, inclination bins, default nodes."""

from __future__ import annotations

import math

import numpy as np


FE_K_EDGE_KEV = 7.112  # xraydb / Elam et al. 2002 K edges, used as bin edges
NI_K_EDGE_KEV = 8.333


def input_energy_edges(
    e_min_keV: float = 1.0, e_max_keV: float = 1000.0, per_decade: int = 50,
    snap_keV: tuple[float, ...] = (FE_K_EDGE_KEV, NI_K_EDGE_KEV),
) -> np.ndarray:
    """Input energy bin edges (keV): log-spaced, ``per_decade`` bins per decade (50: 4.7 %
    bins), with the edge nearest each K-edge energy in ``snap_keV`` moved onto it so that no
    input bin straddles the Fe or Ni K edge. Returns float64 [n + 1]."""
    n = int(round(math.log10(e_max_keV / e_min_keV) * per_decade))
    edges = np.logspace(math.log10(e_min_keV), math.log10(e_max_keV), n + 1)
    for e in snap_keV:
        k = int(np.argmin(np.abs(np.log(edges[1:-1] / e)))) + 1
        edges[k] = e
    return edges


def output_energy_edges(
    e_min_keV: float = 1.0, e_max_keV: float = 1000.0, per_decade: int = 50,
    fine_keV: tuple[float, float] = (6.0, FE_K_EDGE_KEV), fine_width_keV: float = 0.04,
    snap_keV: tuple[float, ...] = (FE_K_EDGE_KEV, NI_K_EDGE_KEV),
) -> np.ndarray:
    """Output energy bin edges (keV): the input grid, with linear bins of ~``fine_width_keV``
    between ``fine_keV`` (default 6.0 keV to the Fe K edge) to resolve the Fe K alpha and
    K beta Compton shoulders (the lines themselves are stored as delta functions).
    Returns float64 [n + 1]."""
    base = input_energy_edges(e_min_keV, e_max_keV, per_decade, snap_keV)
    lo, hi = fine_keV
    n_fine = max(1, int(round((hi - lo) / fine_width_keV)))
    fine = np.linspace(lo, hi, n_fine + 1)
    keep = base[(base < lo * 0.98) | (base > hi * 1.001)]
    return np.unique(np.concatenate((keep, fine)))


def torus_cos_edges(theta_tor_deg: float, n_torus: int = 6, n_open: int = 4) -> np.ndarray:
    """Inclination bin edges in cos i for a torus of half-opening angle theta_tor (deg).

    ``n_torus`` equal bins in [0, cos theta_tor] (lines of sight through the torus) and
    ``n_open`` equal bins in [cos theta_tor, 1] (through the opening), so no bin straddles the
    edge of the torus. Returns float64 [n_torus + n_open + 1], increasing."""
    c = math.cos(math.radians(theta_tor_deg))
    return np.concatenate((np.linspace(0.0, c, n_torus + 1), np.linspace(c, 1.0, n_open + 1)[1:]))


def slab_cos_edges(n: int = 10) -> np.ndarray:
    """Equal bins in cos i over [0, 1] for the slab (float64 [n + 1])."""
    return np.linspace(0.0, 1.0, n + 1)


def default_torus_log_nh() -> np.ndarray:
    """Default log N_H nodes of the torus table: 20-22 in steps of 0.5, 22-26 in steps of 0.25."""
    return np.concatenate((np.arange(20.0, 22.0, 0.5), np.arange(22.0, 26.0001, 0.25)))


DEFAULT_THETA_TOR: tuple[float, ...] = (25.8, 45.0, 55.0, 58.0, 61.0, 84.3)
"""Default torus half-opening angle nodes (deg): 55, 58, 61 cover the A19 range (uniform in
55-61 deg); 25.8 and 84.3 are the limits of the BNTorus tables (covering factors 0.9 and 0.1),
45 fills the gap."""
