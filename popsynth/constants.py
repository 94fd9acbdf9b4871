"""Physical constants and unit scales, taken once from astropy (``astropy.constants`` and
``astropy.units``) as plain Python floats.

Each value is bit for bit the literal popsynth used before (``tests/test_constants.py``), so
results do not change. One value needs care: astropy's direct ``u.keV.to(u.erg)`` is
1.6021766339999998e-9, one ulp below the exact 1.602176634e-9 (e = 1.602176634e-19 C exactly,
SI 2019), and ``u.erg.to(u.J)`` is 1e-7 plus one ulp; keV in joules divided by 1e-7 is exact.

CGS throughout (erg, cm, g, s), as the rest of popsynth. The Hubble time belongs to a
cosmology: ``(1 / CosmologyParams().astropy().H0).to_value(u.yr)``
(:func:`popsynth.galaxies._hubble_time_yr`).

Not here: the CODATA 2018 values of :mod:`popsynth.physics.crosssections` (m_e c^2, r_e,
sigma_T). The Green's tables were built with those published values; astropy ships CODATA 2022
(sigma_T 4e-9 lower, m_e c^2 1.4e-9 higher, relative) and derives its CODATA 2018 set to other
last digits, so they stay literals there, checked against ``astropy.constants.codata2018`` in
``tests/test_crosssections.py``.
"""

from __future__ import annotations

from astropy import constants as _const
from astropy import units as _u

__all__ = ["KEV_ERG", "MPC_CM", "C_CM_S", "C_KM_S", "M_SUN_G", "L_SUN_ERG_S", "YR_S", "AVOGADRO"]

#: erg per keV (exact, SI 2019): 1 keV in joules over the 1e-7 J of an erg.
KEV_ERG: float = float(_u.keV.to(_u.J) / 1e-7)
#: cm per Mpc (IAU 2015 parsec definition).
MPC_CM: float = float(_u.Mpc.to(_u.cm))
#: Speed of light in cm/s (exact, SI).
C_CM_S: float = float(_const.c.to_value(_u.cm / _u.s))
#: Speed of light in km/s (exact, SI).
C_KM_S: float = float(_const.c.to_value(_u.km / _u.s))
#: Solar mass in g (IAU 2015 nominal GM_sun / CODATA 2018 G: astropy.constants.M_sun).
M_SUN_G: float = float(_const.M_sun.to_value(_u.g))
#: Nominal solar luminosity in erg/s (IAU 2015 Resolution B3).
L_SUN_ERG_S: float = float(_const.L_sun.to_value(_u.erg / _u.s))
#: Julian year in s (365.25 days: astropy's ``u.yr``).
YR_S: float = float(_u.yr.to(_u.s))
#: Avogadro's number in mol^-1 (exact, SI 2019).
AVOGADRO: float = float(_const.N_A.to_value(1 / _u.mol))
