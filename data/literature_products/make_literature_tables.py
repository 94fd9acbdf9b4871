"""Write the literature tables of data/literature_products/ (numbers transcribed from the papers
named in each table's header; run from anywhere: ``python data/literature_products/make_literature_tables.py``).

Every number below was read from the cited paper (table, equation or abstract as stated) and
checked against a second statement where one exists (e.g. a resolved fraction recomputed from
the published total and unresolved intensities)."""

from pathlib import Path

import numpy as np
from astropy.table import Table

HERE = Path(__file__).resolve().parent


def _write(t: Table, name: str) -> None:
    t.meta["n_points"] = len(t)
    t.write(HERE / f"{name}.ecsv", format="ascii.ecsv", overwrite=True)


def local_bh_mass_density() -> None:
    t = Table()
    t["reference"] = ["Marconi et al. 2004", "Shankar et al. 2004", "Graham & Driver 2007"]
    t["rho"] = np.array([4.6e5, 4.2e5, 5.15e5])
    t["err_lo"] = np.array([1.4e5, 1.1e5, 0.75e5])
    t["err_hi"] = np.array([1.9e5, 1.1e5, 0.75e5])
    for c in ("rho", "err_lo", "err_hi"):
        t[c].unit = "solMass / Mpc3"
    t["rho"].description = "local (z = 0) supermassive black-hole mass density, H0 = 70"
    t["err_lo"].description = "1-sigma below (Graham & Driver: half the quoted range)"
    t["err_hi"].description = "1-sigma above (Graham & Driver: half the quoted range)"
    t["source"] = ["MNRAS 351, 169, abstract: 4.6 (+1.9, -1.4) h_0.7^2 x 1e5 Msun/Mpc^3",
                   "MNRAS 354, 1020 (astro-ph/0405585), abstract: (4.2 +/- 1.1) x 1e5 Msun/Mpc^3",
                   "MNRAS 380, L15 (arXiv:0705.4505), abstract: most estimates 4.4-5.9 x 1e5 Msun/Mpc^3 at H0 = 70; "
                   "centre and half-width of that range"]
    t.meta.update({"name": "local_bh_mass_density", "quantity": "rho_BH(z = 0)",
                   "source_of_numbers": "transcribed from the abstracts named in column source",
                   "verification": "Marconi and Shankar values agree within 1 sigma; both inside the Graham & Driver range"})
    _write(t, "local_bh_mass_density")


def vito2016_bhad() -> None:
    # Vito et al. 2016 (MNRAS 463, 348), Table 4 (units 1e-7 Msun/yr/Mpc^3) and Table 1 col. 4 (median z)
    zlo, zhi, zmed = [3.5, 4.5, 5.5], [4.5, 5.5, 6.5], [3.90, 4.90, 5.93]
    rows = []
    for i, (v, lo, hi) in enumerate([(123.50, 43.00, 61.00), (8.16, 5.29, 10.80), (1.79, 1.61, 4.18)]):
        rows.append(("x-ray detected", zlo[i], zhi[i], zmed[i], v, lo, hi, False))
    for i, (v, e, ul) in enumerate([(4.50, 2.23, False), (2.01, 0.0, True), (2.39, 0.0, True)]):
        rows.append(("stacked all, case i", zlo[i], zhi[i], zmed[i], v, e, e, ul))
    t = Table(rows=rows, names=("sample", "z_lo", "z_hi", "z_median", "bhad", "err_lo", "err_hi", "upper_limit"))
    for c in ("bhad", "err_lo", "err_hi"):
        t[c] = t[c] * 1e-7
        t[c].unit = "solMass / (yr Mpc3)"
    t["bhad"].description = "black-hole accretion-rate density (upper limit where upper_limit)"
    t["z_median"].description = "median weighted redshift of the stacked sample (Vito+16 Table 1 col. 4, 'all')"
    t.meta.update({"name": "vito2016_bhad", "paper": "Vito, F., Gilli, R., Vignali, C., et al. 2016, MNRAS 463, 348",
                   "source_of_numbers": "Table 4 (X-ray detected AGN; X-ray undetected, all galaxies, case i = all "
                                        "stacked emission from AGN), eps = 0.1, K_bol = 10 for the stacks",
                   "note": "CANDELS/GOODS-S 7 Ms CDF-S; detected-AGN values have no redshift-incompleteness correction"})
    _write(t, "vito2016_bhad")


def resolved_fractions() -> None:
    # Hickox & Markevitch 2006 (ApJ 645, 95) abstract: unresolved and total extragalactic CXB, erg/cm2/s/deg2
    t = Table()
    t["reference"] = ["Hickox & Markevitch 2006", "Hickox & Markevitch 2006", "Harrison et al. 2016"]
    t["band_lo"] = [1.0, 2.0, 8.0]
    t["band_hi"] = [2.0, 8.0, 24.0]
    t["sel_band_lo"] = [0.5, 2.0, 8.0]
    t["sel_band_hi"] = [2.0, 8.0, 24.0]
    t["flux_limit"] = [2.5e-17, 1.4e-16, 2.0e-14]
    t["resolved_fraction"] = [1 - 1.04 / 4.6, 1 - 3.4 / 17.0, 0.36]
    t["err_lo"] = [0.03, 0.08, 0.03]
    t["err_hi"] = [0.03, 0.08, 0.03]
    for c in ("band_lo", "band_hi", "sel_band_lo", "sel_band_hi"):
        t[c].unit = "keV"
    t["flux_limit"].unit = "erg / (s cm2)"
    t["band_lo"].description = "band of the background intensity (lower edge)"
    t["sel_band_lo"].description = "band in which flux_limit is quoted (lower edge)"
    t["flux_limit"].description = "faintest source flux of the survey (approximate, see source)"
    t["resolved_fraction"].description = "fraction of the total extragalactic CXB in the band resolved into sources"
    t["source"] = [
        "abstract: unresolved (1.04 +/- 0.14)e-12 and total (4.6 +/- 0.3)e-12 erg/cm2/s/deg2 in 1-2 keV -> 77 +/- 3 %; "
        "CDF-N 2 Ms 0.5-2 keV limit 2.5e-17 (Alexander et al. 2003; Li et al. 2019 Table 1)",
        "abstract: unresolved (3.4 +/- 1.7)e-12 and total (1.7 +/- 0.2)e-11 erg/cm2/s/deg2 in 2-8 keV -> 80 +/- 8 %; "
        "CDF-N 2 Ms 2-8 keV limit ~1.4e-16 (Alexander et al. 2003)",
        "ApJ 831, 185, abstract: NuSTAR resolves 33-39 % of the 8-24 keV CXB; fluxes probed down to ~2e-14 erg/cm2/s; "
        "centre and half-width of the range"]
    t.meta.update({"name": "resolved_fractions", "quantity": "resolved fraction of the CXB",
                   "source_of_numbers": "transcribed from the abstracts named in column source (fractions recomputed "
                                        "from the published intensities where given)",
                   "verification": "Hickox & Markevitch quote the same fractions (77 % and 80 %) in their abstract"})
    _write(t, "resolved_fractions")


def li2019_fields() -> None:
    t = Table()
    t["field"] = ["UDS", "HDFN", "EGS", "CDFS", "COSMOS"]
    t["area"] = [0.12, 0.02, 0.10, 0.04, 0.74]
    t["area"].unit = "deg2"
    t["flux_limit"] = [1.4e-16, 2.5e-17, 2.0e-16, 6.4e-18, 2.2e-16]
    t["flux_limit"].unit = "erg / (s cm2)"
    t["flux_limit"].description = "S_lim in 0.5-2 keV (Li et al. 2019 Table 1)"
    t["catalog"] = ["Kocevski et al. 2018", "Alexander et al. 2003", "Goulding et al. 2012", "Luo et al. 2017",
                    "Civano et al. 2016"]
    t.meta.update({"name": "li2019_fields", "paper": "Li, Y., Cappelluti, N., Arendt, R. G., et al. 2019 (CIB-CXB "
                   "coherence spectra), Table 1", "source_of_numbers": "Table 1 rows Area and S_lim,0.5-2 keV"})
    _write(t, "li2019_fields")


def li2019_crosspower() -> None:
    # Li et al. 2019 Table 2: <q^2 P_IR,X>/<q^2> above 20", units 1e-11 photon s^-1 cm^-2 nW m^-2 sr^-1
    data = {
        ("UDS", "3.6"): [(1.17, 15.61), (2.07, 1.77), (-1.55, 2.80), (-2.98, 4.11)],
        ("UDS", "4.5"): [(2.90, 9.91), (1.94, 1.06), (1.41, 1.74), (2.29, 2.64)],
        ("HDFN", "3.6"): [(3.91, 3.59), (1.53, 1.28), (-2.54, 2.56), (-1.21, 3.61)],
        ("HDFN", "4.5"): [(1.60, 2.85), (1.50, 1.02), (-2.61, 2.06), (-1.97, 2.86)],
        ("EGS", "3.6"): [(6.07, 3.31), (2.37, 1.00), (1.56, 2.12), (4.01, 2.99)],
        ("EGS", "4.5"): [(8.57, 2.47), (3.24, 0.74), (1.44, 1.56), (0.11, 2.21)],
        ("CDFS", "3.6"): [(5.35, 2.51), (3.74, 0.61), (2.54, 1.18), (1.12, 1.58)],
        ("CDFS", "4.5"): [(4.44, 2.30), (2.26, 0.58), (1.88, 1.05), (-3.27, 1.38)],
        ("COSMOS", "3.6"): [(20.03, 4.86), (2.87, 1.06), (2.63, 2.06), (1.99, 2.93)],
        ("COSMOS", "4.5"): [(8.91, 3.76), (1.78, 0.82), (5.19, 1.60), (2.69, 2.26)],
        ("STACK", "3.6"): [(10.45, 3.12), (2.60, 0.54), (1.12, 1.02), (0.21, 1.45)],
        ("STACK", "4.5"): [(6.13, 2.18), (2.08, 0.40), (2.02, 0.76), (0.25, 1.09)],
    }
    t = Table(names=("field", "ir_band", "p_0p5_1", "e_0p5_1", "p_1_2", "e_1_2", "p_2_4", "e_2_4", "p_4_7", "e_4_7"),
              dtype=(str, str) + (float,) * 8)
    for (f, ir), vals in data.items():
        t.add_row([f, ir + " um"] + [x for pair in vals for x in pair])
    for c in t.colnames[2:]:
        t[c].unit = "1e-11 ph nW / (s cm2 m2 sr)"
    t["p_0p5_1"].description = "mean cross power above 20 arcsec with the 0.5-1 keV map; e_*: 1-sigma"
    t.meta.update({"name": "li2019_crosspower", "paper": "Li et al. 2019, Table 2",
                   "units_note": "1e-11 photon s^-1 cm^-2 nW m^-2 sr^-1 (photon-flux units in the X-ray factor)",
                   "hardness_ratios": "HR1 = (P12 - P0.5-1)/(P12 + P0.5-1), HR2 = (P24 - P12)/(P24 + P12), "
                                      "HR3 = (P47 - P24)/(P47 + P24) (Li et al. 2019 eqs. 8-10)"})
    _write(t, "li2019_crosspower")


if __name__ == "__main__":
    local_bh_mass_density()
    vito2016_bhad()
    resolved_fractions()
    li2019_fields()
    li2019_crosspower()
