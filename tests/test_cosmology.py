"""Distances and volumes against astropy and analytic limits."""

import numpy as np
import pytest
from astropy.cosmology import FlatLambdaCDM

from popsynth.constants import MPC_CM
from popsynth.cosmology import CosmologyParams, distance_tables
from popsynth.errors import PopsynthError
from popsynth.grid import a19_z_nodes


def test_tables_match_astropy_on_a19_grid():
    z = a19_z_nodes()
    d = distance_tables(z)
    ref = FlatLambdaCDM(H0=70, Om0=0.3, Tcmb0=0)
    np.testing.assert_allclose(d["d_l_cm"].numpy(), ref.luminosity_distance(z).to_value("cm"), rtol=1e-12)
    np.testing.assert_allclose(d["dvc_dz_dsr_mpc3"].numpy(), ref.differential_comoving_volume(z).to_value("Mpc3/sr"),
                               rtol=1e-12)
    assert d["d_l_cm"].dtype.is_floating_point and d["d_l_cm"].dtype.itemsize == 8


def test_low_z_hubble_law_and_volume():
    # d_L -> c z / H0 and dV/dz/dOmega -> (c/H0)^3 z^2 as z -> 0 (to first order in z)
    z = np.array([1e-4])
    d = distance_tables(z)
    dh_mpc = 299792.458 / 70.0
    assert d["d_l_cm"].item() / MPC_CM == pytest.approx(dh_mpc * z[0], rel=2e-4)
    assert d["dvc_dz_dsr_mpc3"].item() == pytest.approx(dh_mpc ** 3 * z[0] ** 2, rel=5e-4)


def test_einstein_de_sitter_limit():
    # Om0 = 1: d_L = 2 (c/H0) (1+z) (1 - 1/sqrt(1+z)) exactly
    z = np.array([0.5, 1.0, 3.0])
    d = distance_tables(z, CosmologyParams(Om0=1.0))
    dh = 299792.458 / 70.0 * MPC_CM
    np.testing.assert_allclose(d["d_l_cm"].numpy(), 2 * dh * (1 + z) * (1 - 1 / np.sqrt(1 + z)), rtol=1e-10)


def test_bad_redshifts_raise():
    with pytest.raises(PopsynthError, match="redshift grid"):
        distance_tables([0.0, 1.0])
