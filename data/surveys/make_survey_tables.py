"""Write the survey descriptions used by ``popsynth forecast`` and ``popsynth mock`` (data/surveys/).

Usage::

    python data/surveys/make_survey_tables.py

Writes, next to this script:

* ``surveys.ecsv``: one row per survey: band, single flux limit or area-curve file, sky area,
  redshift range, the role of the survey in this project, a published number of detected
  sources where one exists, and the source of every number;
* ``xmmcosmos_area_curve.ecsv``: the XMM-COSMOS 2-10 keV area curve, taken from the
  ``area_at_flux`` column of ``data/counts/cappelluti09_xmmcosmos_cumulative_2_10keV.ecsv``
  (the project's digitisation of Cappelluti et al. 2009), rows with a positive area.

Every number is transcribed below with the paper and the place in it (abstracts as stored in
public copies; see ``README.md``). The output is deterministic: re-running the script reproduces
the committed files. Tests never run it.
"""

from __future__ import annotations

import math
from pathlib import Path

import astropy.units as u
import numpy as np
from astropy.table import Table

HERE = Path(__file__).resolve().parent
COUNTS = HERE.parent / "counts"
GENERATED_BY = "data/surveys/make_survey_tables.py"
FULL_SKY_DEG2 = float(4.0 * np.pi * (180.0 / np.pi) ** 2)  # 41252.96 deg^2
HIGH_LAT_DEG2 = FULL_SKY_DEG2 * (1.0 - math.sin(math.radians(10.0)))  # |b| > 10 deg: 34089.46 deg^2
NAN = float("nan")

# name, label, band (keV), flux limit (erg cm^-2 s^-1; NaN with an area curve), area (deg^2),
# z range (NaN: none), area-curve file, role, published number of sources (NaN: none used),
# what that number is, reference, where the numbers come from.
ROWS = [
    ("bat105_agn", "Swift/BAT 105-month non-blazar AGN, |b| > 10 deg", (14.0, 195.0), 1.0e-11, HIGH_LAT_DEG2,
     (NAN, NAN), "", "fit constraint (counts)", 655.0,
     "non-blazar AGN of the 105-month catalogue with S(14-195) >= 1e-11 at |b| > 10 deg, counted by "
     "data/counts/make_counts_tables.py from the catalogue (data/counts/README.md)",
     "Oh, K., Koss, M., Markwardt, C. B., et al. 2018, ApJS, 235, 4 (arXiv:1801.01882)",
     "selection of data/counts/bat105_agn_*.ecsv: flux limit 1e-11 (project's choice, above the 90 % sky-coverage "
     "flux 8.4e-12 of the abstract), area 41252.96 x (1 - sin 10 deg) deg^2"),
    ("cdfs4ms_soft", "Chandra Deep Field-South 4 Ms, 0.5-2 keV", (0.5, 2.0), 1.0e-17, 464.5 / 3600.0,
     (NAN, NAN), "", "fit constraint (counts)", NAN, "",
     "Lehmer, B. D., Xue, Y. Q., Brandt, W. N., et al. 2012, ApJ, 752, 46 (arXiv:1204.1977); area: Xue, Y. Q., "
     "et al. 2011, ApJS, 195, 10",
     "area 464.5 arcmin^2 (Xue et al. 2011 abstract); flux limit = the faintest flux of the counts table "
     "data/counts/lehmer12_cdfs4ms_agn_cumulative_0p5_2keV.ecsv (a depth reached only on axis: the forecast is an "
     "upper bound on the detections)"),
    ("cdfs4ms_hard", "Chandra Deep Field-South 4 Ms, 2-8 keV", (2.0, 8.0), 1.0e-16, 464.5 / 3600.0,
     (NAN, NAN), "", "fit constraint (counts)", NAN, "",
     "Lehmer, B. D., Xue, Y. Q., Brandt, W. N., et al. 2012, ApJ, 752, 46 (arXiv:1204.1977); area: Xue, Y. Q., "
     "et al. 2011, ApJS, 195, 10",
     "as cdfs4ms_soft, from data/counts/lehmer12_cdfs4ms_agn_cumulative_2_8keV.ecsv"),
    ("cdfs7ms_hard", "Chandra Deep Field-South 7 Ms, 2-7 keV", (2.0, 7.0), 2.0802e-17, 0.1345,
     (NAN, NAN), "", "counts table (not fitted by default)", NAN, "",
     "Luo, B., Brandt, W. N., Xue, Y. Q., et al. 2017, ApJS, 228, 2 (arXiv:1611.03501)",
     "flux limit and area from the header of data/counts/luo17_cdfs7ms_cumulative_2_7keV.ecsv"),
    ("xmmcosmos", "XMM-COSMOS, 2-10 keV (area curve)", (2.0, 10.0), NAN, 2.13,
     (NAN, NAN), "xmmcosmos_area_curve.ecsv", "fit constraint (counts)", NAN, "",
     "Cappelluti, N., Brusa, M., Hasinger, G., et al. 2009, A&A, 497, 635",
     "area curve = area_at_flux column of data/counts/cappelluti09_xmmcosmos_cumulative_2_10keV.ecsv "
     "(project's digitisation); largest area 2.13 deg^2 (also A19 Table 2)"),
    ("bat70", "Swift/BAT 70-month, all sky", (14.0, 195.0), 1.34e-11, FULL_SKY_DEG2,
     (NAN, NAN), "", "fit constraint (observed CT fraction)", 728.0,
     "non-blazar AGN of the 70-month catalogue (Ricci et al. 2015 abstract: '834 AGN (728 non-blazar)')",
     "Ricci, C., Ueda, Y., Koss, M. J., et al. 2015, ApJL, 815, L13 (arXiv:1603.04852); flux: Baumgartner, W. H., "
     "et al. 2013, ApJS, 207, 19",
     "flux limit = 90 % sky-coverage flux of the 70-month survey (as data/counts/ct_fractions.ecsv); area = whole sky"),
    ("nustar_uds", "NuSTAR UDS, 8-24 keV", (8.0, 24.0), 2.7e-14, 0.6,
     (NAN, NAN), "", "fit constraint (observed CT fraction)", NAN,
     "67 sources are detected in at least one of three bands (3-24, 3-8, 8-24 keV), not in 8-24 keV alone",
     "Masini, A., Civano, F., Comastri, A., et al. 2018, ApJS, 235, 17 (arXiv:1801.01881)",
     "abstract: area ~0.6 deg^2; 8-24 keV sensitivity at half area 2.7e-14"),
    ("nustar_cosmos", "NuSTAR COSMOS, 8-24 keV", (8.0, 24.0), 6.4e-14, 1.7,
     (NAN, NAN), "", "fit constraint (observed CT fraction); deep hard-band survey", 32.0,
     "sources detected in the 8-24 keV band (abstract: 'Thirty-two sources are detected in the 8-24 keV band')",
     "Civano, F., Hickox, R. C., Puccetti, S., et al. 2015, ApJ, 808, 185 (arXiv:1511.04185)",
     "abstract: area 1.7 deg^2; 8-24 keV sensitivity at 20 % completeness 6.4e-14 (used as a sharp limit, so "
     "the forecast counts sources the survey detects only in part near the limit)"),
    ("nustar_serendip40", "NuSTAR serendipitous survey, 40-month, 8-24 keV", (8.0, 24.0), 2.0e-14, 13.0,
     (NAN, NAN), "", "fit constraint (observed CT fraction)", NAN,
     "497 sources are detected in 3-24 keV, not in 8-24 keV alone",
     "Lansbury, G. B., Stern, D., Aird, J., et al. 2017, ApJ, 836, 99 (40-month catalogue, abstract: 13 deg^2, "
     "497 sources)",
     "area 13 deg^2 (abstract); flux limit = lower end of the 8-24 keV depth 2-10e-14 that A19 Table 2 quotes "
     "(the survey is not uniform)"),
    ("erass8_like", "eROSITA all-sky survey after 4 years (eRASS:8-like), 0.5-2 keV, |b| > 10 deg", (0.5, 2.0),
     1.0e-14, HIGH_LAT_DEG2, (NAN, NAN), "", "wide survey (forecast only)", 3.0e6,
     "a PREDICTION, not a measurement: 'eROSITA is expected to detect about 3 million AGN on the extragalactic "
     "sky (|b|>10 deg)' (Kolodzig et al. 2013 abstract)",
     "Kolodzig, A., Gilfanov, M., Sunyaev, R., Sazonov, S., Brusa, M. 2013, A&A, 558, A89 (arXiv:1212.2151)",
     "abstract: 'After four years of the survey, a sky-average sensitivity of about 1x10^-14 erg/s/cm2 will be "
     "achieved in the 0.5-2.0 keV band'; area = extragalactic sky |b| > 10 deg"),
]


def survey_index() -> Table:
    cols = {k: [] for k in ("name", "label", "band_lo", "band_hi", "flux_limit", "area", "z_lo", "z_hi",
                            "area_curve", "role", "n_published", "n_published_note", "reference", "numbers_source")}
    for (name, label, band, lim, area, zr, curve, role, n_pub, n_note, ref, src) in ROWS:
        for k, v in zip(cols, (name, label, band[0], band[1], lim, area, zr[0], zr[1], curve, role, n_pub, n_note,
                               ref, src)):
            cols[k].append(v)
    t = Table(cols)
    t["band_lo"].unit = t["band_hi"].unit = u.keV
    t["flux_limit"].unit = u.Unit("erg cm-2 s-1")
    t["area"].unit = u.deg ** 2
    desc = {
        "name": "survey name for popsynth forecast / mock --survey",
        "band_lo": "lower edge of the observed-frame band of the flux limit",
        "band_hi": "upper edge of the band",
        "flux_limit": "single flux limit (sources with S > limit are detected); NaN when area_curve is given",
        "area": "sky area (largest area of the area curve)",
        "z_lo": "lower redshift bound of the sample (NaN: none)",
        "z_hi": "upper redshift bound (NaN: none)",
        "area_curve": "ECSV file in this folder with columns flux, area (deg2), or empty",
        "role": "why the project carries this survey",
        "n_published": "a published number of sources of the survey (NaN: none comparable)",
        "n_published_note": "what n_published counts",
        "reference": "paper(s) the numbers come from",
        "numbers_source": "where each number is taken from",
    }
    for k, v in desc.items():
        t[k].description = v
    t.meta.update({
        "name": "surveys",
        "label": "X-ray survey descriptions for popsynth forecasts and mock catalogues",
        "flux_definition": "observed-frame energy flux in the stated band, erg cm^-2 s^-1",
        "area_full_sky_deg2": FULL_SKY_DEG2,
        "area_high_latitude_deg2": HIGH_LAT_DEG2,
        "generated_by": GENERATED_BY,
        "n_points": len(t),
    })
    return t


def xmmcosmos_curve() -> Table:
    src = Table.read(COUNTS / "cappelluti09_xmmcosmos_cumulative_2_10keV.ecsv", format="ascii.ecsv")
    flux = np.asarray(src["flux"].quantity.to_value(u.Unit("erg cm-2 s-1")), dtype=np.float64)
    area = np.asarray(src["area_at_flux"].quantity.to_value(u.deg ** 2), dtype=np.float64)
    keep = np.isfinite(area) & (area > 0)
    t = Table({"flux": flux[keep], "area": area[keep]})
    t["flux"].unit = u.Unit("erg cm-2 s-1")
    t["area"].unit = u.deg ** 2
    t["flux"].description = "2-10 keV flux (observed frame)"
    t["area"].description = "sky area sensitive to sources of this flux (interpolated log-log between rows)"
    t.meta.update({
        "name": "xmmcosmos_area_curve",
        "label": "XMM-COSMOS 2-10 keV area curve",
        "paper": "Cappelluti, N., Brusa, M., Hasinger, G., et al. 2009, A&A, 497, 635",
        "source_of_numbers": "area_at_flux column of data/counts/cappelluti09_xmmcosmos_cumulative_2_10keV.ecsv "
                             "(the project's digitisation, see data/counts/README.md), rows with area > 0",
        "band_keV": [2.0, 10.0],
        "generated_by": GENERATED_BY,
        "n_points": len(t),
    })
    return t


def main() -> None:
    survey_index().write(HERE / "surveys.ecsv", format="ascii.ecsv", overwrite=True)
    xmmcosmos_curve().write(HERE / "xmmcosmos_area_curve.ecsv", format="ascii.ecsv", overwrite=True)
    print(f"wrote {HERE / 'surveys.ecsv'} and {HERE / 'xmmcosmos_area_curve.ecsv'}")


if __name__ == "__main__":
    main()
