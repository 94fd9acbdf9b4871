"""Flat LambdaCDM distances and volumes on the redshift grid, built with astropy.

A19 and Ueda et al. 2014 use H0 = 70 km/s/Mpc, Omega_m = 0.3, Omega_Lambda = 0.7. astropy
computes the tables once (no radiation term, so they match the papers' cosmology); torch
holds them as float64 tensors for the loss path.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
import torch

from ._tensor import DTYPE
from .constants import MPC_CM
from .errors import PopsynthError



@dataclass(frozen=True)
class CosmologyParams:
    """Flat LambdaCDM parameters: H0 in km/s/Mpc, Om0 dimensionless (Omega_Lambda = 1 - Om0)."""

    H0: float = 70.0
    Om0: float = 0.3

    def describe(self) -> dict:
        """Plain-dict form for file headers: {"H0": km/s/Mpc, "Om0": ..., "flat": True}."""
        return {"H0": float(self.H0), "Om0": float(self.Om0), "flat": True}

    def astropy(self):
        """The matching ``astropy.cosmology.FlatLambdaCDM`` (no radiation, Tcmb0 = 0); one
        immutable instance per parameter set, built once per process."""
        return _astropy_cosmology(float(self.H0), float(self.Om0))


@functools.lru_cache(maxsize=8)
def _astropy_cosmology(h0: float, om0: float):
    from astropy.cosmology import FlatLambdaCDM

    return FlatLambdaCDM(H0=h0, Om0=om0, Tcmb0=0.0)


def distance_tables(z, params: CosmologyParams = CosmologyParams(), device=None) -> dict[str, torch.Tensor]:
    """Distances and volume elements at redshifts ``z`` (any 1-D array-like, z > 0).

    Returns a dict of float64 tensors of shape [nz]:
      - ``z``: the redshifts;
      - ``d_l_cm``: luminosity distance d_L in cm;
      - ``dvc_dz_dsr_mpc3``: comoving volume element dV_c / (dz dOmega) in Mpc^3 sr^-1;
      - ``efunc``: E(z) = H(z)/H0, dimensionless.
    """
    z = np.asarray(z, dtype=np.float64)
    if z.ndim != 1 or not np.all(np.isfinite(z)) or np.any(z <= 0):
        raise PopsynthError("redshift grid must be a 1-D array of finite values > 0", "check the z grid")
    d_l, dvc, ez = _distances(z.tobytes(), float(params.H0), float(params.Om0))
    t = lambda a: torch.tensor(np.asarray(a, dtype=np.float64), dtype=DTYPE, device=device)  # a copy  # noqa: E731
    return {"z": t(z), "d_l_cm": t(d_l), "dvc_dz_dsr_mpc3": t(dvc), "efunc": t(ez)}


@functools.lru_cache(maxsize=64)
def _distances(z_bytes: bytes, h0: float, om0: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(d_L in cm, dV_c/dz/dOmega in Mpc^3 sr^-1, E(z)) for the float64 redshifts in ``z_bytes``,
    computed once per process for each grid (the run set-up asks for the same nodes many times).
    The arrays are read-only."""
    z = np.frombuffer(z_bytes, dtype=np.float64)

    def compute():
        cosmo = _astropy_cosmology(h0, om0)
        return (cosmo.luminosity_distance(z).to_value("Mpc") * MPC_CM,
                cosmo.differential_comoving_volume(z).to_value("Mpc3 / sr"),
                np.asarray(cosmo.efunc(z), dtype=np.float64))

    out = _disk_cached(compute, z, h0, om0) if z.size >= 16 else compute()
    for a in out:
        a.setflags(write=False)
    return out


def _disk_cached(compute, z: np.ndarray, h0: float, om0: float):
    """``compute()``'s three arrays, kept in the cache folder under the redshifts, H0, Om0 and
    astropy's version: a run's set-up then reads astropy's numbers instead of importing
    astropy.cosmology (~1 s with scipy.integrate). The values are astropy's, bit for bit."""
    import importlib.metadata

    from .io.cache import arrays_sha256, cache_file, cache_key, cached

    key = cache_key({"z": arrays_sha256(z), "H0": repr(h0), "Om0": repr(om0), "Tcmb0": 0.0,
                     "astropy": importlib.metadata.version("astropy")})

    def load(path, k):
        try:
            with np.load(path) as f:
                if str(f["key"]) != k:
                    return None
                return tuple(np.array(f[n], dtype=np.float64) for n in ("d_l_cm", "dvc", "efunc"))
        except Exception:  # noqa: BLE001 - damaged: recompute
            return None

    def save(tmp, v):
        with open(tmp, "wb") as fh:
            np.savez(fh, key=np.array(key), d_l_cm=v[0], dvc=v[1], efunc=v[2])

    return cached(compute, key, path=cache_file("cosmology", f"distances-{key}.npz"), load=load, save=save,
                  what="distance cache file")
