"""Non-AGN (galaxy, X-ray binary) contribution to the CXB.

Two models, registered in :data:`GALAXY_MODELS` (``run.py`` calls ``GALAXY_MODELS[name](energy_keV)``
and gets E^2 dN/dE in keV^2 cm^-2 s^-1 keV^-1 sr^-1, same shape and device as the energies):

``"a19"`` -- :func:`galaxy_cxb_a19`, the fixed shape of A19 section 6. The Aird et al. 2015
galaxy XLF with a Gamma = 1.9 +/- 0.2 power law gives "a constant (with respect to energy)
contribution of ~1.7 keV^2 cm^-2 s^-1 keV^-1 sr^-1 to the CXB at E < 100 keV"; A19 then apply an
exponential cutoff drawn uniformly in 20-30 keV. The A15 galaxy XLF parameters are not at hand,
so the model carries that result directly: the mean over Gamma ~ N(1.9, 0.2) and E_c ~ U(20, 30)
keV of

    I_gal(E) = norm * (E / 1 keV)^(2 - Gamma) * exp(-E / E_c)

with norm = 1.7 keV^2 cm^-2 s^-1 keV^-1 sr^-1 (so the power law alone is 1.7 at 1 keV and within
+/-25 % of it over 0.3-10 keV). The averages are done with fixed quadrature (no sampling noise).

``"sfr"`` -- :func:`galaxy_cxb_sfr`, X-ray binaries integrated over cosmic history: the
Madau & Dickinson 2014 (ARA&A 52, 415; "MD14") star-formation and stellar-mass densities times
the Lehmer et al. 2016 (ApJ 825, 7; "L16") 2-10 keV scaling relation
L_X = alpha0 (1+z)^gamma M_* + beta0 (1+z)^delta SFR, with a Gamma = 1.9 power law and the same
20-30 keV cutoff average as A19. The same ingredients (cosmic SFR history, L_X-SFR and
L_X-M_* relations for HMXBs and LMXBs) are those discussed by Vito et al. 2016 section 4.1.
Numbers, sources and limits: ``data/galaxies/README.md``.

``"none"`` -- zero.

Every model raises :class:`~popsynth.errors.PopsynthError` for energies that are not finite and > 0.
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
import torch
from astropy import units as u

from ._tensor import DTYPE, as_tensor
from .constants import C_KM_S, KEV_ERG, MPC_CM
from .cosmology import CosmologyParams
from .errors import PopsynthError

A19_GALAXY_NORM = 1.7  # keV^2 cm^-2 s^-1 keV^-1 sr^-1 at 1 keV (A19 section 6)

# --- Madau & Dickinson 2014 (Salpeter 0.1-100 Msun IMF; h = 0.7, Omega_m = 0.3, Omega_L = 0.7) ---
# eq. 15: psi(z) = a (1+z)^b / (1 + ((1+z)/c)^d)  Msun yr^-1 Mpc^-3 (comoving)
MD14_PSI_A = 0.015   # Msun yr^-1 Mpc^-3
MD14_PSI_B = 2.7
MD14_PSI_C = 2.9
MD14_PSI_D = 5.6
MD14_RETURN_FRACTION = 0.27  # R, instantaneous-recycling return fraction for the Salpeter IMF (MD14 section 5)
# Salpeter -> Kroupa (2001) conversion of SFRs and stellar masses: multiply by 0.67 (MD14; 0.63 is the
# Chabrier factor). L16's scaling relation is calibrated with Kroupa-IMF SFRs and masses (see README).
SALPETER_TO_KROUPA = 0.67

# --- Lehmer et al. 2016, eq. 3, 2-10 keV best fit (their Table 4, 2-10 keV row; quoted from memory, see README) ---
L16_LOG_ALPHA0 = 29.37  # log10 erg s^-1 Msun^-1 (LMXBs, per unit stellar mass), +/- 0.15
L16_GAMMA = 2.03        # (1+z) exponent of the M_* term, +/- 0.60
L16_LOG_BETA0 = 39.28   # log10 erg s^-1 (Msun yr^-1)^-1 (HMXBs, per unit SFR), +/- 0.03
L16_DELTA = 1.31        # (1+z) exponent of the SFR term, +/- 0.13

Z_FORM = 20.0                   # upper limit of the rho_* integral; MD14 eq. 15 is fit to z ~ 8, z > 20 adds 6e-5
Z_MAX = 6.0                     # default upper limit of the CXB redshift integral


def _check_energy(energy_keV) -> torch.Tensor:
    e = as_tensor(energy_keV, device=energy_keV.device if isinstance(energy_keV, torch.Tensor) else None)
    if e.numel() and not bool(torch.all(torch.isfinite(e) & (e > 0))):
        raise PopsynthError("galaxy CXB energies must be finite and > 0 keV", "check the energy grid (keV)")
    return e


def _check_z(z) -> tuple[np.ndarray, torch.device | None]:
    dev = z.device if isinstance(z, torch.Tensor) else None
    zz = z.detach().cpu().numpy() if isinstance(z, torch.Tensor) else np.asarray(z)
    zz = np.asarray(zz, dtype=np.float64)
    if not np.all(np.isfinite(zz)) or np.any(zz < 0):
        raise PopsynthError("redshifts must be finite and >= 0", "check the redshift values")
    return zz, dev


def _efunc(z: np.ndarray, cosmology: CosmologyParams) -> np.ndarray:
    """E(z) = H(z)/H0 of the project's flat LambdaCDM (astropy, no radiation)."""
    return np.asarray(cosmology.astropy().efunc(z), dtype=np.float64)


def _hubble_time_yr(cosmology: CosmologyParams) -> float:
    """1/H0 in (Julian) years, by astropy (bit for bit Mpc / km / H0 / yr for H0 = 70; within 1 ulp otherwise)."""
    return float((1.0 / cosmology.astropy().H0).to_value(u.yr))


def _psi_np(z: np.ndarray) -> np.ndarray:
    zp = 1.0 + z
    return MD14_PSI_A * zp ** MD14_PSI_B / (1.0 + (zp / MD14_PSI_C) ** MD14_PSI_D)


def _rho_star_np(z: np.ndarray, cosmology: CosmologyParams, z_form: float, n_nodes: int) -> np.ndarray:
    """(1-R) int_z^z_form psi / ((1+z') H(z')) dz', Gauss-Legendre in x = ln(1+z'); Salpeter Msun Mpc^-3."""
    x, w = np.polynomial.legendre.leggauss(n_nodes)
    a = np.log1p(z)[:, None]
    b = math.log1p(z_form)
    xs = 0.5 * (b - a) * x[None, :] + 0.5 * (b + a)  # [nz, n]
    zs = np.expm1(xs)
    # dz' / (1+z') = dx, so the integrand in x is psi(z') / E(z') (times 1/H0)
    f = _psi_np(zs) / _efunc(zs.ravel(), cosmology).reshape(zs.shape)
    integral = 0.5 * (b - a[:, 0]) * (f * w[None, :]).sum(-1)
    integral = np.where(z >= z_form, 0.0, integral)
    return (1.0 - MD14_RETURN_FRACTION) * _hubble_time_yr(cosmology) * integral


def md14_sfr_density(z) -> torch.Tensor:
    """Cosmic star-formation-rate density psi(z) of MD14 eq. 15, Msun yr^-1 Mpc^-3 (comoving), Salpeter IMF.

    psi(z) = 0.015 (1+z)^2.7 / (1 + ((1+z)/2.9)^5.6). ``z``: array-like or tensor, any shape, finite and
    >= 0. Returns a float64 tensor of the same shape (device of ``z`` if a tensor, else CPU).
    """
    zz, dev = _check_z(z)
    return torch.as_tensor(_psi_np(zz), dtype=DTYPE, device=dev)


def md14_stellar_mass_density(z, cosmology: CosmologyParams = CosmologyParams(), z_form: float = Z_FORM,
                              n_nodes: int = 64) -> torch.Tensor:
    """Comoving stellar-mass density rho_*(z) in Msun Mpc^-3 (Salpeter IMF), from MD14's own recipe.

    MD14 section 5 (their eq. 2 with the instantaneous-recycling approximation):
        rho_*(z) = (1 - R) int_z^z_form psi(z') dz' / ((1+z') H(z')),   R = 0.27,
    with psi of MD14 eq. 15 (:func:`md14_sfr_density`), H(z) of ``cosmology`` (default H0 = 70 km/s/Mpc,
    Omega_m = 0.3 flat, as MD14 and A19) and z_form = 20 (the psi fit is only constrained to z ~ 8; the part
    above 20 is < 1e-4 of rho_*(0)). Fixed ``n_nodes``-point Gauss-Legendre quadrature in ln(1+z'), float64.
    rho_*(0) = 5.76e8 Msun Mpc^-3. ``z``: any shape, finite, >= 0; returns a float64 tensor of that shape.
    """
    zz, dev = _check_z(z)
    out = _rho_star_np(zz.ravel(), cosmology, float(z_form), int(n_nodes)).reshape(zz.shape)
    return torch.as_tensor(out, dtype=DTYPE, device=dev)


def _emissivity_np(z: np.ndarray, imf_factor: float, cosmology: CosmologyParams, n_rho: int) -> np.ndarray:
    lmxb = 10.0 ** L16_LOG_ALPHA0 * (1.0 + z) ** L16_GAMMA * imf_factor * _rho_star_np(z, cosmology, Z_FORM, n_rho)
    hmxb = 10.0 ** L16_LOG_BETA0 * (1.0 + z) ** L16_DELTA * imf_factor * _psi_np(z)
    return lmxb + hmxb


def xrb_emissivity_2_10keV(z, imf_factor: float = SALPETER_TO_KROUPA, cosmology: CosmologyParams = CosmologyParams(),
                           n_nodes: int = 64) -> torch.Tensor:
    """Comoving rest-frame 2-10 keV X-ray-binary emissivity eps_X(z) in erg s^-1 Mpc^-3.

    eps_X(z) = alpha0 (1+z)^gamma rho_*(z) f_IMF + beta0 (1+z)^delta psi(z) f_IMF  (L16 eq. 3 applied to the
    cosmic densities; it is linear in M_* and SFR, so it sums over galaxies), with L16's 2-10 keV values
    log alpha0 = 29.37 (erg s^-1 Msun^-1), gamma = 2.03, log beta0 = 39.28 (erg s^-1 per Msun yr^-1),
    delta = 1.31, and f_IMF = 0.67 converting MD14's Salpeter densities to the Kroupa IMF of L16.
    At z = 0: 9.05e37 (LMXB) + 1.91e37 (HMXB) = 1.096e38 erg s^-1 Mpc^-3.
    ``z``: any shape, finite, >= 0; returns a float64 tensor of that shape.
    """
    zz, dev = _check_z(z)
    out = _emissivity_np(zz.ravel(), float(imf_factor), cosmology, int(n_nodes)).reshape(zz.shape)
    return torch.as_tensor(out, dtype=DTYPE, device=dev)


def _z_nodes(z_max: float, n_z: int) -> tuple[np.ndarray, np.ndarray]:
    """Gauss-Legendre nodes in x = ln(1+z) on [0, ln(1+z_max)]; returns z [n] and weights for dz (w_x (1+z))."""
    if not (math.isfinite(z_max) and z_max > 0):
        raise PopsynthError(f"z_max must be finite and > 0, got {z_max}", "use e.g. z_max=6")
    if int(n_z) < 2:
        raise PopsynthError(f"n_z must be >= 2, got {n_z}", "use e.g. n_z=64")
    x, w = np.polynomial.legendre.leggauss(int(n_z))
    b = math.log1p(z_max)
    xs = 0.5 * b * (x + 1.0)
    z = np.expm1(xs)
    return z, 0.5 * b * w * (1.0 + z)


def cxb_from_emissivity(energy_keV, emissivity_fn, z_max: float = Z_MAX, n_z: int = 64,
                        cosmology: CosmologyParams = CosmologyParams()) -> torch.Tensor:
    """Background from a comoving emissivity: E^2 dN/dE in keV^2 cm^-2 s^-1 keV^-1 sr^-1.

    ``emissivity_fn(e_rest, z)`` takes rest-frame energies ``e_rest`` [..., n_z] (keV, float64 tensor on the
    device of ``energy_keV``) and redshifts ``z`` [n_z] (same dtype and device) and returns
    E_r j_E(E_r, z) [..., n_z] in erg s^-1 Mpc^-3: the comoving luminosity density per unit ln E
    (j_E = energy emitted per unit time, per unit rest energy, per comoving Mpc^3).

    Derivation. A source at redshift z with L_E (erg s^-1 keV^-1) gives the observed energy flux density
    F_E(E) = (1+z) L_E((1+z)E) / (4 pi d_L^2). The sources in dz and solid angle dOmega fill the comoving
    volume d_M^2 dOmega c dz / H(z), with d_L = (1+z) d_M, so the intensity (per sr) is
        I_E(E) = (c / 4 pi) int dz j_E((1+z)E, z) / ((1+z) H(z))                [erg s^-1 cm^-2 keV^-1 sr^-1]
    and, multiplying by E = E_r / (1+z),
        E^2 dN/dE = E I_E(E) = (c / 4 pi H0) int_0^z_max dz [E_r j_E(E_r, z)] / ((1+z)^2 E(z)),  E_r = (1+z)E,
    with E(z) = H(z)/H0 from ``cosmology`` (project default H0 = 70 km/s/Mpc, Omega_m = 0.3, flat, as A19).
    c/H0 is in Mpc, so the integral is in erg s^-1 Mpc^-2 sr^-1; dividing by MPC_CM^2 and by KEV_ERG gives
    keV cm^-2 s^-1 sr^-1 = keV^2 cm^-2 s^-1 keV^-1 sr^-1.

    Quadrature: ``n_z``-point Gauss-Legendre in x = ln(1+z) over [0, ln(1+z_max)], float64, vectorised over
    energies. ``energy_keV``: any shape, finite and > 0; returns a float64 tensor of that shape and device.
    """
    e = _check_energy(energy_keV)
    z, wz = _z_nodes(float(z_max), n_z)
    kern = wz / ((1.0 + z) ** 2 * _efunc(z, cosmology))  # [n_z]
    pref = C_KM_S / cosmology.H0 / (4.0 * math.pi) / MPC_CM ** 2 / KEV_ERG
    zt = torch.as_tensor(z, dtype=DTYPE, device=e.device)
    kt = torch.as_tensor(kern * pref, dtype=DTYPE, device=e.device)
    e_rest = e[..., None] * (1.0 + zt)
    return (emissivity_fn(e_rest, zt) * kt).sum(-1)


def _ecut_nodes(ecut_range):
    """Gauss-Legendre (16) nodes and normalised weights for E_c ~ U(lo, hi); a single node if lo == hi."""
    lo, hi = (float(v) for v in ecut_range)
    if not (math.isfinite(lo) and math.isfinite(hi) and 0 < lo <= hi):
        raise PopsynthError(f"ecut_range must satisfy 0 < lo <= hi, got {ecut_range}", "use e.g. (20, 30) keV or None")
    if lo == hi:
        return np.array([lo]), np.array([1.0])
    x, w = np.polynomial.legendre.leggauss(16)
    return 0.5 * (hi - lo) * x + 0.5 * (hi + lo), w / w.sum()


def _band_norm(gamma: float, ecut: np.ndarray) -> np.ndarray:
    """int_2^10 E^(1-Gamma) exp(-E/E_c) dE (keV^(2-Gamma)) per E_c (E_c = inf: no cutoff); 64-point Gauss-Legendre."""
    x, w = np.polynomial.legendre.leggauss(64)
    ee = 4.0 * x + 6.0
    f = ee[None, :] ** (1.0 - gamma) * np.exp(-ee[None, :] / ecut[:, None])
    return 4.0 * (f * w).sum(-1)


@lru_cache(maxsize=16)
def _sfr_tables(gamma, ecut_range, z_max, n_z, imf_factor, cosmology, n_rho):
    z, _ = _z_nodes(z_max, n_z)
    if ecut_range is None:
        ec, wc = np.array([np.inf]), np.array([1.0])
    else:
        ec, wc = _ecut_nodes(ecut_range)
    return _emissivity_np(z, imf_factor, cosmology, n_rho), ec, wc / _band_norm(gamma, ec)


def galaxy_cxb_sfr(energy_keV, gamma: float = 1.9, ecut_range=(20.0, 30.0), z_max: float = Z_MAX, n_z: int = 64,
                   imf_factor: float = SALPETER_TO_KROUPA, cosmology: CosmologyParams = CosmologyParams(),
                   n_rho: int = 64) -> torch.Tensor:
    """X-ray-binary CXB from cosmic star-formation history, E^2 dN/dE in keV^2 cm^-2 s^-1 keV^-1 sr^-1.

    Emissivity: :func:`xrb_emissivity_2_10keV` (MD14 psi and rho_* times the L16 2-10 keV relation, Kroupa
    IMF). Spectrum per unit rest-frame 2-10 keV luminosity, per unit ln E:
        E_r L_E(E_r) / L_X = <E_r^(2-Gamma) exp(-E_r/E_c) / int_2^10 E^(1-Gamma) exp(-E/E_c) dE>_{E_c},
    i.e. a Gamma = 1.9 power law with an exponential cutoff averaged over E_c ~ U(20, 30) keV (A19's
    galaxy treatment, 16-point Gauss-Legendre), each normalised so that its rest-frame 2-10 keV luminosity,
    cutoff included, is L_X (as ``popsynth.spectra.primary`` normalises the AGN continuum). ``ecut_range``
    = None drops the cutoff; (E, E) fixes it. The redshift integral is :func:`cxb_from_emissivity` from
    z = 0 to ``z_max`` = 6 with ``n_z`` = 64 nodes (doubling the nodes changes the result by < 1e-10;
    z_max = 10 adds +0.6 % at 1 keV, +0.07 % at 10 keV).

    Values with the defaults (A19's :func:`galaxy_cxb_a19` in brackets): 1 keV: 2.517 [1.633];
    10 keV: 1.505 [1.588]; 30 keV: 0.425 [0.901]; 100 keV: 0.0118 [0.079]. At 1 keV this is 1.54x the
    A19 (Aird et al. 2015 XLF based) value, inside the factor-2 uncertainty of the ingredients (L16's
    LMXB evolution gamma = 2.03 +/- 0.60 alone moves it by tens of per cent; see data/galaxies/README.md).

    ``energy_keV``: observed energies in keV, any shape, finite and > 0 (array-like or tensor); returns a
    float64 tensor of the same shape on the device of ``energy_keV``.
    """
    e = _check_energy(energy_keV)
    if not (math.isfinite(gamma) and 0.0 < gamma < 4.0):
        raise PopsynthError(f"photon index gamma must be in (0, 4), got {gamma}", "use e.g. gamma=1.9")
    if not (math.isfinite(imf_factor) and imf_factor > 0):
        raise PopsynthError(f"imf_factor must be finite and > 0, got {imf_factor}",
                            "use 0.67 (Salpeter to Kroupa) or 0.63 (Salpeter to Chabrier)")
    key_ec = None if ecut_range is None else tuple(float(v) for v in ecut_range)
    eps, ec, wc = _sfr_tables(float(gamma), key_ec, float(z_max), int(n_z), float(imf_factor), cosmology, int(n_rho))
    dev = e.device
    eps_t = torch.as_tensor(eps, dtype=DTYPE, device=dev)
    ec_t = torch.as_tensor(ec, dtype=DTYPE, device=dev)
    wc_t = torch.as_tensor(wc, dtype=DTYPE, device=dev)

    def emissivity(e_rest, z):
        shape = (e_rest[..., None] ** (2.0 - gamma) * torch.exp(-e_rest[..., None] / ec_t) * wc_t).sum(-1)
        return shape * eps_t

    return cxb_from_emissivity(e, emissivity, z_max=z_max, n_z=n_z, cosmology=cosmology)


def galaxy_cxb_a19(energy_keV, norm: float = A19_GALAXY_NORM, gamma_mean: float = 1.9, gamma_sigma: float = 0.2,
                   ecut_range=(20.0, 30.0)) -> torch.Tensor:
    """A19 galaxy CXB in E^2 dN/dE units (keV^2 cm^-2 s^-1 keV^-1 sr^-1), shape and device of ``energy_keV``.

    Averages over Gamma (Gauss-Hermite, 24 nodes) and E_c (Gauss-Legendre, 16 nodes). 1.63 at 1 keV
    (1.7 times <exp(-1 keV/E_c)>). Energies must be finite and > 0 keV.
    """
    e = _check_energy(energy_keV)
    xh, wh = np.polynomial.hermite_e.hermegauss(24)
    wh = wh / wh.sum()
    xl, wl = np.polynomial.legendre.leggauss(16)
    ec = 0.5 * (ecut_range[1] - ecut_range[0]) * xl + 0.5 * (ecut_range[1] + ecut_range[0])
    wl = wl / wl.sum()
    g = torch.as_tensor(gamma_mean + gamma_sigma * xh, dtype=DTYPE, device=e.device)
    ect = torch.as_tensor(ec, dtype=DTYPE, device=e.device)
    le = torch.log(e)[..., None, None]
    vals = torch.exp((2.0 - g[:, None]) * le - e[..., None, None] / ect[None, :])
    w = torch.as_tensor(wh[:, None] * wl[None, :], dtype=DTYPE, device=e.device)
    return norm * (vals * w).sum((-1, -2))


def galaxy_cxb_none(energy_keV) -> torch.Tensor:
    """No galaxy term: zeros (keV^2 cm^-2 s^-1 keV^-1 sr^-1) of the shape and device of ``energy_keV`` (> 0 keV)."""
    return torch.zeros_like(_check_energy(energy_keV))


GALAXY_MODELS = {"a19": galaxy_cxb_a19, "sfr": galaxy_cxb_sfr, "none": galaxy_cxb_none}
