"""The unresolved CXB: the background from AGN fainter than a flux limit, by N_H class and
redshift; the fraction of the CXB resolved versus flux limit; and the hardness ratios of the
unresolved light in the fields of Li et al. 2019.

Selection. A source at redshift z with intrinsic 2-10 keV luminosity L, spectral draw d and
log N_H cell n has the observed flux S = L Ksel[d, z, n] in the selection band
(:func:`popsynth.observables.band_flux_factor`). It is unresolved when S < S_lim, i.e. when
log L < t = log S_lim - log Ksel. Inside a log L cell [a, b] the XLF is taken constant (its
cell average, as the counts code does), so the share of the cell's luminosity integral that lies
below t is exactly

    f(t) = (10^clip(t, a, b) - 10^a) / (10^b - 10^a),

and the unresolved light is the luminosity integral C(t) = sum_l phi1 L_l dlogL_l f_l(t) (phi1 the
L-weighted cell average, so C(+inf) is the CXB's exact luminosity integral). No cell-centre cut:
the result moves smoothly with S_lim. Per block k (N_H class c, log L range [a_j, b_j]) the part
below t is C(clamp(t, a_j, b_j)) - C(a_j).

Unresolved spectrum (keV^2 cm^-2 s^-1 keV^-1 sr^-1), with the CXB kernel of each draw
K_d[z, n, e] (:func:`popsynth.cxb.cxb_kernel` applied to the draw's spectra)::

    I_unres(E) = (1/D) sum_d sum_{z, n} K_d[z, n, E] sum_l phi1 L dlogL f_l(t_{d,z,n})

As S_lim -> inf this is the run's CXB model except that the draws are interpolated one by one
(the run interpolates their mean; the two differ by < 1e-3, tested). Band intensity (erg cm^-2
s^-1 sr^-1) in a band B: the same sum with K_d replaced by w_z dV/dz/dOmega dlogN_H Kint[d, z, n]
(Kint the band-flux factor of B), so the resolved fraction 1 - I_unres(S_lim) / I_unres(inf) is
the share of the band's AGN background in sources brighter than S_lim. A redshift range restricts
w_z (:func:`popsynth.observables.z_range_weights`).

Hardness ratios (Li et al. 2019 eqs. 8-10). Li et al. define HR1 = (P[1-2] - P[0.5-1]) /
(P[1-2] + P[0.5-1]), HR2 = (P[2-4] - P[1-2]) / (...), HR3 = (P[4-7] - P[2-4]) / (...), with P the
mean CIB-CXB cross power, whose X-ray factor is a photon intensity (photon s^-1 cm^-2 sr^-1 in
each band; Table 2 units). Here P is replaced by the band photon intensity of the unresolved AGN
light, N_B = int_B (I(E) / E^2) dE (photons cm^-2 s^-1 sr^-1): the model energy spectrum I(E) is
turned into photons by dividing by E, then integrated over each band (trapezoid in ln E on 48
points per band). Optionally the light passes a Galactic column (wabs-like photoelectric
absorption, :func:`popsynth.physics.crosssections.sigma_photo`), as in Li et al.'s model grids.
The comparison grid of absorbed power laws (Li et al. Fig. 3, middle: zwabs * zpo, Gamma = 0-3,
N_H = 1e21-1e23 at z = 1 and 3, Galactic column 1.72e20) is computed the same way
(:func:`powerlaw_hr_grid`); the paper shows it only as a figure.

``popsynth unresolved RUN --out DIR`` writes ``resolved_fraction.ecsv``, ``unresolved_spectrum.ecsv``,
``li2019_hardness.ecsv``, ``unresolved_summary.json`` and ``unresolved.png``.
"""

from __future__ import annotations

import argparse
import math
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ._tensor import DTYPE, as_tensor, bracket
from .cosmology import CosmologyParams, distance_tables
from .blocks import BLOCKS
from .cxb import cxb_kernel
from .errors import PopsynthError
from .grid import NH_CLASS_NAMES, Grid
from .observables import SR_PER_DEG2, band_flux_factor, z_range_weights
from .spectra.table import SpectralTable
from .spectra.primary import KEV_ERG
from .survey import _check_band

__all__ = ["UnresolvedModel", "build_unresolved_model", "resolved_fraction_curves", "hardness_ratios",
           "powerlaw_hr_grid", "LI2019_BANDS", "DEFAULT_BANDS", "main"]

#: The four Li et al. 2019 narrow bands (keV).
LI2019_BANDS = ((0.5, 1.0), (1.0, 2.0), (2.0, 4.0), (4.0, 7.0))
#: Bands of the resolved-fraction curves: (intensity band, selection band), keV.
DEFAULT_BANDS = (((0.5, 2.0), (0.5, 2.0)), ((1.0, 2.0), (0.5, 2.0)), ((2.0, 8.0), (2.0, 8.0)),
                 ((8.0, 24.0), (8.0, 24.0)), ((14.0, 195.0), (14.0, 195.0)))
#: Galactic column used by Li et al. 2019 for their AGN model spectra (sec. 4.3), cm^-2.
LI2019_GALACTIC_NH = 1.72e20


def _check_flux(s) -> float:
    if isinstance(s, bool) or not isinstance(s, (int, float)) or not (s > 0):
        raise PopsynthError(f"flux limit must be a number > 0 erg/cm2/s (inf allowed), got {s!r}", "pass e.g. 1e-16")
    return float(s)


@dataclass(eq=False)
class UnresolvedModel:
    """The pieces of a run needed for flux-limited backgrounds.

    grid (:class:`~popsynth.grid.Grid`); phi1 [nz, nL, nN] L-weighted starting cube (Mpc^-3 dex^-2);
    table (:class:`~popsynth.spectra.table.SpectralTable` with ``per_draw`` [D, nN, nE]); cosmology.
    All block responses are [15, ...]: the background of block k at unit weight.
    """

    grid: Grid
    phi1: torch.Tensor
    table: SpectralTable
    cosmology: CosmologyParams = CosmologyParams()

    def __post_init__(self):
        g = self.grid
        lw = as_tensor(10.0 ** g.logl * g.dlogl, self.phi1.device)
        m = (self.phi1.to(DTYPE) * lw[:, None]).transpose(1, 2)  # [nz, nN, nL] erg s^-1 Mpc^-3 dex^-1 per cell
        self._cum = torch.cat([torch.zeros_like(m[..., :1]), torch.cumsum(m, -1)], -1)  # [nz, nN, nL+1]
        self._edges = as_tensor(g.logl_edges, self.phi1.device)
        self._cls = g.nh_class.to(self.phi1.device)  # [nN]
        self._ranges = [(BLOCKS.logl_edges[j], BLOCKS.logl_edges[j + 1]) for j in range(BLOCKS.n_lum)]

    # -------------------------------------------------------------- the exact cell-fraction integral
    def _moment_below(self, t: torch.Tensor) -> torch.Tensor:
        """C(t) per luminosity range: [5, ..., nz, nN] for t [..., nz, nN] (log L limits)."""
        edges, cum = self._edges, self._cum
        out = []
        for a, b in self._ranges:
            tt = t.clamp(a, b).contiguous()
            i0, idx, _, _ = bracket(edges, tt, fraction=False)
            lo, hi = edges[i0], edges[idx]
            frac = (10.0 ** (tt - hi) - 10.0 ** (lo - hi)) / (1.0 - 10.0 ** (lo - hi))  # f(t) inside the cell
            c0 = torch.gather(cum.expand(t.shape[:-2] + cum.shape), -1, i0[..., None])[..., 0]
            c1 = torch.gather(cum.expand(t.shape[:-2] + cum.shape), -1, idx[..., None])[..., 0]
            ia = int(np.argmin(np.abs(self.grid.logl_edges - a)))
            out.append(c0 + frac * (c1 - c0) - cum[..., ia])
        return torch.stack(out, 0)

    def _blocks(self, v: torch.Tensor, kern: torch.Tensor) -> torch.Tensor:
        """Sum v [5, D, nz, nN] x kern [D, nz, nN, E] into blocks: [15, E] (mean over draws)."""
        out = torch.zeros(BLOCKS.n, kern.shape[-1], dtype=DTYPE, device=kern.device)
        D = kern.shape[0]
        for c in range(BLOCKS.n_classes):
            sel = self._cls == c
            r = torch.einsum("jdzn,dzne->je", v[..., sel], kern[:, :, sel]) / D  # [5, E]
            for j in range(len(self._ranges)):
                out[int(BLOCKS.index_of(c, j))] = r[j]
        return out

    def _limit_t(self, ksel: torch.Tensor, s_lim: float) -> torch.Tensor:
        if math.isinf(s_lim):
            return torch.full_like(ksel, float(self.grid.logl_edges[-1]) + 1.0)
        return math.log10(s_lim) - torch.log10(ksel.clamp_min(1e-300))

    def _z_factor(self, z_range) -> torch.Tensor:
        """[nz] multiplier turning the grid's trapezoid weights into those of ``z_range``."""
        if z_range is None:
            return torch.ones(self.grid.z.size, dtype=DTYPE, device=self.phi1.device)
        return as_tensor(z_range_weights(self.grid.z, z_range) / self.grid.z_weights, self.phi1.device)

    # -------------------------------------------------------------- products
    def band_response(self, band, sel_band, s_lims, z_range=None) -> torch.Tensor:
        """AGN background intensity in ``band`` from sources with ``sel_band`` flux below each limit.

        Args: band, sel_band (E1, E2) keV observed frame; s_lims [S] erg cm^-2 s^-1 (inf allowed:
        every source); z_range optional (z_lo, z_hi).
        Returns float64 [S, 15]: erg cm^-2 s^-1 sr^-1 of each block at unit weight (I = R @ w)."""
        _check_band(band)
        _check_band(sel_band)
        g = self.grid
        dev = self.phi1.device
        d = distance_tables(g.z, self.cosmology, device=dev)
        geom = as_tensor(g.z_weights, dev) * d["dvc_dz_dsr_mpc3"] * self._z_factor(z_range)  # [nz] Mpc^3 sr^-1
        kint = band_flux_factor(self.table, g, band, self.cosmology, device=dev)  # [D, nz, nN] cm^-2
        kern = (kint * geom[None, :, None] * as_tensor(g.dlognh, dev)[None, None, :])[..., None]  # [D, nz, nN, 1]
        ksel = kint if tuple(map(float, sel_band)) == tuple(map(float, band)) else \
            band_flux_factor(self.table, g, sel_band, self.cosmology, device=dev)
        rows = []
        for s in np.atleast_1d(np.asarray(s_lims, dtype=np.float64)):
            v = self._moment_below(self._limit_t(ksel, _check_flux(float(s))))  # [5, D, nz, nN]
            rows.append(self._blocks(v, kern)[:, 0])
        return torch.stack(rows, 0)

    def spectrum_response(self, energy, sel_band, s_lim: float, z_range=None) -> torch.Tensor:
        """Unresolved CXB spectrum per block: [15, nE] keV^2 cm^-2 s^-1 keV^-1 sr^-1 at ``energy``
        [nE] keV, from sources with ``sel_band`` flux below ``s_lim`` (inf: the whole CXB)."""
        _check_band(sel_band)
        s_lim = _check_flux(s_lim)
        g, dev = self.grid, self.phi1.device
        ksel = band_flux_factor(self.table, g, sel_band, self.cosmology, device=dev)
        v = self._moment_below(self._limit_t(ksel, s_lim))  # [5, D, nz, nN]
        zf = self._z_factor(z_range)
        kerns = []
        for dd in range(self.table.n_draws):
            one = SpectralTable(self.table.energy, self.table.lognh_edges, self.table.lognh, self.table.per_draw[dd],
                                {}, self.table.per_draw[dd:dd + 1], {}, {})
            kerns.append(cxb_kernel(one, g, energy, self.cosmology, device=dev) * zf[:, None, None])
        return self._blocks(v, torch.stack(kerns, 0))


def build_unresolved_model(run, device="cpu") -> UnresolvedModel:
    """The :class:`UnresolvedModel` of a finished run: its grid, starting cube (L-weighted) and
    spectral table (rebuilt from the cache with the run's spectral set, draws, seed and components)."""
    from .run import STARTING_XLFS
    from .spectra.cache import build_spectral_table
    from .spectra.registry import make_components

    cfg = run.config
    grid = Grid()
    phi1 = STARTING_XLFS[cfg.xlf][0](grid, cfg.absorption, l_moment=1, device=torch.device(device))
    table = build_spectral_table(cfg.spec_set, grid.lognh_edges, n_draws=cfg.draws, seed=cfg.spectra_seed,
                                 components=make_components(cfg.spectral_model, cfg.torus_table), device=torch.device(device))
    return UnresolvedModel(grid, phi1, table)


# ---------------------------------------------------------------------------- hardness ratios
def _band_points(band, n: int = 48) -> np.ndarray:
    return np.exp(np.linspace(math.log(band[0]), math.log(band[1]), n))


def band_photon_intensity(energy, spec, band) -> np.ndarray:
    """Photon intensity int_band I(E)/E^2 dE (photons cm^-2 s^-1 sr^-1) of spectra I [..., nE]
    (keV^2 cm^-2 s^-1 keV^-1 sr^-1) given on log-spaced ``energy`` [nE] covering exactly ``band``;
    trapezoid in ln E of I(E)/E."""
    e = np.asarray(energy, dtype=np.float64)
    y = np.asarray(spec, dtype=np.float64) / e
    return np.trapezoid(y, np.log(e), axis=-1)


def hardness_ratios(photons) -> np.ndarray:
    """HR1, HR2, HR3 (Li et al. 2019 eqs. 8-10) from photon intensities [..., 4] in the bands
    0.5-1, 1-2, 2-4, 4-7 keV: [..., 3] dimensionless."""
    p = np.asarray(photons, dtype=np.float64)
    return np.stack([(p[..., i + 1] - p[..., i]) / (p[..., i + 1] + p[..., i]) for i in range(3)], -1)


def galactic_transmission(energy, nh_gal: float) -> np.ndarray:
    """exp(-N_H sigma_photo(E)) for a Galactic column ``nh_gal`` (cm^-2, >= 0); energy [nE] keV."""
    if nh_gal < 0:
        raise PopsynthError(f"Galactic column must be >= 0 cm^-2, got {nh_gal}", "pass e.g. 1.72e20")
    if nh_gal == 0:
        return np.ones(np.shape(energy))
    from .physics.crosssections import sigma_photo

    return np.exp(-nh_gal * sigma_photo(torch.as_tensor(np.asarray(energy, dtype=np.float64))).numpy())


def powerlaw_hr_grid(gammas=(0.0, 1.0, 2.0, 3.0), nhs=(1e21, 1e22, 1e23), zs=(1.0, 3.0),
                     nh_gal: float = LI2019_GALACTIC_NH) -> list[dict]:
    """HR1-HR3 of absorbed power laws (wabs(N_H,gal) * zwabs(N_H, z) * zpo(Gamma)), photon units, as the
    grid of Li et al. 2019 Fig. 3 (middle column). Returns a list of {gamma, nh, z, hr1, hr2, hr3}."""
    rows = []
    for z in zs:
        for nh in nhs:
            for g in gammas:
                ph = []
                for b in LI2019_BANDS:
                    e = _band_points(b)
                    spec = e ** (2 - g) * galactic_transmission(e, nh_gal) * galactic_transmission(e * (1 + z), nh)
                    ph.append(band_photon_intensity(e, spec, b))
                hr = hardness_ratios(np.array(ph))
                rows.append({"gamma": g, "nh": nh, "z": z, "hr1": float(hr[0]), "hr2": float(hr[1]), "hr3": float(hr[2])})
    return rows


def li2019_measured() -> list[dict]:
    """HR1-HR3 and 1-sigma errors (propagated) from Li et al. 2019 Table 2 (stacked and per field)."""
    from .bhad import load_literature

    t = load_literature("li2019_crosspower")
    out = []
    for r in t:
        p = np.array([r["p_0p5_1"], r["p_1_2"], r["p_2_4"], r["p_4_7"]], dtype=np.float64)
        e = np.array([r["e_0p5_1"], r["e_1_2"], r["e_2_4"], r["e_4_7"]], dtype=np.float64)
        hr = hardness_ratios(p)
        err = []
        for i in range(3):
            a, b = p[i + 1], p[i]  # HR = (a - b)/(a + b): dHR/da = 2b/(a+b)^2, dHR/db = -2a/(a+b)^2
            err.append(float(2 * math.hypot(b * e[i + 1], a * e[i]) / (a + b) ** 2))
        out.append({"field": str(r["field"]), "ir_band": str(r["ir_band"]), "hr": hr.tolist(), "err": err})
    return out


# ---------------------------------------------------------------------------- from a run
def _pct(x, axis=0):
    q = np.percentile(np.asarray(x), [16, 50, 84], axis=axis)
    return q[0], q[1], q[2]


def resolved_fraction_curves(model: UnresolvedModel, weights: torch.Tensor, s_lims, bands=DEFAULT_BANDS) -> dict:
    """Resolved fraction 1 - I_unres(S_lim) / I_total of the AGN background per band.

    Returns {(band, sel_band): {"s_lim" [S], "fraction" [N, S], "unresolved" [N, S] erg cm^-2 s^-1 deg^-2,
    "total" [N] erg cm^-2 s^-1 deg^-2}} for weights [N, 15]."""
    w = torch.as_tensor(weights, dtype=DTYPE)
    out = {}
    s = np.asarray(s_lims, dtype=np.float64)
    for band, sel in bands:
        r = model.band_response(band, sel, np.concatenate([s, [np.inf]]))  # [S+1, 15]
        i = (w @ r.T).numpy() * SR_PER_DEG2  # [N, S+1]
        out[(band, sel)] = {"s_lim": s, "unresolved": i[:, :-1], "total": i[:, -1],
                            "fraction": 1.0 - i[:, :-1] / i[:, -1:]}
    return out


def li2019_hardness(model: UnresolvedModel, weights: torch.Tensor, nh_gal: float = LI2019_GALACTIC_NH) -> list[dict]:
    """HR1-HR3 of the unresolved AGN light (0.5-2 keV flux below each Li et al. field's S_lim):
    a list per field of {field, s_lim, hr [N, 3], hr_nogal [N, 3]}, plus the total CXB (s_lim = inf)."""
    from .bhad import load_literature

    fields = load_literature("li2019_fields")
    e = np.unique(np.concatenate([_band_points(b) for b in LI2019_BANDS]))
    trans = galactic_transmission(e, nh_gal)
    w = torch.as_tensor(weights, dtype=DTYPE)
    rows = []
    for name, s in list(zip(fields["field"], fields["flux_limit"])) + [("total CXB", np.inf)]:
        spec = (w @ model.spectrum_response(e, (0.5, 2.0), float(s))).numpy()  # [N, nE]
        res = {"field": str(name), "s_lim": float(s)}
        for key, sp in (("hr", spec * trans), ("hr_nogal", spec)):
            ph = np.stack([band_photon_intensity(e[(e >= b[0] * (1 - 1e-12)) & (e <= b[1] * (1 + 1e-12))],
                                                 sp[:, (e >= b[0] * (1 - 1e-12)) & (e <= b[1] * (1 + 1e-12))], b)
                           for b in LI2019_BANDS], -1)
            res[key] = hardness_ratios(ph)
        rows.append(res)
    return rows


def galaxy_band_intensity(galaxies: str, band) -> float:
    """Band energy intensity of the run's galaxy (X-ray binary) CXB term, erg cm^-2 s^-1 sr^-1:
    int_band (E^2 dN/dE) dln E (trapezoid in ln E on 200 points)."""
    from .galaxies import GALAXY_MODELS

    e = np.exp(np.linspace(math.log(band[0]), math.log(band[1]), 200))
    g = GALAXY_MODELS[galaxies](torch.as_tensor(e)).numpy()
    return float(np.trapezoid(g, np.log(e)) * KEV_ERG)


def _band_name(b) -> str:
    return f"{b[0]:g}-{b[1]:g}"


def write_outputs(run, model: UnresolvedModel, weights: torch.Tensor, out: Path, s_lims=None,
                  spectrum_limit: float = 1e-16, spectrum_band=(0.5, 2.0), nh_gal: float = LI2019_GALACTIC_NH,
                  figure: bool = True) -> dict:
    """Compute everything and write the tables, JSON summary and figure (each file atomically); returns the summary."""
    from astropy.table import Table

    from .bhad import load_literature
    from .io.ecsv import write_ecsv
    from .io.files import write_json

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    prov = {"product": "popsynth unresolved", "run_folder": str(run.folder), "run_mode": run.mode,
            "spec_set": run.spec_set, "uncertainty": run.uncertainty, "n_samples": int(weights.shape[0])}
    s_lims = np.logspace(-19, -9, 41) if s_lims is None else np.asarray(s_lims, dtype=np.float64)
    curves = resolved_fraction_curves(model, weights, s_lims)
    t = Table()
    t["s_lim"] = s_lims
    t["s_lim"].unit = "erg / (s cm2)"
    t["s_lim"].description = "flux limit in the selection band of each column"
    summ = {"provenance": prov, "resolved_fraction_at_literature_limits": [], "total_agn_intensity": {}}
    for (band, sel), c in curves.items():
        lo, med, hi = _pct(c["fraction"])
        for p, arr in (("p16", lo), ("p50", med), ("p84", hi)):
            col = f"f_{_band_name(band)}_sel_{_band_name(sel)}_{p}"
            t[col] = arr
            t[col].description = (f"resolved fraction of the AGN background in {_band_name(band)} keV, sources selected "
                                  f"in {_band_name(sel)} keV, {p} over weight samples")
        summ["total_agn_intensity"][_band_name(band)] = {"p50": float(np.median(c["total"])),
                                                         "unit": "erg / (s cm2 deg2)"}
    t.meta.update(prov)
    write_ecsv(out / "resolved_fraction.ecsv", t)
    lit = load_literature("resolved_fractions")
    for r in lit:
        band, sel = (float(r["band_lo"]), float(r["band_hi"])), (float(r["sel_band_lo"]), float(r["sel_band_hi"]))
        i = (weights.to(DTYPE) @ model.band_response(band, sel, [float(r["flux_limit"]), np.inf]).T).numpy()
        frac = 1.0 - i[:, 0] / i[:, 1]  # resolved fraction of the AGN light
        gal = galaxy_band_intensity(run.config.galaxies, band)
        frac_all = (i[:, 1] - i[:, 0]) / (i[:, 1] + gal)  # of AGN + galaxies, the galaxies all unresolved
        lo, med, hi = _pct(frac)
        summ["resolved_fraction_at_literature_limits"].append({
            "reference": str(r["reference"]), "band_keV": list(band), "selection_band_keV": list(sel),
            "flux_limit": float(r["flux_limit"]), "published": float(r["resolved_fraction"]),
            "published_err": [float(r["err_lo"]), float(r["err_hi"])], "model_p16": float(lo), "model_p50": float(med),
            "model_p84": float(hi), "model_incl_galaxies_p50": float(np.median(frac_all))})
    # unresolved spectrum by N_H class and redshift range
    energy = np.logspace(np.log10(0.3), np.log10(300.0), 121)
    sp = Table()
    sp["energy"] = energy
    sp["energy"].unit = "keV"
    w = weights.to(DTYPE)
    cls = BLOCKS.nh_class()
    unit = "keV / (s cm2 sr)"
    for zr in (None, (0.0, 1.0), (1.0, 2.0), (2.0, 5.0)):
        resp = model.spectrum_response(energy, spectrum_band, spectrum_limit, zr)
        tag = "" if zr is None else f"_z{zr[0]:g}_{zr[1]:g}"
        parts = [("total", w @ resp)] + ([(n, w[:, cls == c] @ resp[cls == c]) for c, n in enumerate(NH_CLASS_NAMES)]
                                         if zr is None else [])
        for name, arr in parts:
            lo, med, hi = _pct(arr.numpy())
            for p, a in (("p16", lo), ("p50", med), ("p84", hi)):
                col = f"unres_{name}{tag}_{p}"
                sp[col] = a
                sp[col].unit = unit
                sp[col].description = (f"E^2 dN/dE of AGN with {_band_name(spectrum_band)} keV flux < {spectrum_limit:g}, "
                                       f"{name}{'' if zr is None else f', {zr[0]:g} < z < {zr[1]:g}'}, {p}")
    total = w @ model.spectrum_response(energy, spectrum_band, np.inf)
    lo, med, hi = _pct(total.numpy())
    for p, a in (("p16", lo), ("p50", med), ("p84", hi)):
        sp[f"total_agn_{p}"] = a
        sp[f"total_agn_{p}"].unit = unit
        sp[f"total_agn_{p}"].description = f"E^2 dN/dE of all AGN (the CXB model's AGN part), {p}"
    sp.meta.update({**prov, "selection_band_keV": list(spectrum_band), "flux_limit": spectrum_limit})
    write_ecsv(out / "unresolved_spectrum.ecsv", sp)
    # Li et al. 2019 hardness ratios
    hr_rows = li2019_hardness(model, weights, nh_gal)
    ht = Table()
    ht["field"] = [r["field"] for r in hr_rows]
    ht["s_lim"] = [r["s_lim"] for r in hr_rows]
    ht["s_lim"].unit = "erg / (s cm2)"
    ht["s_lim"].description = "0.5-2 keV flux limit (Li et al. 2019 Table 1); inf: all AGN"
    for key, desc in (("hr", f"Galactic N_H = {nh_gal:g}"), ("hr_nogal", "no Galactic absorption")):
        for i in range(3):
            q = np.array([_pct(r[key][:, i]) for r in hr_rows])
            for j, p in enumerate(("p16", "p50", "p84")):
                col = f"{key.replace('hr', f'hr{i + 1}')}_{p}"
                ht[col] = q[:, j]
                ht[col].description = f"HR{i + 1} of the unresolved AGN photon intensity ({desc}), {p}"
    ht.meta.update({**prov, "definition": "Li et al. 2019 eqs. 8-10 with band photon intensities of the unresolved AGN light"})
    write_ecsv(out / "li2019_hardness.ecsv", ht)
    summ["li2019_hardness"] = {r["field"]: {"s_lim": r["s_lim"],
                                            **{f"hr{i + 1}_p50": float(np.median(r["hr"][:, i])) for i in range(3)},
                                            **{f"hr{i + 1}_nogal_p50": float(np.median(r["hr_nogal"][:, i])) for i in range(3)}}
                               for r in hr_rows}
    summ["li2019_measured"] = li2019_measured()
    summ["li2019_powerlaw_grid"] = powerlaw_hr_grid(nh_gal=nh_gal)
    write_json(out / "unresolved_summary.json", summ)
    if figure:
        plot_unresolved(curves, sp, summ, out / "unresolved.png")
    return summ


def plot_unresolved(curves: dict, spectrum, summ: dict, path: Path) -> Path:
    """unresolved.png: resolved fraction vs flux limit per band with the published points; the
    unresolved spectrum by N_H class; HR1 vs HR2 of the unresolved light next to Li et al. 2019."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(1, 3, figsize=(15, 4.4))
    for (band, sel), c in curves.items():
        lo, med, hi = _pct(c["fraction"])
        l, = ax[0].semilogx(c["s_lim"], med, label=f"{_band_name(band)} keV (sel. {_band_name(sel)})")
        ax[0].fill_between(c["s_lim"], lo, hi, color=l.get_color(), alpha=0.2, lw=0)
    for r in summ["resolved_fraction_at_literature_limits"]:
        ax[0].errorbar([r["flux_limit"]], [r["published"]], yerr=[[r["published_err"][0]], [r["published_err"][1]]],
                       fmt="o", color="k", ms=4)
        ax[0].annotate(f"{r['reference'].split()[0]} {_band_name(r['band_keV'])}", (r["flux_limit"], r["published"]),
                       fontsize=6, xytext=(3, -9), textcoords="offset points")
    ax[0].set_xlabel("flux limit [erg cm$^{-2}$ s$^{-1}$, selection band]")
    ax[0].set_ylabel("resolved fraction of the AGN CXB")
    ax[0].legend(fontsize=6.5)
    e = np.asarray(spectrum["energy"])
    ax[1].loglog(e, spectrum["total_agn_p50"], "k-", label="all AGN")
    ax[1].loglog(e, spectrum["unres_total_p50"], "k--", label=f"unresolved (S < {spectrum.meta['flux_limit']:g})")
    for n, col in zip(NH_CLASS_NAMES, ("tab:blue", "tab:orange", "tab:red")):
        ax[1].loglog(e, spectrum[f"unres_{n}_p50"], color=col, lw=1, label=n.replace("_", " "))
    for zr in ("z0_1", "z1_2", "z2_5"):
        ax[1].loglog(e, spectrum[f"unres_total_{zr}_p50"], ":", lw=1, label=zr.replace("_", "-").replace("z", "z "))
    ax[1].set_xlabel("E [keV]")
    ax[1].set_ylabel(r"E$^2$ dN/dE [keV$^2$ cm$^{-2}$ s$^{-1}$ keV$^{-1}$ sr$^{-1}$]")
    ax[1].set_ylim(1e-2, 1e2)
    ax[1].legend(fontsize=6.5)
    grid = summ["li2019_powerlaw_grid"]
    for z, ls in ((1.0, "-"), (3.0, "--")):
        for nh in sorted({g["nh"] for g in grid}):
            pts = [g for g in grid if g["z"] == z and g["nh"] == nh]
            ax[2].plot([g["hr1"] for g in pts], [g["hr2"] for g in pts], ls, color="0.6", lw=0.8)
    for m in summ["li2019_measured"]:
        if m["field"] == "STACK":
            ax[2].errorbar([m["hr"][0]], [m["hr"][1]], xerr=[m["err"][0]], yerr=[m["err"][1]], fmt="s", color="r",
                           label=f"Li+19 stack {m['ir_band']}")
    for name, r in summ["li2019_hardness"].items():
        ax[2].plot([r["hr1_p50"]], [r["hr2_p50"]], "o", ms=4, label=f"popsynth unresolved: {name}")
    ax[2].set_xlabel("HR1")
    ax[2].set_ylabel("HR2")
    ax[2].legend(fontsize=6)
    fig.tight_layout()
    from .io.files import atomic_write

    path = Path(path)
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=120, format=path.suffix[1:] or "png"))
    plt.close(fig)
    return path


# ---------------------------------------------------------------------------- command line
def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="popsynth unresolved", description=(
        "Unresolved CXB of a run: the background of AGN below a flux limit (by N_H class and redshift), "
        "the resolved fraction versus flux limit in 0.5-2, 1-2, 2-8, 8-24 and 14-195 keV, and the Li et al. 2019 "
        "hardness ratios of the unresolved light; median and 16-84 %% over the run's weight samples."))
    p.add_argument("run", help="run folder written by train.py (or its xlf_best.h5)")
    p.add_argument("--out", default=None, help="output folder (default: RUN/products/unresolved)")
    p.add_argument("--flux-limit", type=float, default=1e-16,
                   help="flux limit of the unresolved spectrum, erg/cm2/s in --band (default 1e-16)")
    p.add_argument("--band", type=float, nargs=2, default=(0.5, 2.0), metavar=("E1", "E2"),
                   help="selection band of --flux-limit, keV (default 0.5 2)")
    p.add_argument("--galactic-nh", type=float, default=LI2019_GALACTIC_NH,
                   help="Galactic column for the hardness ratios, cm^-2 (default 1.72e20, Li et al. 2019 sec. 4.3)")
    p.add_argument("--max-samples", type=int, default=100, help="weight samples used (seeded subset; default 100)")
    p.add_argument("--no-figure", action="store_true", help="skip unresolved.png (no matplotlib needed)")
    args = p.parse_args(argv)
    from .results import load_run

    try:
        run = load_run(args.run)
        _check_flux(args.flux_limit)
        out = Path(args.out) if args.out else run.folder / "products" / "unresolved"
        try:
            w = run.weight_samples(max_samples=args.max_samples)
        except PopsynthError:
            w = run.best_weights()
        model = build_unresolved_model(run)
        summ = write_outputs(run, model, w, out, spectrum_limit=args.flux_limit, spectrum_band=tuple(args.band),
                             nh_gal=args.galactic_nh, figure=not args.no_figure)
    except PopsynthError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for r in summ["resolved_fraction_at_literature_limits"]:
        print(f"{r['reference']}: {_band_name(r['band_keV'])} keV at S > {r['flux_limit']:.2g}: model "
              f"{r['model_p50']:.1%} [{r['model_p16']:.1%}, {r['model_p84']:.1%}] of the AGN light, "
              f"{r['model_incl_galaxies_p50']:.1%} of AGN + galaxies; published {r['published']:.0%}")
    print(f"outputs in {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
