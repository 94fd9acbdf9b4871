"""popsynth.constants: each value taken from astropy is bit for bit the literal popsynth used
before (so no result changes), and the modules that use them take them from there."""

import math

import pytest

from popsynth import constants as k

OLD_LITERALS = {
    "KEV_ERG": 1.602176634e-9,  # spectra/primary.py, figures.py
    "MPC_CM": 3.0856775814913673e24,  # cosmology.py
    "C_CM_S": 2.99792458e10,  # bhad.py
    "C_KM_S": 299792.458,  # galaxies.py
    "M_SUN_G": 1.988409870698051e33,  # bhad.py (MSUN_G)
    "L_SUN_ERG_S": 3.828e33,  # bhad.py (LSUN_ERG_S)
    "YR_S": 365.25 * 86400.0,  # bhad.py, galaxies.py (JULIAN_YEAR_S)
    "AVOGADRO": 6.02214076e23,  # physics/crosssections.py
}


@pytest.mark.parametrize("name", sorted(OLD_LITERALS))
def test_each_constant_is_bitwise_its_old_literal(name):
    value = getattr(k, name)
    assert type(value) is float and value == OLD_LITERALS[name], (name, value)
    assert name in k.__all__


def test_kev_erg_is_the_exact_si_value_not_astropys_direct_scale():
    from astropy import units as u

    assert k.KEV_ERG == 1.602176634e-9
    assert u.keV.to(u.erg) != k.KEV_ERG and math.isclose(u.keV.to(u.erg), k.KEV_ERG, rel_tol=2e-16)


def test_users_take_the_constants_from_here():
    from popsynth import figures, galaxies
    from popsynth.physics import crosssections
    from popsynth.spectra import primary

    assert primary.KEV_ERG is k.KEV_ERG and figures.KEV_ERG is k.KEV_ERG and galaxies.KEV_ERG is k.KEV_ERG
    assert galaxies.MPC_CM is k.MPC_CM and galaxies.C_KM_S is k.C_KM_S
    assert crosssections.AVOGADRO is k.AVOGADRO
    assert not hasattr(figures, "_KEV_ERG") and not hasattr(galaxies, "JULIAN_YEAR_S")


def test_hubble_time_from_astropy_is_bitwise_the_old_formula_at_h0_70():
    from popsynth.cosmology import CosmologyParams
    from popsynth.galaxies import _hubble_time_yr

    old = 3.0856775814913673e24 / 1e5 / 70.0 / (365.25 * 86400)
    assert _hubble_time_yr(CosmologyParams()) == old == 13968460309.72556
    for h0 in (67.7, 69.3, 75.0):  # other H0: the same to rounding (astropy divides in another order)
        assert math.isclose(_hubble_time_yr(CosmologyParams(H0=h0)), 3.0856775814913673e24 / 1e5 / h0 / (365.25 * 86400),
                            rel_tol=2.3e-16)
