"""Survey observables as tensor contractions: N(>S), dN/dS, CT fractions, dN/dz.

Band flux of a source. A source at redshift z with intrinsic 2-10 keV luminosity L (erg/s)
and rest-frame photon spectrum L S_d(E) (photons s^-1 keV^-1; S_d per erg/s, spectral draw d,
table cell n of log N_H) has the observed-frame energy flux in the band [E1, E2] (keV)

    S = L K[d, z, n],   K = KEV_ERG / (4 pi d_L^2) * integral_{E1 (1+z)}^{E2 (1+z)} E S_d(E) dE

(erg cm^-2 s^-1 per erg/s, i.e. cm^-2; the (1+z)^2 of the flux density cancels against
E_obs dE_obs = E dE / (1+z)^2). The integral is taken of the piecewise-linear interpolant of
E^2 S_d(E) in ln E on the spectral table's energy grid (cumulative trapezoid, with the
partial segment at each band edge integrated exactly): :func:`band_flux_factor`.

Cumulative counts. With phi(z, l, n) the cube of cell averages (Mpc^-3 dex^-2) and phi taken
constant in log L inside each cell (the cell average), the number of sources per deg^2 with
S > S_0, averaged with equal weight over the D spectral draws, is

    N(>S_0) = (pi/180)^2 sum_z w_z dV_c/(dz dOmega)(z) sum_n dlogN_H(n)
              (1/D) sum_d C_{z,n}(log S_0 - log K[d, z, n])

where C_{z,n}(t) = integral_t^{logL_max} phi(z, l, n) dl. For piecewise-constant phi, C is the
linear interpolant of the reverse cumulative sum of phi dlogL over the cell edges: exact, with
no step noise as S_0 moves across cells (it is the clamp((logL_hi - t)/dlogL, 0, 1) cell
fraction summed over cells). w_z are the exact weights of the piecewise-linear interpolant in z
restricted to the survey's redshift range (the trapezoid weights of the grid when there is
none): :func:`z_range_weights`.

Differential counts. dN/dS = -dN(>S)/dS = (pi/180)^2 sum w_z dV/dz sum dlogN_H (1/D) sum_d
phi(z, l*(t), n) / (S ln 10), the analytic derivative (l* the cell holding t = log S - log K):
:meth:`SurveyModel.differential`. For binned data (the BAT table is a bin average, see its
header) :meth:`SurveyModel.binned_differential` gives (N(>S_lo) - N(>S_hi)) / (S_hi - S_lo).

Samples (CT fractions, redshift distributions). A survey with a single flux limit selects
S > S_lim; one with an area curve selects with probability a(S) = area(S) / max area. With
G(u) = integral_{-inf}^u a(10^u') du' (analytic for the log-log interpolated curve; for a
single limit G(u) = max(u - log S_lim, 0)) the selected share of cell (l, n) at (z, d) is
[G(logL_hi + log K) - G(logL_lo + log K)] / dlogL, averaged over draws into sel[z, l, n].
Then dN/dz(z) = (pi/180)^2 dV/dz sum_{l,n} phi sel dlogL dlogN_H (per deg^2 of the largest
area), the sample density is sum_z w_z dN/dz, and the CT fraction is the same sum with the
cells weighted by their share above the N_H threshold (a threshold inside a cell, e.g.
1.5e24 = 10^24.176, takes the part of the cell above it; the cell's spectrum is the cell
average) divided by the total. As S_lim -> 0 it tends to the intrinsic CT fraction of the
same z range and log L range (sel = 1).

Block weights. Everything above is linear in phi; with phi = phi0 * w[b, block(l, n)] each
observable is w @ R with a block response R [15, ...] computed once
(:func:`build_survey_model`), as for the CXB in :mod:`popsynth.cxb`. The cube methods
(``*_cube``) take full cubes phi [B, nz, nL, nN] for any other weighting.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields

import numpy as np
import torch

from ._tensor import DTYPE, as_tensor, bracket, node_below
from .cosmology import CosmologyParams, distance_tables
from .errors import PopsynthError
from .grid import N_BLOCKS, Grid
from .response import (block_counts_response, counts_response, dndz_response, interp_edges, reverse_cumulative,
                       selected_counts)
from .spectra.table import SpectralTable
from .spectra.primary import KEV_ERG
from .survey import Survey, _check_band, counts_flux_bins, survey_for_counts, survey_for_ct

__all__ = [
    "SR_PER_DEG2",
    "z_range_weights",
    "band_flux_factor",
    "SurveyModel",
    "build_survey_model",
    "refine_z",
    "build_counts_model",
    "build_ct_model",
    "counts_chi2",
    "ct_fraction_chi2",
]

#: Steradian per square degree, (pi/180)^2.
SR_PER_DEG2 = (math.pi / 180.0) ** 2
_LN10 = math.log(10.0)


# ---------------------------------------------------------------------------- helpers
def z_range_weights(z, z_range=None) -> np.ndarray:
    """Quadrature weights [nz] for integrals over z in ``z_range`` on the nodes ``z`` [nz].

    sum(w * f(z_nodes)) is the exact integral over [z_lo, z_hi] of the piecewise-linear
    interpolant of f through the nodes; the range is clipped to [z[0], z[-1]] (the grid leaves
    out z < z[0]). With ``z_range=None`` these are the trapezoid weights over the whole grid.
    Raises PopsynthError when the range does not overlap the grid.
    """
    z = np.asarray(z, dtype=np.float64)
    lo, hi = (z[0], z[-1]) if z_range is None else (max(float(z_range[0]), z[0]), min(float(z_range[1]), z[-1]))
    if not hi > lo:
        raise PopsynthError(f"redshift range {z_range} does not overlap the grid's {z[0]:g}-{z[-1]:g}",
                            "choose a range inside the grid")
    w = np.zeros_like(z)
    h = np.diff(z)
    a = np.clip((lo - z[:-1]) / h, 0.0, 1.0)  # covered part of each segment, in its unit coordinate
    b = np.clip((hi - z[:-1]) / h, 0.0, 1.0)
    w[:-1] += h * ((b - a) - 0.5 * (b ** 2 - a ** 2))  # integral of (1 - s) ds
    w[1:] += h * 0.5 * (b ** 2 - a ** 2)  # integral of s ds
    return w


def _check_table(table: SpectralTable, grid: Grid) -> None:
    if not isinstance(table, SpectralTable):
        raise PopsynthError(f"expected a SpectralTable, got {type(table).__name__}",
                            "build one with popsynth.spectra.cache.build_spectral_table")
    if table.lognh.numel() != grid.lognh.size or not np.allclose(table.lognh.cpu().numpy(), grid.lognh):
        raise PopsynthError("the spectral table's log N_H cells differ from the grid's",
                            "build the table with the grid's lognh_edges")
    if table.per_draw.ndim != 3 or table.per_draw.shape[1:] != (grid.lognh.size, table.energy.numel()):
        raise PopsynthError(f"the spectral table's per_draw has shape {tuple(table.per_draw.shape)}, "
                            f"expected [D, {grid.lognh.size}, {table.energy.numel()}]",
                            "rebuild the spectral table")


def band_flux_factor(table: SpectralTable, grid: Grid, band_keV, cosmology: CosmologyParams = CosmologyParams(),
                     z_used=None, device=None, z=None) -> torch.Tensor:
    """Observed band energy flux per unit intrinsic L(2-10 keV): K[d, z, n] in cm^-2.

    K = KEV_ERG / (4 pi d_L(z)^2) * integral_{E1(1+z)}^{E2(1+z)} E S_d(E) dE, with S_d the
    table's per-draw spectrum of log N_H cell n (photons s^-1 keV^-1 per erg/s), so that a
    source of luminosity L has band flux S = L K in erg cm^-2 s^-1.

    Args:
      table: spectral table on the grid's log N_H cells; ``per_draw`` [D, nN, nE] is used.
      grid: the XLF grid (its z nodes).
      band_keV: observed-frame band (E1, E2) in keV.
      z_used: optional bool array [nz]: nodes whose K is needed. The band times (1+z) must lie
        in the table's energy range at these nodes (default: all nodes); other nodes get K
        from clamped energies and must not be used.
      z: optional redshifts [nz] to use instead of the grid's nodes (e.g. :func:`refine_z`'s).
    Returns float64 [D, nz, nN] on ``device`` (default: the table's device).
    Raises PopsynthError if the band edges times (1+z) leave the table's energy range.
    """
    e1, e2 = _check_band(band_keV)
    _check_table(table, grid)
    dev = table.energy.device if device is None else torch.device(device)
    energy = table.energy.to(dev, DTYPE)
    z = np.asarray(grid.z if z is None else z, dtype=np.float64)
    used = np.ones(z.size, bool) if z_used is None else np.asarray(z_used, bool)
    if used.any():
        need_lo, need_hi = e1 * (1 + z[used].min()), e2 * (1 + z[used].max())
        t_lo, t_hi = float(energy[0]), float(energy[-1])
        if need_lo < t_lo * (1 - 1e-9) or need_hi > t_hi * (1 + 1e-9):
            raise PopsynthError(
                f"band {e1:g}-{e2:g} keV at z = {z[used].min():g}-{z[used].max():g} needs rest-frame spectra over "
                f"{need_lo:g}-{need_hi:g} keV, beyond the spectral table's {t_lo:g}-{t_hi:g} keV",
                "choose a band inside the table range, restrict the survey's redshift range, "
                "or build the spectral table on a wider energy grid")
    x = torch.log(energy)  # [nE]
    h = x[1:] - x[:-1]
    f = energy ** 2 * table.per_draw.to(dev, DTYPE)  # E^2 S = E S dE/dlnE, [D, nN, nE]
    cum = torch.cat([torch.zeros_like(f[..., :1]), torch.cumsum(0.5 * h * (f[..., 1:] + f[..., :-1]), -1)], -1)

    def primitive(xq):  # integral from x[0] to xq of the linear interpolant, [D, nN, len(xq)]
        i0, idx, s, width = bracket(x, xq.clamp(x[0], x[-1]))  # width = h[i0]
        f0, f1 = f[..., i0], f[..., idx]
        return cum[..., i0] + width * (s * f0 + 0.5 * s ** 2 * (f1 - f0))

    zt = as_tensor(z, dev)
    band = primitive(math.log(e2) + torch.log1p(zt)) - primitive(math.log(e1) + torch.log1p(zt))  # [D, nN, nz]
    d_l = distance_tables(z, cosmology, device=dev)["d_l_cm"]
    k = band * KEV_ERG / (4 * math.pi * d_l ** 2)
    return k.permute(0, 2, 1).contiguous()


Z_MAX_REL_STEP = 0.1
"""Default of :func:`build_survey_model`: survey integrals over z use sub-nodes with
(z_{i+1} - z_i) / z_i <= 0.1 (see :func:`refine_z`)."""


def refine_z(z, max_rel_step: float | None = Z_MAX_REL_STEP) -> tuple[np.ndarray, np.ndarray]:
    """Sub-nodes for the z integrals of flux-selected observables, and the interpolation matrix.

    A flux-limited count changes with the luminosity distance: between the grid's low-z nodes
    (0.002, 0.007, ... in steps of 0.005) d_L^2 changes by up to a factor 12, so a trapezoid over
    the nodes misses the bright counts by several per cent. Each interval [z_i, z_i+1] is split
    into ceil((z_i+1 - z_i) / (max_rel_step z_i)) equal steps (none when ``max_rel_step`` is None);
    the XLF between the grid's nodes is the linear interpolant the engine assumes everywhere, and
    distances and band fluxes are evaluated exactly at every sub-node.

    Returns (z_fine [nf] including every grid node, P [nf, nz] with phi(z_fine) = P @ phi(z)).
    """
    z = np.asarray(z, dtype=np.float64)
    if max_rel_step is None:
        return z.copy(), np.eye(z.size)
    if not (isinstance(max_rel_step, (int, float)) and math.isfinite(max_rel_step) and max_rel_step > 0):
        raise PopsynthError(f"z_max_rel_step must be a finite number > 0 or None, got {max_rel_step!r}",
                            f"pass e.g. {Z_MAX_REL_STEP}")
    rows, zf = [], []
    for i in range(z.size - 1):
        n = max(1, int(math.ceil((z[i + 1] - z[i]) / (max_rel_step * z[i]) - 1e-12)))
        for k in range(n):
            s = k / n
            zf.append(z[i] + s * (z[i + 1] - z[i]))
            r = np.zeros(z.size)
            r[i], r[i + 1] = 1 - s, s
            rows.append(r)
    zf.append(z[-1])
    r = np.zeros(z.size)
    r[-1] = 1.0
    rows.append(r)
    return np.asarray(zf), np.stack(rows)


def _check_fluxes(fluxes, what="fluxes") -> np.ndarray:
    try:
        s = np.asarray(fluxes.detach().cpu() if isinstance(fluxes, torch.Tensor) else fluxes, dtype=np.float64)
    except (TypeError, ValueError):
        raise PopsynthError(f"{what} must be numbers (erg cm^-2 s^-1)", "pass a 1-D list of fluxes") from None
    s = np.atleast_1d(s)
    if s.ndim != 1 or s.size == 0:
        raise PopsynthError(f"{what} must be a non-empty 1-D list", "pass a 1-D list of fluxes in erg cm^-2 s^-1")
    if not np.all(np.isfinite(s)) or np.any(s <= 0):
        raise PopsynthError(f"{what} must be finite and > 0 erg cm^-2 s^-1", "check the flux values")
    return s


# the N(>S) interpolation helpers live in the response layer (names kept for their importers)
_reverse_cumulative = reverse_cumulative
_interp_edges = interp_edges


def _selection_antiderivative(survey: Survey, u: torch.Tensor) -> torch.Tensor:
    """G(u) = integral_{-inf}^u a(10^u') du' for the survey's selection a (dex), same shape as u."""
    if not survey.has_area_curve:
        return torch.relu(u - math.log10(survey.flux_limit))
    dev = u.device
    uf = as_tensor(np.log10(survey.area_flux), dev)
    a = as_tensor(survey.area_deg2 / survey.max_area, dev)
    du = uf[1:] - uf[:-1]
    slope = torch.log10(a[1:] / a[:-1]) / du  # log10 a per dex of S, per segment
    q_seg = slope * _LN10 * du
    seg = a[:-1] * du * torch.where(q_seg.abs() > 1e-10, torch.expm1(q_seg) / torch.where(q_seg == 0, 1.0, q_seg),
                                    1 + 0.5 * q_seg)
    g_nodes = torch.cat([torch.zeros(1, dtype=DTYPE, device=dev), torch.cumsum(seg, 0)])
    slope_ext = torch.cat([slope, torch.zeros(1, dtype=DTYPE, device=dev)])  # constant above the last point
    i = node_below(uf, u)  # -1 below the first node; the last segment extends above the last node
    ic = i.clamp(0, uf.numel() - 1)
    d = u - uf[ic]
    q = slope_ext[ic] * _LN10 * d
    big = q.abs() > 1e-10
    phi1 = torch.where(big, torch.expm1(q) / torch.where(big, q, torch.ones_like(q)), 1 + 0.5 * q)
    g = g_nodes[ic] + a[ic] * d * phi1
    return torch.where(i >= 0, g, torch.zeros_like(g))


def _as_weights(w: torch.Tensor, device) -> torch.Tensor:
    if not isinstance(w, torch.Tensor):
        w = torch.as_tensor(np.asarray(w, dtype=np.float64))
    if w.ndim == 0 or w.shape[-1] != N_BLOCKS:
        raise PopsynthError(f"block weights must have {N_BLOCKS} entries per start, got shape {tuple(w.shape)}",
                            "pass a [n_starts, 15] tensor")
    if w.device != device:
        raise PopsynthError(f"block weights are on {w.device} but the survey model is on {device}",
                            "move one of them, e.g. model.to(weights.device)")
    return w.to(DTYPE)


def _check_cube(phi: torch.Tensor, grid_shape, device) -> torch.Tensor:
    if not isinstance(phi, torch.Tensor) or phi.ndim not in (3, 4) or tuple(phi.shape[-3:]) != tuple(grid_shape):
        shape = tuple(phi.shape) if isinstance(phi, torch.Tensor) else type(phi).__name__
        raise PopsynthError(f"cube must be a tensor [B, nz, nL, nN] = [B, {', '.join(map(str, grid_shape))}], got {shape}",
                            "pass phi on the model's grid")
    if phi.device != device:
        raise PopsynthError(f"cube is on {phi.device} but the survey model is on {device}",
                            "move one of them, e.g. model.to(phi.device)")
    phi = phi.to(DTYPE)
    return phi[None] if phi.ndim == 3 else phi


# ---------------------------------------------------------------------------- the model
@dataclass(eq=False)
class SurveyModel:
    """Block responses of one survey's observables (built once by :func:`build_survey_model`).

    Tensor attributes (float64, on one device; ``w`` below is [B, 15] block weights):
      fluxes [nS]: fluxes (erg cm^-2 s^-1, survey band) of the point-wise counts;
      cum_response [15, nS]: N(>S) per unit weight (deg^-2) -> :meth:`cumulative`;
      diff_response [15, nS]: dN/dS per unit weight (deg^-2 (erg cm^-2 s^-1)^-1) -> :meth:`differential`;
      bin_lo, bin_hi [nb], bin_response [15, nb]: bin-averaged dN/dS -> :meth:`binned_differential`;
      z [nz], z_weights [nz]: the z nodes of the survey's integrals (the grid's nodes refined at low z,
        :func:`refine_z`) and their quadrature weights over the survey's z range;
      z_interp [nz, nz_grid]: linear interpolation from the grid's z nodes to ``z`` (phi(z) = z_interp @ phi);
      dndz_response [15, nz]: dN/dz of the selected sample per unit weight (deg^-2 per unit z);
      sample_response, ct_response [15]: selected sources per deg^2, all and above the N_H threshold;
      intrinsic_response, intrinsic_ct_response [15]: the same with no flux selection;
      log_k [D, nz, nN]: log10 of the band flux factor K (cm^-2); selection [nz, nL, nN]: draw-
        averaged selected share of every cell; nh_share [nN]: share of each N_H cell above the
        threshold; vol [nz]: w_z dV/dz/dOmega (Mpc^3 deg^-2); dvol [nz]: dV/dz/dOmega (Mpc^3 deg^-2 per unit z);
      logl_edges [nL+1], dlogl [nL], dlognh [nN]: the grid cells.
    Plain attributes: survey, nh_threshold (cm^-2), target (what :meth:`predict` returns), data.
    """

    survey: Survey
    nh_threshold: float
    fluxes: torch.Tensor
    cum_response: torch.Tensor
    diff_response: torch.Tensor
    bin_lo: torch.Tensor
    bin_hi: torch.Tensor
    bin_response: torch.Tensor
    z: torch.Tensor
    z_weights: torch.Tensor
    dndz_response: torch.Tensor
    sample_response: torch.Tensor
    ct_response: torch.Tensor
    intrinsic_response: torch.Tensor
    intrinsic_ct_response: torch.Tensor
    log_k: torch.Tensor
    selection: torch.Tensor
    nh_share: torch.Tensor
    vol: torch.Tensor
    dvol: torch.Tensor
    logl_edges: torch.Tensor
    dlogl: torch.Tensor
    dlognh: torch.Tensor
    z_interp: torch.Tensor = None
    target: str = "cumulative"
    data: object = field(default=None, repr=False)

    def __getattr__(self, name):
        # counts models (build_counts_model) compute the sample fields on first access
        pending = self.__dict__.get("_pending_samples")
        if name in _SAMPLE_FIELDS and pending is not None:
            for k, v in _sample_responses(*pending).items():
                setattr(self, k, v)
            del self.__dict__["_pending_samples"]
            return getattr(self, name)
        raise AttributeError(f"'{type(self).__name__}' object has no attribute '{name}'")

    @property
    def device(self) -> torch.device:
        return self.z.device

    def to(self, device) -> "SurveyModel":
        """A copy with every tensor on ``device``."""
        kw = {f.name: (getattr(self, f.name).to(device) if isinstance(getattr(self, f.name), torch.Tensor)
                       else getattr(self, f.name)) for f in fields(self)}
        return SurveyModel(**kw)

    # ---------------------------------------------------------------- block-weight predictions
    def cumulative(self, w: torch.Tensor) -> torch.Tensor:
        """N(>S) at ``fluxes`` in deg^-2: w [B, 15] -> [B, nS]."""
        return _as_weights(w, self.device) @ self.cum_response

    def differential(self, w: torch.Tensor) -> torch.Tensor:
        """dN/dS at ``fluxes`` in deg^-2 (erg cm^-2 s^-1)^-1 (analytic derivative): w [B, 15] -> [B, nS]."""
        return _as_weights(w, self.device) @ self.diff_response

    def binned_differential(self, w: torch.Tensor) -> torch.Tensor:
        """(N(>S_lo) - N(>S_hi)) / (S_hi - S_lo) over the bins, deg^-2 (erg cm^-2 s^-1)^-1: [B, nb]."""
        return _as_weights(w, self.device) @ self.bin_response

    def sample_density(self, w: torch.Tensor) -> torch.Tensor:
        """Selected sources per deg^2 (of the largest area) in the z range: [B]. Equals N(>S_lim) for a single limit."""
        return _as_weights(w, self.device) @ self.sample_response

    def _require_sample(self) -> None:
        if not bool((self.sample_response > 0).any()):
            raise PopsynthError(f"no source of the grid passes the selection of survey '{self.survey.name}' "
                                "(a fraction or normalised distribution of an empty sample is undefined)",
                                "check the survey's flux limit, band and redshift range")

    def ct_fraction(self, w: torch.Tensor) -> torch.Tensor:
        """Observed CT fraction of the selected sample (N_H above ``nh_threshold``): [B], dimensionless."""
        self._require_sample()
        w = _as_weights(w, self.device)
        return (w @ self.ct_response) / (w @ self.sample_response)

    def intrinsic_ct_fraction(self, w: torch.Tensor) -> torch.Tensor:
        """CT fraction of all sources of the grid's log L range in the z range (no flux selection): [B]."""
        w = _as_weights(w, self.device)
        return (w @ self.intrinsic_ct_response) / (w @ self.intrinsic_response)

    def dndz(self, w: torch.Tensor) -> torch.Tensor:
        """dN/dz of the selected sample at the z nodes, deg^-2 per unit z: [B, nz] (0 at nodes outside the z range).

        ``(dndz * z_weights).sum(-1)`` is :meth:`sample_density`.
        """
        return _as_weights(w, self.device) @ self.dndz_response

    def dndz_normalised(self, w: torch.Tensor) -> torch.Tensor:
        """dN/dz / N: the redshift distribution of the sample, per unit z, [B, nz]; integrates to 1 with ``z_weights``."""
        self._require_sample()
        d = self.dndz(w)
        return d / (d @ self.z_weights)[..., None]

    def predict(self, w: torch.Tensor) -> torch.Tensor:
        """The prediction named by ``target``: cumulative, differential, binned or ct_fraction."""
        return {"cumulative": self.cumulative, "differential": self.differential,
                "binned": self.binned_differential, "ct_fraction": self.ct_fraction}[self.target](w)

    def chi2(self, w: torch.Tensor) -> torch.Tensor:
        """chi^2 of :meth:`predict` against the ``data`` the model was built for: [B]."""
        if self.data is None:
            raise PopsynthError("this survey model was built without data", "use build_counts_model or build_ct_model")
        if self.target == "ct_fraction":
            return ct_fraction_chi2(self.predict(w), self.data)
        return counts_chi2(self.predict(w), self.data)

    # ---------------------------------------------------------------- full-cube predictions
    def on_model_z(self, phi: torch.Tensor) -> torch.Tensor:
        """Cubes on the grid's z nodes [B, nz_grid, nL, nN] (or one cube [nz_grid, nL, nN])
        interpolated to the model's z nodes ``z``: [B, nz, nL, nN] (or [nz, nL, nN])."""
        nzg = self.z_interp.shape[1]
        single = isinstance(phi, torch.Tensor) and phi.ndim == 3
        phi = _check_cube(phi, (nzg, self.dlogl.numel(), self.dlognh.numel()), self.device)
        out = torch.einsum("fz,bzln->bfln", self.z_interp, phi)
        return out[0] if single else out

    def cumulative_cube(self, phi: torch.Tensor) -> torch.Tensor:
        """N(>S) at ``fluxes`` (deg^-2) for cubes phi [B, nz_grid, nL, nN] (Mpc^-3 dex^-2, on the grid's
        z nodes) -> [B, nS].

        Memory: B * nz * nN * nS doubles per draw.
        """
        return _cumulative_from_cube(self.on_model_z(phi), self, differential=False)[0]

    def differential_cube(self, phi: torch.Tensor) -> torch.Tensor:
        """dN/dS at ``fluxes`` for cubes phi [B, nz_grid, nL, nN] -> [B, nS]."""
        return _cumulative_from_cube(self.on_model_z(phi), self)[1]

    def dndz_cube(self, phi: torch.Tensor) -> torch.Tensor:
        """dN/dz of the selected sample for cubes phi [B, nz_grid, nL, nN] -> [B, nz] at the model's z
        nodes (deg^-2 per unit z)."""
        mask = (self.z_weights > 0).to(DTYPE)
        return dndz_response(self.on_model_z(phi), self.selection, self.dlogl, self.dlognh, self.dvol, mask)

    def ct_fraction_cube(self, phi: torch.Tensor) -> torch.Tensor:
        """Observed CT fraction for cubes phi [B, nz_grid, nL, nN] -> [B]."""
        self._require_sample()
        phi = self.on_model_z(phi)
        args = (self.selection, self.dlogl, self.dlognh, self.vol)
        return selected_counts(phi, *args, share=self.nh_share) / selected_counts(phi, *args)


def _cumulative_from_cube(phi: torch.Tensor, m: SurveyModel, differential: bool = True):
    """(N(>S), dN/dS) at m.fluxes for phi [B, nz, nL, nN]: each [B, nS] (:func:`popsynth.response.counts_response`;
    dN/dS None unless ``differential``)."""
    cum, dif = counts_response(phi, m.log_k, m.fluxes, m.vol, m.dlogl, m.dlognh, m.logl_edges,
                               differential=differential)
    return cum[:, 0, 0], dif[:, 0, 0] if differential else None


def _selection_share(survey: Survey, log_k: torch.Tensor, edges: torch.Tensor, dl: torch.Tensor,
                     z_used: torch.Tensor) -> torch.Tensor:
    """Draw-averaged selected share of each (z, log L, N_H) cell: [nz, nL, nN] in [0, 1]."""
    dk, nz, nn = log_k.shape
    sel = torch.zeros(nz, dl.numel(), nn, dtype=DTYPE, device=log_k.device)
    for d in range(dk):
        g = _selection_antiderivative(survey, edges[None, :, None] + log_k[d][:, None, :])  # [nz, nL+1, nN]
        sel += (g[:, 1:] - g[:, :-1]) / dl[None, :, None]
    return sel / dk * z_used[:, None, None]


def build_survey_model(survey: Survey, grid: Grid, phi0: torch.Tensor, table: SpectralTable, fluxes=None,
                       flux_bins=None, nh_threshold: float = 1e24,
                       cosmology: CosmologyParams = CosmologyParams(), device=None,
                       z_max_rel_step: float | None = Z_MAX_REL_STEP, _lazy_samples: bool = False) -> SurveyModel:
    """Precompute a survey's block responses (see the module docstring).

    Args:
      survey: the selection (band, flux limit or area curve, z range).
      grid: the XLF grid; phi0: starting cube [nz, nL, nN] in Mpc^-3 dex^-2 (cell averages,
        :func:`popsynth.xlf.build_phi0` with l_moment=0).
      table: spectral table on the grid's log N_H cells (its ``per_draw`` spectra are used,
        every draw with equal weight).
      fluxes: fluxes [nS] (erg cm^-2 s^-1, the survey's band) for N(>S) and dN/dS; default the
        survey's faintest flux (its limit).
      flux_bins: optional (lo [nb], hi [nb]) bin edges for bin-averaged dN/dS.
      nh_threshold: CT threshold in cm^-2 (1e24 default; any value, e.g. 1.5e24).
      device: where the tensors live (default: phi0's device).
      z_max_rel_step: the z integrals run over the grid's nodes refined to steps
        dz / z <= this (:func:`refine_z`; None: the grid's nodes only).
    Returns a :class:`SurveyModel`. Set-up cost on 2 CPU cores with the default grid and D = 64
    draws (measured): about 0.3 s for a sample (CT fraction, dN/dz) and 0.5-2 s for 8-24 fluxes.
    """
    if not isinstance(survey, Survey):
        raise PopsynthError(f"expected a Survey, got {type(survey).__name__}", "build one with popsynth.survey.Survey")
    dev = phi0.device if device is None else torch.device(device)
    if not isinstance(phi0, torch.Tensor) or tuple(phi0.shape) != grid.shape:
        raise PopsynthError(f"phi0 must be a tensor of the grid's shape {grid.shape}",
                            "build it with popsynth.xlf.build_phi0(grid)")
    phi0 = phi0.to(dev, DTYPE)
    if not bool(torch.isfinite(phi0).all()) or bool((phi0 < 0).any()):
        raise PopsynthError("phi0 has non-finite or negative values", "check the XLF cube")
    try:
        thr = float(nh_threshold)
    except (TypeError, ValueError):
        raise PopsynthError(f"nh_threshold must be a number in cm^-2, got {nh_threshold!r}", "e.g. 1e24") from None
    if not (math.isfinite(thr) and thr > 0):
        raise PopsynthError(f"nh_threshold must be finite and > 0 cm^-2, got {nh_threshold!r}", "e.g. 1e24")
    s = _check_fluxes([survey.min_flux] if fluxes is None else fluxes)
    if flux_bins is None:
        lo = hi = np.zeros(0)
    else:
        try:
            lo, hi = (np.atleast_1d(np.asarray(x, dtype=np.float64)) for x in flux_bins)
        except (TypeError, ValueError):
            raise PopsynthError("flux_bins must be a pair (lo, hi) of flux arrays", "pass (lo [nb], hi [nb])") from None
        _check_fluxes(lo, "flux_bins lo")
        _check_fluxes(hi, "flux_bins hi")
        if lo.shape != hi.shape or np.any(hi <= lo):
            raise PopsynthError("flux_bins need lo < hi bin by bin, arrays of equal length", "check the bin edges")

    z_nodes, interp = refine_z(grid.z, z_max_rel_step)
    z_interp = as_tensor(interp, dev)
    phi0_grid = phi0
    phi0 = torch.einsum("fz,zln->fln", z_interp, phi0)  # the XLF at the model's z nodes
    wz_np = z_range_weights(z_nodes, survey.z_range)
    used = wz_np > 0
    log_k = torch.log10(band_flux_factor(table, grid, survey.band_keV, cosmology, z_used=used, device=dev, z=z_nodes)
                        .clamp_min(1e-300))
    dist = distance_tables(z_nodes, cosmology, device=dev)
    dvol = dist["dvc_dz_dsr_mpc3"] * SR_PER_DEG2
    wz = as_tensor(wz_np, dev)
    vol = wz * dvol
    edges, dl, dn = as_tensor(grid.logl_edges, dev), as_tensor(grid.dlogl, dev), as_tensor(grid.dlognh, dev)

    all_s = np.concatenate([s, lo, hi])
    cum, dif = block_counts_response(phi0, log_k, as_tensor(all_s, dev), vol, dl, dn, edges, grid.lognh)
    ns, nb = s.size, lo.size
    bin_resp = (cum[:, ns:ns + nb] - cum[:, ns + nb:]) / as_tensor(hi - lo, dev)

    ln_edges = as_tensor(grid.lognh_edges, dev)
    share = ((ln_edges[1:] - math.log10(thr)) / dn).clamp(0.0, 1.0)  # [nN]
    z_used = as_tensor(used.astype(np.float64), dev)
    args = (survey, grid, phi0_grid, z_interp, log_k, edges, dl, dn, dvol, z_used, wz, vol, share)
    lazy = {} if _lazy_samples else _sample_responses(*args)
    m = SurveyModel(
        survey=survey, nh_threshold=thr, fluxes=as_tensor(s, dev), cum_response=cum[:, :ns], diff_response=dif[:, :ns],
        bin_lo=as_tensor(lo, dev), bin_hi=as_tensor(hi, dev), bin_response=bin_resp, z=as_tensor(z_nodes, dev),
        z_weights=wz, log_k=log_k, nh_share=share, vol=vol, dvol=dvol,
        logl_edges=edges, dlogl=dl, dlognh=dn, z_interp=z_interp, **{k: lazy.get(k) for k in _SAMPLE_FIELDS})
    if _lazy_samples:  # computed on first access (SurveyModel.__getattr__)
        for k in _SAMPLE_FIELDS:
            object.__delattr__(m, k)
        m._pending_samples = args
    return m


_SAMPLE_FIELDS = ("selection", "dndz_response", "sample_response", "ct_response", "intrinsic_response",
                  "intrinsic_ct_response")
"""SurveyModel fields of the selected sample (CT fractions, dN/dz), which counts models compute on first use."""


def model_state(m: SurveyModel) -> dict:
    """A :class:`SurveyModel` as plain data for a cache file ({name: CPU tensor}, nh_threshold, target,
    lazy): loadable with ``torch.load(weights_only=True)``. The survey and the data row are not in
    it; :func:`model_from_state` takes them from the caller. Sample fields not yet computed stay out."""
    lazy = "_pending_samples" in m.__dict__
    tensors = {f.name: m.__dict__[f.name].detach().cpu() for f in fields(m)
               if isinstance(m.__dict__.get(f.name), torch.Tensor)}
    return {"tensors": tensors, "nh_threshold": float(m.nh_threshold), "target": str(m.target), "lazy": lazy}


def model_from_state(state: dict, survey: Survey, data, grid: Grid, phi0: torch.Tensor, device=None) -> SurveyModel:
    """The :class:`SurveyModel` of :func:`model_state` for ``survey`` and ``data`` (the ones it was
    built for), with its tensors on ``device`` (default phi0's). A lazy counts model gets back the
    arguments of its sample fields (grid and phi0 [nz_grid, nL, nN] from the caller, the rest from
    its own tensors, as :func:`build_survey_model` passes them)."""
    dev = phi0.device if device is None else torch.device(device)
    t = {k: v.to(dev) for k, v in state["tensors"].items()}
    m = SurveyModel(survey=survey, nh_threshold=state["nh_threshold"], target=state["target"], data=data,
                    **{k: t.get(k) for k in (f.name for f in fields(SurveyModel))
                       if k not in ("survey", "nh_threshold", "target", "data")})
    if state["lazy"]:
        for k in _SAMPLE_FIELDS:
            object.__delattr__(m, k)
        z_used = (t["z_weights"] > 0).to(DTYPE)
        m._pending_samples = (survey, grid, phi0.to(dev, DTYPE), t["z_interp"], t["log_k"], t["logl_edges"], t["dlogl"],
                              t["dlognh"], t["dvol"], z_used, t["z_weights"], t["vol"], t["nh_share"])
    return m


def _sample_responses(survey, grid, phi0_grid, z_interp, log_k, edges, dl, dn, dvol, z_used, wz, vol, share) -> dict:
    """The selection share and the sample responses of :func:`build_survey_model` (see SurveyModel)."""
    dev = log_k.device
    phi0 = torch.einsum("fz,zln->fln", z_interp, phi0_grid)  # the XLF at the model's z nodes
    masks = grid.block_masks(dev)  # [15, nL, nN]
    sel = _selection_share(survey, log_k, edges, dl, z_used)
    # the sample kernels of the response layer applied to the 15 block cubes
    dndz = dndz_response(phi0, sel, dl, dn, dvol, z_used, select=masks)
    sample = dndz @ wz
    ct = selected_counts(phi0, sel, dl, dn, vol, share=share, select=masks)
    intr = selected_counts(phi0, None, dl, dn, vol, select=masks)
    intr_ct = selected_counts(phi0, None, dl, dn, vol, share=share, select=masks)
    return {"selection": sel, "dndz_response": dndz, "sample_response": sample, "ct_response": ct,
            "intrinsic_response": intr, "intrinsic_ct_response": intr_ct}


def build_counts_model(data, grid: Grid, phi0: torch.Tensor, table: SpectralTable, survey: Survey | None = None,
                       cosmology: CosmologyParams = CosmologyParams(), device=None) -> SurveyModel:
    """A :class:`SurveyModel` whose :meth:`~SurveyModel.predict` matches a ``CountsData`` table.

    Cumulative tables: N(>S) at the table's fluxes. Differential tables with bin edges
    (``flux_lo``/``flux_hi`` columns, e.g. BAT): the bin average of dN/dS, as the table's
    ``value`` is defined; without edges, dN/dS at the fluxes. ``survey`` defaults to
    :func:`popsynth.survey.survey_for_counts` (its z range and band are used; the published
    counts are area-corrected, so N(>S) uses sharp thresholds at each flux).
    Then ``model.chi2(w)`` gives chi^2 [B] against the table. The sample fields (``selection``,
    ``dndz_response``, ``ct_response``, ...), which counts predictions never use, are computed on
    first access.
    """
    survey = survey_for_counts(data) if survey is None else survey
    if tuple(survey.band_keV) != tuple(data.band_keV):
        raise PopsynthError(f"survey band {survey.band_keV} differs from the data band {data.band_keV}",
                            "convert the survey with survey.in_band(data.band_keV)")
    bins = counts_flux_bins(data)
    if data.kind == "cumulative":
        m = build_survey_model(survey, grid, phi0, table, fluxes=data.flux, cosmology=cosmology, device=device,
                               _lazy_samples=True)
        m.target = "cumulative"
    elif bins is not None:
        m = build_survey_model(survey, grid, phi0, table, fluxes=data.flux, flux_bins=bins, cosmology=cosmology,
                               device=device, _lazy_samples=True)
        m.target = "binned"
    else:
        m = build_survey_model(survey, grid, phi0, table, fluxes=data.flux, cosmology=cosmology, device=device,
                               _lazy_samples=True)
        m.target = "differential"
    m.data = data
    return m


def build_ct_model(ct, grid: Grid, phi0: torch.Tensor, table: SpectralTable, survey: Survey | None = None,
                   cosmology: CosmologyParams = CosmologyParams(), device=None) -> SurveyModel:
    """A :class:`SurveyModel` predicting an observed CT fraction (a ``CTFraction``): band, limit, z range, threshold."""
    survey = survey_for_ct(ct) if survey is None else survey
    m = build_survey_model(survey, grid, phi0, table, nh_threshold=ct.nh_threshold, cosmology=cosmology, device=device)
    m.target = "ct_fraction"
    m.data = ct
    return m


# ---------------------------------------------------------------------------- chi^2
def asym_residuals(pred: torch.Tensor, value, err_lo, err_hi) -> torch.Tensor:
    """(pred - value) / error with the upper error where pred > value, the lower one otherwise.

    pred [..., n]; value, err_lo, err_hi broadcastable to it. Squares sum to the chi^2."""
    v = torch.as_tensor(value, dtype=DTYPE, device=pred.device)
    lo = torch.as_tensor(err_lo, dtype=DTYPE, device=pred.device)
    hi = torch.as_tensor(err_hi, dtype=DTYPE, device=pred.device)
    r = pred - v
    return r / torch.where(r > 0, hi, lo)


def _asym_chi2(pred: torch.Tensor, value, err_lo, err_hi) -> torch.Tensor:
    return asym_residuals(pred, value, err_lo, err_hi) ** 2


def counts_chi2(pred: torch.Tensor, data) -> torch.Tensor:
    """chi^2 of counts predictions against a ``CountsData``: pred [B, n] (same units and points) -> [B].

    Asymmetric errors: err_hi where the model lies above the data, err_lo where below.
    """
    if not isinstance(pred, torch.Tensor) or pred.shape[-1] != data.value.size:
        shape = tuple(pred.shape) if isinstance(pred, torch.Tensor) else type(pred).__name__
        raise PopsynthError(f"prediction has shape {shape}, the data '{data.name}' have {data.value.size} points",
                            "predict at the data's fluxes (build_counts_model)")
    return _asym_chi2(pred.to(DTYPE), data.value, data.err_lo, data.err_hi).sum(-1)


def ct_fraction_chi2(pred: torch.Tensor, ct) -> torch.Tensor:
    """chi^2 of CT-fraction predictions: pred [B] against one ``CTFraction``, or [B, m] against a list of m -> [B].

    Asymmetric errors as in :func:`counts_chi2`.
    """
    single = hasattr(ct, "fraction")
    cts = [ct] if single else list(ct)
    if not isinstance(pred, torch.Tensor):
        raise PopsynthError(f"prediction must be a tensor, got {type(pred).__name__}", "pass model.ct_fraction(w)")
    pred = pred.to(DTYPE)
    p = pred[..., None] if single else pred
    if p.ndim == 0 or p.shape[-1] != len(cts):
        raise PopsynthError(f"prediction has shape {tuple(pred.shape)} for {len(cts)} CT fraction(s)",
                            "pass [B] for one CTFraction or [B, m] for a list of m")
    return _asym_chi2(p, [c.fraction for c in cts], [c.err_lo for c in cts], [c.err_hi for c in cts]).sum(-1)
