"""Mock AGN catalogues: a Poisson realisation of a run's XLF in a sky area and redshift range.

::

    popsynth mock RUN --area 2 --zmin 0 --zmax 3 --flux-limit 1e-15 --limit-band 0.5 2 --seed 1 --out m.fits
    popsynth mock RUN --survey erass8_like --seed 1 --out erass.fits     # a shipped survey description
    python -m popsynth.mock RUN ...                                       # the same

``RUN`` is a run folder written by ``train.py`` or its ``xlf_best.h5``. The cube is the run's best
cube (posterior mode or selected start) or, with ``--sample K``, the cube of the K-th weight
vector of :meth:`popsynth.results.RunOutputs.weight_samples` (a posterior sample, or a converged
start in A19 mode), so that several mocks carry the fit's uncertainty.

The model the catalogue realises (the engine's own; see :mod:`popsynth.observables`)
-----------------------------------------------------------------------------------

phi(z, log L, log N_H) in Mpc^-3 dex^-2 is held as cell averages on the grid: constant in log L
inside a log L cell (so log L is drawn uniformly inside its cell), constant in log N_H inside a
log N_H cell (drawn uniformly), and linear in z between the grid's nodes (a sum of "hat"
functions, one per node), with the volume element dV_c/dz exact at every z: the model whose flux-
selected observables :func:`popsynth.observables.build_survey_model` integrates on refined z
sub-nodes. A source of node i is drawn from the density hat_i(z) dV_c/dz(z) restricted to the
requested z range (rejection from the hat). Each source gets a
spectral draw d, uniform over the spectral table's D draws (every draw has equal weight in the
engine), and carries that draw's parameters (Gamma, R, E_cut in keV, theta_tor in deg,
f_scatt), the obscured or unobscured set by its log N_H cell (log N_H >= 22 is obscured,
:mod:`popsynth.spectra.sets`).

The expected number of sources of node i, log L cell l, log N_H cell n and draw d is

    mu = A (pi/180)^2 W_i phi[i, l, n] dlogL_l dlogN_H_n / D,

A the area in deg^2, W_i = integral of hat_i(z) dV_c/(dz dOmega)(z) over the z range (Mpc^3 sr^-1;
Gauss-Legendre, 16 points per half hat).
Counts are Poisson with these means; the catalogue is unclustered.

Fluxes. The observed-frame energy flux of a source in the band [E1, E2] (keV) is

    S = L K_d,n(z),   K = KEV_ERG / (4 pi d_L(z)^2) integral_{E1(1+z)}^{E2(1+z)} E S_d,n(E) dE,

evaluated at the source's own redshift, with the same spectrum and the same integration rule as
:func:`popsynth.observables.band_flux_factor` (S_d,n the table's spectrum of draw d averaged
over the log N_H cell n; E^2 S interpolated linearly in ln E). So:

* in log L the flux is exact (S is linear in L);
* in z it is exact for the cell's spectrum (d_L interpolated in log-log on 4097 points over
  z = 1e-4-20: relative error < 1e-6); at a grid node it equals ``band_flux_factor`` there;
* in log N_H the source takes its cell's spectrum (the cell average over the N_H inside the
  0.1-dex cell, 4 Gauss-Legendre nodes), as every engine observable does.

The engine's analytic observables (:class:`~popsynth.observables.SurveyModel`) evaluate K at
the z nodes and interpolate the integrand linearly in z; the mock evaluates K at each source's
z. The two differ by the z quadrature error of the analytic model: measured below 1 % for
N(>S), dN/dz and CT fractions of the shipped surveys (``tests/test_mock.py`` compares them
within Poisson errors).

Selection. Without one, every source of the area and z range is drawn (only sensible for small
areas: ``--max-rows`` guards memory). With a flux limit S_lim in a band (``--flux-limit S
--limit-band LO HI``) a source is kept when S > S_lim; with a survey's area curve
(``--survey NAME``), it is kept with probability area(S) / max area
(:meth:`popsynth.survey.Survey.completeness`), as the survey model selects samples. Sources
that cannot pass are never drawn: for each (node, draw, N_H cell) the largest K over the node's
z support bounds the luminosity below which no source is selected, and only the part of each
log L cell above that bound is sampled (then thinned by the exact selection). This is what lets
an all-sky catalogue to 1e-14 erg cm^-2 s^-1 in 0.5-2 keV (millions of rows) be drawn node by
node and written in chunks.

Output: FITS (binary table, streamed row chunks) or ECSV, one row per source, columns with
units, and the provenance (run folder, mode, spectral set, cube and weights used, seed, area,
z range, selection, popsynth version, expected numbers) in the header. Positions (ra, dec) are
uniform in a spherical cap of the requested area around (--ra, --dec), or the whole sky.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import PopsynthError

__all__ = [
    "DEFAULT_BANDS",
    "MOCK_COLUMNS",
    "FluxCalculator",
    "MockSpec",
    "mock_cube",
    "draw_mock",
    "expected_numbers",
    "make_mock",
    "write_mock",
    "read_mock",
    "band_column",
    "main",
]

#: Default output bands (keV): soft, hard, Chandra hard, NuSTAR hard, Swift/BAT.
DEFAULT_BANDS = ((0.5, 2.0), (2.0, 10.0), (2.0, 8.0), (8.0, 24.0), (14.0, 195.0))

#: Columns before the band fluxes: name -> (unit, numpy dtype, description).
MOCK_COLUMNS = {
    "z": ("", "f8", "redshift"),
    "log_lx": ("dex(erg/s)", "f8", "log10 intrinsic (unabsorbed) rest-frame 2-10 keV luminosity, erg/s"),
    "log_nh": ("dex(cm-2)", "f8", "log10 line-of-sight column density, cm^-2"),
    "nh_class": ("", "i8", "0 unabsorbed (log N_H < 22), 1 Compton-thin (22-24), 2 Compton-thick (>= 24)"),
    "spec_draw": ("", "i8", "index of the spectral draw (0 .. D-1) of the run's spectral table"),
    "gamma": ("", "f8", "photon index of the primary continuum"),
    "refl": ("", "f8", "disk-reflection factor R (pexmon-like)"),
    "ecut": ("keV", "f8", "cutoff energy of the primary"),
    "theta_tor": ("deg", "f8", "torus half-opening angle"),
    "fscatt": ("", "f8", "scattered fraction"),
    "ra": ("deg", "f8", "right ascension (uniform in the area; unclustered)"),
    "dec": ("deg", "f8", "declination (uniform in the area; unclustered)"),
}

CHUNK_ROWS = 1 << 18  # sources generated and written per step
_Z_TABLE = np.logspace(-4, math.log10(20.0), 4097)  # d_L interpolation nodes
_SUB = 32  # sub-points per z segment for the bound on K
_K_MARGIN = 1.02  # safety factor on that bound (K varies by < 1 % between sub-points)


def band_column(band) -> str:
    """Column name of the flux in ``band`` (keV): e.g. (0.5, 2) -> ``flux_0p5_2``."""
    lo, hi = band
    return f"flux_{lo:g}_{hi:g}".replace(".", "p")


def _parse_band(text: str) -> tuple[float, float]:
    parts = text.replace(":", "-").split("-")
    try:
        lo, hi = (float(p) for p in parts)
    except ValueError:
        raise PopsynthError(f"band {text!r} is not LO-HI in keV", "write bands as e.g. 0.5-2 2-10") from None
    if not (0 < lo < hi and math.isfinite(hi)):
        raise PopsynthError(f"band {text!r} needs 0 < LO < HI keV", "write bands as e.g. 0.5-2 2-10")
    return lo, hi


# ----------------------------------------------------------------------------- the run's pieces
def mock_cube(r, sample: int | None = None):
    """The XLF cube a mock draws from: (phi [nz, nL, nN] numpy float64 in Mpc^-3 dex^-2, weights [15]
    or None, label).

    ``sample=None``: the run's best cube (``xlf_best.h5`` 'phi'); an integer K: the cube of row K
    of ``r.weight_samples()`` (posterior sample, or converged start in A19 mode)."""
    import h5py

    if sample is None:
        with h5py.File(r.xlf_path, "r") as f:
            phi = np.asarray(f["phi"][()], dtype=np.float64)
        w = r.attrs.get("weights")
        return phi, (None if w is None else np.asarray(w, dtype=np.float64).reshape(-1)), "best"
    w_all = r.weight_samples()
    if isinstance(sample, bool) or not isinstance(sample, (int, np.integer)) or not 0 <= int(sample) < len(w_all):
        raise PopsynthError(f"--sample {sample} is outside the run's {len(w_all)} weight samples ({r.uncertainty})",
                            f"pass 0 <= K < {len(w_all)}, or leave --sample out for the best cube")
    w = w_all[int(sample):int(sample) + 1]
    phi = r.cubes(w)[0].cpu().numpy().astype(np.float64)
    return phi, w[0].cpu().numpy().astype(np.float64), f"sample {int(sample)} of {len(w_all)} ({r.uncertainty})"


# ----------------------------------------------------------------------------- fluxes
class FluxCalculator:
    """Band fluxes of individual sources from a spectral table, at each source's own z.

    Holds, as numpy float64, the table's E^2 S_d,n(E) [D, nN, nE] (keV^2 photons s^-1 keV^-1 per
    erg/s) and its cumulative trapezoid in ln E, and a log-log table of d_L(z). Methods take 1-D
    arrays of draw indices d, N_H cell indices n and redshifts z of equal length.
    """

    def __init__(self, table, cosmology=None):
        from .cosmology import CosmologyParams, distance_tables
        from .spectra.primary import KEV_ERG

        cosmology = CosmologyParams() if cosmology is None else cosmology
        e = table.energy.detach().cpu().numpy().astype(np.float64)
        self.x = np.log(e)  # [nE]
        self.h = np.diff(self.x)
        f = e ** 2 * table.per_draw.detach().cpu().numpy().astype(np.float64)  # [D, nN, nE]
        self.n_draws, self.n_nh, self.n_e = f.shape
        cum = np.concatenate([np.zeros(f.shape[:2] + (1,)), np.cumsum(0.5 * self.h * (f[..., 1:] + f[..., :-1]), -1)], -1)
        self.f, self.cum = f, cum
        self._f_flat, self._cum_flat = f.reshape(-1), cum.reshape(-1)
        self.e_min, self.e_max = float(e[0]), float(e[-1])
        d_l = distance_tables(_Z_TABLE, cosmology)["d_l_cm"].cpu().numpy()
        self._lz, self._ldl = np.log(_Z_TABLE), np.log(d_l)
        self.kev_erg = KEV_ERG
        self.params = {k: v.detach().cpu().numpy().astype(np.float64) for k, v in table.params.items()}  # {name: [2, D]}

    def check_band(self, band, z_max: float) -> None:
        """PopsynthError if ``band`` (keV) at redshifts up to ``z_max`` leaves the table's energy range."""
        e1, e2 = band
        if e1 < self.e_min * (1 - 1e-9) or e2 * (1 + z_max) > self.e_max * (1 + 1e-9):
            raise PopsynthError(f"band {e1:g}-{e2:g} keV up to z = {z_max:g} needs rest-frame spectra over "
                                f"{e1:g}-{e2 * (1 + z_max):g} keV, beyond the spectral table's {self.e_min:g}-{self.e_max:g} keV",
                                "choose bands inside the table range or a lower --zmax")

    def d_l_cm(self, z) -> np.ndarray:
        """Luminosity distance (cm) at z (any shape, 1e-4 <= z <= 20), log-log interpolation."""
        return np.exp(np.interp(np.log(z), self._lz, self._ldl))

    def _primitive(self, flat_dn: np.ndarray, xq: np.ndarray) -> np.ndarray:
        """integral from x[0] to xq of the linear interpolant of E^2 S in ln E (per source)."""
        from ._tensor import bracket_np

        i0, _, s, width = bracket_np(self.x, np.clip(xq, self.x[0], self.x[-1]))  # width = h[i0]
        k = flat_dn * self.n_e + i0
        f0, f1 = self._f_flat[k], self._f_flat[k + 1]
        return self._cum_flat[k] + width * (s * f0 + 0.5 * s ** 2 * (f1 - f0))

    def k_factor(self, band, d: np.ndarray, n: np.ndarray, z: np.ndarray) -> np.ndarray:
        """K = S / L (cm^-2) in ``band`` (keV) for sources (draw d, N_H cell n, redshift z): [len(z)]."""
        e1, e2 = band
        flat = np.asarray(d, np.int64) * self.n_nh + np.asarray(n, np.int64)
        lz = np.log1p(z)
        band_int = self._primitive(flat, math.log(e2) + lz) - self._primitive(flat, math.log(e1) + lz)
        return band_int * self.kev_erg / (4 * math.pi * self.d_l_cm(z) ** 2)

    def k_grid(self, band, z: np.ndarray) -> np.ndarray:
        """K (cm^-2) for every draw and N_H cell at redshifts z [nq]: [D, nN, nq]."""
        d, n, zz = np.meshgrid(np.arange(self.n_draws), np.arange(self.n_nh), z, indexing="ij")
        return self.k_factor(band, d.ravel(), n.ravel(), zz.ravel()).reshape(d.shape)


# ----------------------------------------------------------------------------- sampling
@dataclass
class MockSpec:
    """What to draw: area (deg^2), z range, output bands (keV), selection (a Survey or None), seed,
    cap centre (ra, dec in deg), max_rows (refuse larger expected catalogues)."""

    area_deg2: float
    z_range: tuple[float, float]
    bands: tuple
    selection: object = None  # popsynth.survey.Survey
    seed: int = 0
    ra0: float = 0.0
    dec0: float = 0.0
    max_rows: int = 20_000_000

    def check(self) -> None:
        from .survey import FULL_SKY_DEG2

        a = self.area_deg2
        if not (isinstance(a, (int, float)) and math.isfinite(a) and 0 < a <= FULL_SKY_DEG2 * (1 + 1e-9)):
            raise PopsynthError(f"area {a!r} deg^2 must be > 0 and at most the whole sky ({FULL_SKY_DEG2:.2f})",
                                "pass --area DEG2, or --area all")
        zl, zh = self.z_range
        if not (math.isfinite(zl) and math.isfinite(zh) and 0 <= zl < zh):
            raise PopsynthError(f"redshift range ({zl}, {zh}) must satisfy 0 <= zmin < zmax", "pass --zmin < --zmax")
        if not self.bands:
            raise PopsynthError("no output band", "pass --bands, e.g. --bands 0.5-2 2-10")
        if isinstance(self.seed, bool) or not isinstance(self.seed, (int, np.integer)) or self.seed < 0:
            raise PopsynthError(f"seed {self.seed!r} must be an integer >= 0", "pass --seed N")
        if not (-90 <= self.dec0 <= 90 and math.isfinite(self.ra0)):
            raise PopsynthError(f"cap centre ({self.ra0}, {self.dec0}) is not a sky position", "pass --ra 0-360, --dec -90-90")
        if int(self.max_rows) < 1:
            raise PopsynthError(f"max_rows {self.max_rows} must be >= 1", "pass --max-rows N")


def _hat_halves(z: np.ndarray, i: int, lo: float, hi: float):
    """The two halves of node i's hat restricted to [lo, hi]: list of (z_a, z_b, rising, mass).

    Left half on [z_{i-1}, z_i] has density (z - z_{i-1}) / h (rising); right half on
    [z_i, z_{i+1}] has density (z_{i+1} - z) / h. mass = integral of the hat over the piece.
    """
    out = []
    if i > 0:
        h = z[i] - z[i - 1]
        a, b = max(lo, z[i - 1]), min(hi, z[i])
        if b > a:
            sa, sb = (a - z[i - 1]) / h, (b - z[i - 1]) / h
            out.append((a, b, True, 0.5 * h * (sb ** 2 - sa ** 2), z[i - 1], h))
    if i < z.size - 1:
        h = z[i + 1] - z[i]
        a, b = max(lo, z[i]), min(hi, z[i + 1])
        if b > a:
            sa, sb = (a - z[i]) / h, (b - z[i]) / h
            out.append((a, b, False, 0.5 * h * ((1 - sa) ** 2 - (1 - sb) ** 2), z[i], h))
    return out


def _draw_hat_raw(rng, halves, n: int) -> np.ndarray:
    """n redshifts from node i's hat restricted to the z range (inverse CDF in each half)."""
    if n == 0:
        return np.zeros(0)
    masses = np.array([p[3] for p in halves])
    which = rng.choice(len(halves), size=n, p=masses / masses.sum()) if len(halves) > 1 else np.zeros(n, int)
    u = rng.random(n)
    z = np.empty(n)
    for k, (a, b, rising, _, z0, h) in enumerate(halves):
        m = which == k
        sa, sb = (a - z0) / h, (b - z0) / h
        if rising:  # density ~ s on [sa, sb]
            s = np.sqrt(sa ** 2 + u[m] * (sb ** 2 - sa ** 2))
        else:  # density ~ (1 - s): t = 1 - s has density ~ t on [1 - sb, 1 - sa]
            ta, tb = 1 - sb, 1 - sa
            s = 1 - np.sqrt(ta ** 2 + u[m] * (tb ** 2 - ta ** 2))
        z[m] = np.clip(z0 + s * h, a, b)
    return z


def _draw_hat_z(rng, halves, n: int, dvdz=None, dvdz_max: float | None = None) -> np.ndarray:
    """n redshifts with density hat_i(z) dV/dz(z) on node i's support (the engine's model: phi
    linear in z between nodes, the volume element exact), by rejection from the hat with
    acceptance dV/dz(z) / dvdz_max; without ``dvdz``, from the hat alone."""
    if dvdz is None or n == 0:
        return _draw_hat_raw(rng, halves, n)
    out = np.empty(0)
    while out.size < n:
        m = n - out.size
        z = _draw_hat_raw(rng, halves, int(m * 1.1) + 8)
        keep = rng.random(z.size) * dvdz_max < dvdz(z)
        out = np.concatenate([out, z[keep]])
    return out[:n]


class _Sampler:
    """Node-by-node Poisson sampler of one cube (see the module docstring)."""

    def __init__(self, phi, grid, flux: FluxCalculator, spec: MockSpec, cosmology=None):
        from .cosmology import CosmologyParams
        from .observables import SR_PER_DEG2, z_range_weights

        spec.check()
        self.phi, self.grid, self.flux, self.spec = phi, grid, flux, spec
        self.z = np.asarray(grid.z, dtype=np.float64)
        self.wz = z_range_weights(self.z, spec.z_range)
        self.zlo, self.zhi = max(spec.z_range[0], self.z[0]), min(spec.z_range[1], self.z[-1])
        cosmo = (CosmologyParams() if cosmology is None else cosmology).astropy()
        self.dvdz = lambda zz: SR_PER_DEG2 * cosmo.differential_comoving_volume(zz).to_value("Mpc3 / sr")  # noqa: E731
        self.cell = np.outer(grid.dlogl, grid.dlognh)  # [nL, nN] dex^2
        # per node: W_i = int hat_i(z) dV/dz(z) dz over the z range (Mpc^3 deg^-2; Gauss-Legendre, 16
        # points per half) and the largest dV/dz on the node's support (the rejection envelope)
        x_gl, w_gl = np.polynomial.legendre.leggauss(16)
        self.node_vol = np.zeros(self.z.size)
        self.dvdz_max = np.zeros(self.z.size)
        for i in np.nonzero(self.wz > 0)[0]:
            for a, b, rising, _, z0, h in _hat_halves(self.z, i, self.zlo, self.zhi):
                zq = 0.5 * (b - a) * x_gl + 0.5 * (b + a)
                sq = (zq - z0) / h
                self.node_vol[i] += (0.5 * (b - a) * w_gl * (sq if rising else 1 - sq) * self.dvdz(zq)).sum()
                self.dvdz_max[i] = max(self.dvdz_max[i], 1.01 * self.dvdz(np.linspace(a, b, 65)).max())
        self.node_scale = spec.area_deg2 * self.node_vol  # [nz] Mpc^3
        self.edges_l = np.asarray(grid.logl_edges, dtype=np.float64)
        self.edges_n = np.asarray(grid.lognh_edges, dtype=np.float64)
        self.nodes = np.nonzero(self.wz > 0)[0]
        sel = spec.selection
        self.sel_band = None if sel is None else tuple(sel.band_keV)
        for b in tuple(spec.bands) + ((self.sel_band,) if sel is not None else ()):
            flux.check_band(b, self.zhi)
        self.obscured = (self.edges_n[:-1] >= 22.0 - 1e-9).astype(int)  # [nN] row of table.params

    def _lower_logl(self, i: int) -> np.ndarray | None:
        """log L below which no source of node i can pass the selection: [D, nN], or None."""
        sel = self.spec.selection
        if sel is None:
            return None
        zs = []
        for a, b, *_ in _hat_halves(self.z, i, self.zlo, self.zhi):
            zs.append(np.linspace(a, b, _SUB + 1))
        k = self.flux.k_grid(self.sel_band, np.unique(np.concatenate(zs)))  # [D, nN, nq]
        k_max = k.max(-1) * _K_MARGIN
        return math.log10(sel.min_flux) - np.log10(np.maximum(k_max, 1e-300))

    def node_means(self, i: int):
        """(mu [D, nL, nN] expected sources per cell and draw, lower log L bound [D, nN] or None)."""
        mu = (self.node_scale[i] / self.flux.n_draws) * self.phi[i] * self.cell  # [nL, nN]
        t = self._lower_logl(i)
        if t is None:
            return np.broadcast_to(mu, (self.flux.n_draws,) + mu.shape), None
        lo, hi = self.edges_l[:-1], self.edges_l[1:]
        share = np.clip((hi[None, :, None] - t[:, None, :]) / (hi - lo)[None, :, None], 0.0, 1.0)  # [D, nL, nN]
        return mu[None] * share, t

    def expected_total(self) -> float:
        """Expected number of sources drawn before the exact selection (an upper bound on the rows)."""
        return float(sum(self.node_means(i)[0].sum() for i in self.nodes))

    def chunks(self):
        """Yield dicts of column arrays (MOCK_COLUMNS + band fluxes), at most ~CHUNK_ROWS rows each."""
        spec = self.spec
        nl, nn = self.phi.shape[1:]
        for i in self.nodes:
            rng = np.random.default_rng([int(spec.seed), int(i)])
            mu, t = self.node_means(i)
            counts = rng.poisson(mu.reshape(-1))
            cells = np.nonzero(counts)[0]
            if cells.size == 0:
                continue
            halves = _hat_halves(self.z, i, self.zlo, self.zhi)
            csum = np.cumsum(counts[cells])
            start = 0
            while start < cells.size:  # pieces of about CHUNK_ROWS sources
                base = csum[start - 1] if start else 0
                stop = int(np.searchsorted(csum, base + CHUNK_ROWS, side="right"))
                stop = min(max(stop, start + 1), cells.size)
                piece = cells[start:stop]
                out = self._sources(rng, piece, counts[piece], halves, t, i)
                if out is not None:
                    yield out
                start = stop

    def _sources(self, rng, cells, counts, halves, t, i):
        spec, fl = self.spec, self.flux
        nl, nn = self.phi.shape[1:]
        idx = np.repeat(cells, counts)
        d, rest = np.divmod(idx, nl * nn)
        l, n = np.divmod(rest, nn)
        m = idx.size
        lo = self.edges_l[l]
        if t is not None:
            lo = np.maximum(lo, t[d, n])
        logl = lo + rng.random(m) * (self.edges_l[l + 1] - lo)
        lognh = self.edges_n[n] + rng.random(m) * (self.edges_n[n + 1] - self.edges_n[n])
        z = _draw_hat_z(rng, halves, m, self.dvdz, self.dvdz_max[i])
        keep = np.ones(m, bool)
        if spec.selection is not None:
            k = fl.k_factor(self.sel_band, d, n, z)
            if np.any(np.log10(k) > math.log10(spec.selection.min_flux) - t[d, n] + 1e-9):
                raise RuntimeError(f"mock sampler: K bound violated at node {i} (z = {self.z[i]:g}); report this")
            s_sel = 10.0 ** logl * k
            p = spec.selection.completeness(s_sel)
            keep = rng.random(m) < p
        u_ra, u_dec = rng.random(m), rng.random(m)
        if not keep.any():
            return None
        d, n, z, logl, lognh = d[keep], n[keep], z[keep], logl[keep], lognh[keep]
        cls = self.obscured[n]
        out = {"z": z, "log_lx": logl, "log_nh": lognh,
               "nh_class": np.searchsorted(np.array([22.0, 24.0]), lognh, side="right").astype(np.int64),
               "spec_draw": d.astype(np.int64)}
        for name, col in (("gamma", "gamma"), ("refl", "refl"), ("ecut", "ecut"), ("theta_tor", "theta_tor"),
                          ("fscatt", "fscatt")):
            out[col] = fl.params[name][cls, d]
        out["ra"], out["dec"] = _cap_positions(u_ra[keep], u_dec[keep], spec.area_deg2, spec.ra0, spec.dec0)
        lum = 10.0 ** logl
        for b in spec.bands:
            out[band_column(b)] = lum * fl.k_factor(b, d, n, z)
        return out


def _cap_positions(u1, u2, area_deg2, ra0, dec0):
    """Uniform positions (ra, dec in deg) in a spherical cap of ``area_deg2`` centred on (ra0, dec0)."""
    omega = area_deg2 * (math.pi / 180.0) ** 2
    cos_max = max(1.0 - omega / (2 * math.pi), -1.0)
    ct = 1.0 - u1 * (1.0 - cos_max)  # cos of the angle from the centre
    st = np.sqrt(np.clip(1 - ct ** 2, 0, None))
    ph = 2 * math.pi * u2
    # point around the pole, then rotate the pole to (ra0, dec0)
    x, y, zc = st * np.cos(ph), st * np.sin(ph), ct
    a, dlt = math.radians(ra0), math.radians(dec0)
    # rotation: pole -> (a, dlt): first about y by (90 - dec0), then about z by ra0
    th = math.pi / 2 - dlt
    x1 = x * math.cos(th) + zc * math.sin(th)
    z1 = -x * math.sin(th) + zc * math.cos(th)
    x2 = x1 * math.cos(a) - y * math.sin(a)
    y2 = x1 * math.sin(a) + y * math.cos(a)
    ra = np.degrees(np.arctan2(y2, x2)) % 360.0
    dec = np.degrees(np.arcsin(np.clip(z1, -1, 1)))
    return ra, dec


def expected_numbers(phi, grid, table, spec: MockSpec, fluxes=(), flux_band=None, z_bins=(), nh_threshold=1e24,
                     n_gl: int = 8, cosmology=None) -> dict:
    """The mock's own expectation values, by quadrature of the model it samples (not by sampling).

    Integrates, over each node's hat (``n_gl`` Gauss-Legendre points per half, clipped to the z
    range and to each z bin), the expected sources of every (log L, log N_H) cell and draw with the
    flux evaluated at the quadrature z exactly as the sampler does. Returns a dict of float64 numpy:
      ``n_total``: selected sources (the mock's expected row count);
      ``n_ct``: selected sources with log N_H >= log10(nh_threshold);
      ``n_above`` [nS]: selected sources with flux > each of ``fluxes`` (erg cm^-2 s^-1) in
        ``flux_band`` (keV; default the selection band);
      ``n_zbin`` [nb]: selected sources in each z bin ``z_bins`` [(z_a, z_b), ...].
    The difference from :class:`popsynth.observables.SurveyModel` (flux factor at the z nodes)
    is the latter's z quadrature error. Sharp flux limits and area curves are both handled
    (selected share of a log L cell = [G(hi + log K) - G(lo + log K)] / dlogL, G the
    antiderivative of the completeness in log S).
    """
    import torch

    from .observables import _selection_antiderivative

    phi = np.asarray(phi, dtype=np.float64)
    fl = FluxCalculator(table, cosmology)
    smp = _Sampler(phi, grid, fl, spec, cosmology)
    sel = spec.selection
    fband = tuple(flux_band) if flux_band is not None else (smp.sel_band or spec.bands[0])
    if sel is not None and fband != smp.sel_band and np.size(fluxes):
        raise PopsynthError(f"N(>S) in {fband} keV under a selection in {smp.sel_band} keV is not computed here",
                            "give fluxes in the selection band")
    fl.check_band(fband, smp.zhi)
    fluxes = np.atleast_1d(np.asarray(fluxes, dtype=np.float64))
    edges = smp.edges_l
    dl = np.diff(edges)
    x_gl, w_gl = np.polynomial.legendre.leggauss(n_gl)
    ct_share = np.clip((smp.edges_n[1:] - math.log10(nh_threshold)) / np.diff(smp.edges_n), 0.0, 1.0)  # [nN]

    def sel_share(logk):  # logk [D, nN] -> selected share of each cell [D, nL, nN]
        if sel is None:
            return np.ones((logk.shape[0], dl.size, logk.shape[1]))
        u = torch.as_tensor(edges[None, :, None] + logk[:, None, :])
        g = _selection_antiderivative(sel, u).numpy()
        return (g[:, 1:] - g[:, :-1]) / dl[None, :, None]

    def above_share(logk, s):  # share of each cell with L K > s that passes the selection [D, nL, nN]
        t = math.log10(s) - logk  # [D, nN]
        if sel is None:
            return np.clip((edges[1:][None, :, None] - t[:, None, :]) / dl[None, :, None], 0.0, 1.0)
        lo = np.maximum(edges[:-1][None, :, None], t[:, None, :])
        hi = np.maximum(edges[1:][None, :, None], lo)
        g = [_selection_antiderivative(sel, torch.as_tensor(v + logk[:, None, :])).numpy() for v in (lo, hi)]
        return (g[1] - g[0]) / dl[None, :, None]

    bins = [(max(a, smp.zlo), min(b, smp.zhi)) for a, b in z_bins]
    out = {"n_total": 0.0, "n_ct": 0.0, "n_above": np.zeros(fluxes.size), "n_zbin": np.zeros(len(bins))}
    for i in smp.nodes:
        cell_n = spec.area_deg2 * phi[i] * smp.cell / fl.n_draws  # [nL, nN] per unit volume (Mpc^3 deg^-2)
        pieces = [(a, b, rising, z0, h) for a, b, rising, _, z0, h in _hat_halves(smp.z, i, smp.zlo, smp.zhi)]
        ranges = [(None, smp.zlo, smp.zhi)] + [(k, a, b) for k, (a, b) in enumerate(bins)]
        for which, ra, rb in ranges:
            for a, b, rising, z0, h in pieces:
                lo, hi = max(a, ra), min(b, rb)
                if not hi > lo:
                    continue
                zq = 0.5 * (hi - lo) * x_gl + 0.5 * (hi + lo)
                sq = (zq - z0) / h
                wq = 0.5 * (hi - lo) * w_gl * (sq if rising else 1 - sq) * smp.dvdz(zq)  # hat x dV/dz x dz
                for zz, ww in zip(zq, wq):
                    ks = fl.k_grid(smp.sel_band or fband, np.array([zz]))[..., 0]  # [D, nN]
                    share = sel_share(np.log10(ks))  # [D, nL, nN]
                    dens = ww * cell_n[None] * share
                    if which is None:
                        out["n_total"] += dens.sum()
                        out["n_ct"] += (dens.sum((0, 1)) * ct_share).sum()
                        if fluxes.size:
                            kf = ks if fband == smp.sel_band else fl.k_grid(fband, np.array([zz]))[..., 0]
                            for j, s in enumerate(fluxes):
                                out["n_above"][j] += (ww * cell_n[None] * above_share(np.log10(kf), s)).sum()
                    else:
                        out["n_zbin"][which] += dens.sum()
    return out


def draw_mock(phi, grid, table, spec: MockSpec, cosmology=None):
    """Generator of source chunks (dicts of column arrays: :data:`MOCK_COLUMNS` then one
    ``flux_<lo>_<hi>`` column per band in erg cm^-2 s^-1) for the cube phi [nz, nL, nN]
    (Mpc^-3 dex^-2) on ``grid`` with ``table`` (a SpectralTable on the grid's N_H cells).

    Same ``spec.seed`` -> same catalogue (each z node has its own seeded stream). Raises
    PopsynthError when the expected number of rows exceeds ``spec.max_rows``."""
    phi = np.asarray(phi, dtype=np.float64)
    if phi.shape != grid.shape:
        raise PopsynthError(f"cube has shape {phi.shape}, the grid {grid.shape}", "pass the run's cube")
    sampler = _Sampler(phi, grid, FluxCalculator(table, cosmology), spec, cosmology)
    n_exp = sampler.expected_total()
    if n_exp > spec.max_rows:
        raise PopsynthError(f"the mock would draw about {n_exp:.3g} sources, more than --max-rows {spec.max_rows}",
                            "add or raise a flux limit, shrink --area or the z range, or raise --max-rows")
    return sampler.chunks()


# ----------------------------------------------------------------------------- writing
def _column_list(bands):
    cols = [(k, *v) for k, v in MOCK_COLUMNS.items()]
    for b in bands:
        cols.append((band_column(b), "erg / (cm2 s)", "f8", f"observed-frame energy flux in {b[0]:g}-{b[1]:g} keV"))
    return cols


class _FitsWriter:
    """Binary-table FITS written row chunk by row chunk (header rewritten with NAXIS2 at the end)."""

    _FORMAT = {"f8": "D", "i8": "K"}

    def __init__(self, path: Path, cols, meta: dict):
        from astropy.io import fits

        self.path, self.cols = path, cols
        # FITS has no 'dex' unit: the log columns go without TUNIT; their TCOMM states the unit
        fcols = [fits.Column(name=n, format=self._FORMAT[dt], unit=(None if (not u or u.startswith("dex")) else u))
                 for n, u, dt, _ in cols]
        hdu = fits.BinTableHDU.from_columns(fcols, nrows=0)
        hdr = hdu.header
        hdr["EXTNAME"] = "MOCK"
        for n, (name, _, _, desc) in enumerate(cols, 1):
            hdr[f"TCOMM{n}"] = desc[:68]
        for key, value in meta.items():
            if isinstance(value, (dict, list, tuple)) or value is None:
                value = json.dumps(value)
            hdr[f"HIERARCH {key}" if len(key) > 8 else key] = value
        self.hdr = hdr
        self.dtype = np.dtype([(n, ">" + dt) for n, _, dt, _ in cols])
        self.fh = open(path, "wb")
        self.fh.write(fits.PrimaryHDU().header.tostring().encode("ascii"))
        self.hdr_at = self.fh.tell()
        self.hdr_bytes = hdr.tostring().encode("ascii")
        self.fh.write(self.hdr_bytes)
        self.rows = 0

    def write(self, chunk: dict) -> None:
        m = len(chunk["z"])
        arr = np.empty(m, dtype=self.dtype)
        for n, *_ in self.cols:
            arr[n] = chunk[n]
        self.fh.write(arr.tobytes())
        self.rows += m

    def close(self) -> None:
        nbytes = self.rows * self.dtype.itemsize
        self.fh.write(b"\0" * ((-nbytes) % 2880))
        self.hdr["NAXIS2"] = self.rows
        new = self.hdr.tostring().encode("ascii")
        if len(new) != len(self.hdr_bytes):
            raise RuntimeError("FITS header changed length while writing")
        self.fh.seek(self.hdr_at)
        self.fh.write(new)
        self.fh.close()


class _EcsvWriter:
    """ECSV text table: astropy writes the header (columns, units, meta), rows are appended."""

    def __init__(self, path: Path, cols, meta: dict):
        import io

        from astropy.table import Table

        t = Table(meta=dict(meta))
        for n, u, dt, desc in cols:
            t[n] = np.zeros(0, dtype=dt)
            t[n].unit = u or None
            t[n].description = desc
        buf = io.StringIO()
        t.write(buf, format="ascii.ecsv")
        self.cols = cols
        self.fmt = ["%d" if dt == "i8" else "%.10g" for _, _, dt, _ in cols]
        self.fh = open(path, "w")
        self.fh.write(buf.getvalue())
        self.rows = 0

    def write(self, chunk: dict) -> None:
        arr = np.column_stack([np.asarray(chunk[n], dtype=np.float64) for n, *_ in self.cols])
        np.savetxt(self.fh, arr, fmt=self.fmt, delimiter=" ")
        self.rows += arr.shape[0]

    def close(self) -> None:
        self.fh.close()


def write_mock(chunks, path, bands, meta: dict) -> int:
    """Stream source chunks to ``path`` (.fits/.fit or .ecsv) with the header ``meta``; returns the row count.

    The file is written to ``path + '.part'`` and renamed when complete."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in (".fits", ".fit", ".ecsv"):
        raise PopsynthError(f"output {path} must end in .fits or .ecsv", "pass --out catalogue.fits or catalogue.ecsv")
    if not path.parent.exists():
        raise PopsynthError(f"output folder {path.parent} does not exist", "create it or pass another --out")
    part = path.with_name(path.name + ".part")
    cols = _column_list(bands)
    try:
        w = (_EcsvWriter if suffix == ".ecsv" else _FitsWriter)(part, cols, meta)
    except OSError as err:
        raise PopsynthError(f"cannot write {path} ({err.strerror})", "pass a writable --out") from None
    try:
        for chunk in chunks:
            w.write(chunk)
    except BaseException:
        w.fh.close()
        part.unlink(missing_ok=True)
        raise
    w.close()
    part.replace(path)
    return w.rows


def read_mock(path):
    """A written mock catalogue as an astropy Table (FITS or ECSV), header in ``table.meta``.

    ECSV files are read by :func:`popsynth.io.ecsv.read_ecsv` (a missing or damaged file is a
    one-line PopsynthError)."""
    p = Path(path)
    if p.suffix.lower() == ".ecsv":
        from .io.ecsv import read_ecsv

        return read_ecsv(p, label="mock catalogue", fix="write it again with popsynth mock").table
    from astropy.table import Table

    return Table.read(p, hdu=1)


# ----------------------------------------------------------------------------- top level
def make_mock(run_path, out, area_deg2, z_range=None, bands=DEFAULT_BANDS, survey=None, flux_limit=None,
              limit_band=(0.5, 2.0), seed=0, sample=None, ra0=0.0, dec0=0.0, max_rows=20_000_000, log=print) -> dict:
    """Draw and write a mock catalogue from a run; returns the provenance dict written in the header.

    Args:
      run_path: run folder or its xlf_best.h5 (or a loaded RunOutputs); out: .fits or .ecsv path.
      area_deg2: sky area (deg^2), "all" for the whole sky, or None for the survey's largest area.
      z_range: (zmin, zmax) or None (the survey's z range, else the whole grid 0.002-5).
      bands: output bands [(lo, hi) keV]; survey: a registry / shipped survey name or a Survey;
      flux_limit (erg cm^-2 s^-1) in limit_band (keV): a single-limit selection instead of a survey.
      seed: integer >= 0; sample: None (best cube) or K (row of weight_samples()).
    """
    import time

    from . import __version__
    from .results import load_run
    from .survey import FULL_SKY_DEG2, Survey

    t0 = time.time()
    if survey is not None and flux_limit is not None:
        raise PopsynthError("both --survey and --flux-limit given", "pass one selection")
    sel = None
    if survey is not None:
        if isinstance(survey, Survey):
            sel = survey
        else:
            from .forecast import resolve_survey

            sel = resolve_survey(survey)
    elif flux_limit is not None:
        try:
            fl = float(flux_limit)
        except (TypeError, ValueError):
            raise PopsynthError(f"--flux-limit {flux_limit!r} is not a number", "pass it in erg cm^-2 s^-1") from None
        sel = Survey(name="flux_limit", band_keV=tuple(limit_band), flux_limit=fl)
    if isinstance(area_deg2, str):
        if area_deg2.lower() not in ("all", "sky", "all-sky"):
            try:
                area_deg2 = float(area_deg2)
            except ValueError:
                raise PopsynthError(f"--area {area_deg2!r} is not a number", "pass deg^2 or 'all'") from None
        else:
            area_deg2 = FULL_SKY_DEG2
    if area_deg2 is None:
        if sel is None or sel.max_area is None:
            raise PopsynthError("no sky area", "pass --area DEG2 (or 'all'), or a --survey that has an area")
        area_deg2 = sel.max_area
    bands = tuple(tuple(float(x) for x in b) for b in bands)
    if sel is not None and tuple(sel.band_keV) not in bands:
        bands = bands + (tuple(sel.band_keV),)
    if Path(out).suffix.lower() not in (".fits", ".fit", ".ecsv"):
        raise PopsynthError(f"output {out} must end in .fits or .ecsv", "pass --out catalogue.fits or catalogue.ecsv")
    if z_range is not None:
        z_range = (float(z_range[0]), float(z_range[1]))
    MockSpec(area_deg2=float(area_deg2), z_range=z_range or (0.0, 1.0), bands=bands, seed=seed, ra0=float(ra0),
             dec0=float(dec0), max_rows=int(max_rows)).check()  # bad arguments fail before the run is loaded
    r = run_path if hasattr(run_path, "problem") else load_run(run_path)
    prob = r.problem()
    grid = prob.grid
    if z_range is None:
        z_range = sel.z_range if (sel is not None and sel.z_range is not None) else (0.0, float(grid.z[-1]))
    z_range = (float(z_range[0]), float(z_range[1]))
    spec = MockSpec(area_deg2=float(area_deg2), z_range=z_range, bands=bands, selection=sel, seed=seed,
                    ra0=float(ra0), dec0=float(dec0), max_rows=int(max_rows))
    spec.check()
    phi, w, label = mock_cube(r, sample)
    table = r.spectral_table()
    meta = {
        "ORIGIN": f"popsynth {__version__}", "POPSYNV": __version__, "RUNDIR": str(r.folder.resolve()),
        "RUNMODE": r.mode, "SPECSET": r.spec_set, "SPDRAWS": int(table.n_draws), "SPSEED": int(r.config.spectra_seed),
        "SPMODEL": str(r.config.spectral_model), "CUBE": label, "WEIGHTS": None if w is None else [float(x) for x in w],
        "SEED": int(seed), "AREA": float(area_deg2), "ZMIN": z_range[0], "ZMAX": z_range[1],
        "RA0": float(ra0), "DEC0": float(dec0), "SELECT": "none" if sel is None else sel.name,
        "SELBAND": None if sel is None else list(sel.band_keV),
        "FLUXLIM": None if sel is None or sel.has_area_curve else sel.flux_limit,
        "AREACURV": bool(sel is not None and sel.has_area_curve),
        "COSMO": r.attrs.get("cosmology"), "NHCT": 1e24,
        "MODEL": "Poisson realisation of the run's XLF; z from the engine's piecewise-linear z quadrature, "
                 "log L and log N_H uniform in their cells, flux at the source's z with its cell's spectrum "
                 "(popsynth.mock docstring)",
    }
    if sel is not None:
        from .observables import build_survey_model
        import torch

        sv = sel if sel.z_range == z_range else _with_z(sel, z_range)
        m = build_survey_model(sv, grid, prob.phi0, table)
        phi_t = torch.as_tensor(phi)[None]
        meta["NEXPECT"] = float((m.dndz_cube(phi_t)[0] * m.z_weights).sum()) * float(area_deg2)
    chunks = draw_mock(phi, grid, table, spec)
    n = write_mock(chunks, out, bands, meta)
    log(f"wrote {out}: {n} sources ({label} cube, seed {seed}, {area_deg2:.4g} deg^2, z {z_range[0]:g}-{z_range[1]:g}"
        + ("" if sel is None else f", expected {meta['NEXPECT']:.1f}") + f") in {time.time() - t0:.1f} s")
    meta["NROWS"] = n
    return meta


def _with_z(sel, z_range):
    from dataclasses import replace

    return replace(sel, z_range=tuple(z_range))


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="popsynth mock",
        description="Draw a Poisson mock AGN catalogue (z, log L, log N_H, spectral parameters, band fluxes) "
                    "from a run's XLF, apply a survey selection, write FITS or ECSV with provenance.",
        epilog="Example: popsynth mock checkpoints/spec-set-5 --area all --flux-limit 1e-14 --limit-band 0.5 2 "
               "--seed 1 --out erass_like.fits   (docs/products_mock.md)")
    p.add_argument("run", help="run folder written by train.py, or its xlf_best.h5")
    p.add_argument("--area", default=None, help="sky area in deg^2, or 'all' (default: the survey's largest area)")
    p.add_argument("--zmin", type=float, default=None, help="lowest redshift (default: survey's range, else 0)")
    p.add_argument("--zmax", type=float, default=None, help="highest redshift (default: survey's range, else 5)")
    p.add_argument("--bands", nargs="+", default=None, metavar="LO-HI",
                   help="output bands in keV (default 0.5-2 2-10 2-8 8-24 14-195)")
    p.add_argument("--survey", default=None, help="select as this survey (popsynth forecast --list shows the names)")
    p.add_argument("--flux-limit", type=float, default=None, help="single flux limit, erg cm^-2 s^-1")
    p.add_argument("--limit-band", type=float, nargs=2, default=(0.5, 2.0), metavar=("LO", "HI"),
                   help="band of --flux-limit in keV (default 0.5 2)")
    p.add_argument("--seed", type=int, default=0, help="random seed (same seed, same catalogue)")
    p.add_argument("--sample", type=int, default=None,
                   help="use the cube of weight sample K (posterior sample / converged start) instead of the best")
    p.add_argument("--ra", type=float, default=0.0, help="centre of the area, deg (default 0)")
    p.add_argument("--dec", type=float, default=0.0, help="centre of the area, deg (default 0)")
    p.add_argument("--max-rows", type=int, default=20_000_000, help="refuse catalogues expected to be larger")
    p.add_argument("--out", default=None, help="output .fits or .ecsv (default RUN/mock_seed<N>.fits)")
    return p


def main(argv=None) -> int:
    """Command line entry; returns 0, or 2 after a one-line error."""
    args = build_parser().parse_args(argv)
    try:
        bands = DEFAULT_BANDS if args.bands is None else tuple(_parse_band(b) for b in args.bands)
        if (args.zmin is None) != (args.zmax is None):
            raise PopsynthError("--zmin and --zmax go together", "pass both, or neither for the default range")
        z_range = None if args.zmin is None else (args.zmin, args.zmax)
        run_dir = Path(args.run)
        out = args.out or str((run_dir if run_dir.is_dir() else run_dir.parent) / f"mock_seed{args.seed}.fits")
        make_mock(args.run, out, args.area, z_range, bands, args.survey, args.flux_limit, tuple(args.limit_band),
                  args.seed, args.sample, args.ra, args.dec, args.max_rows)
    except PopsynthError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
