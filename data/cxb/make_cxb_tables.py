"""Write the project's CXB tables (data/cxb/*.ecsv) from the shared reference files.

Usage::

    python data/cxb/make_cxb_tables.py [SOURCE_DIR]

SOURCE_DIR defaults to ``../shared/data/cxb`` next to the repository (``/work/shared/data/cxb``
on the development machine). It must hold ``ajello_compilation/{BAT,XTE,ASCA}.dat`` and
``literature_digitized/{Cappelluti2017,gendreau1995}.dat``. The tables are written next to this
script. The conversion is deterministic (no time stamps), so re-running it on the same input
reproduces the committed files exactly; tests never run it (CI has no shared/ folder).

What the script does, per data set:

* XSPEC ``READ SERR 1 2`` files of the Ajello compilation (BAT, XTE, ASCA): columns are
  E, dE_lo, dE_hi, E^2 dN/dE, err_lo, err_hi, 0. Bin edges are E - dE_lo and E + dE_hi.
* Digitized files (Cappelluti 2017; Gendreau 1995 is only used as a cross-check): columns
  E, value, upper, lower; converted to err_lo = value - lower, err_hi = upper - value.
  Bin edges are unknown (NaN).
* The selection used in the fit (``used_in_fit``) reproduces the point counts of Ananna et
  al. 2019 Table 5 (25 / 34 / 15); the reasons are written into each file's ``selection``.

See data/cxb/README.md for the choices and the known issues.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import astropy.units as u
from astropy.table import Table

HERE = Path(__file__).resolve().parent
DEFAULT_SOURCE = HERE.parent.parent.parent / "shared" / "data" / "cxb"

ENERGY_UNIT = u.keV
INTENSITY_UNIT = u.Unit("keV2 cm-2 s-1 keV-1 sr-1")  # astropy writes it as keV / (s sr cm2)
UNITS_TEXT = (
    "energy, e_lo, e_hi: keV; intensity, err_lo, err_hi: E^2 dN/dE in "
    "keV2 cm-2 s-1 keV-1 sr-1 (= keV cm-2 s-1 sr-1, intensity per unit ln E; astropy writes "
    "the unit as 'keV / (s sr cm2)')"
)

AJELLO_SOURCE = (
    "Compilation provided by M. Ajello (cite Ajello et al. 2008, ApJ 689, 666), XSPEC "
    "'READ SERR 1 2' file {fname}, from repository songningqiang/CosmoLED, folder "
    "IsotropicLight/AjelloData/, commit c59039f266f99ccc979d58fa6abc9fe6801832ab; "
    "tabulated numbers (not digitized), symmetric 1-sigma errors and bin half-widths as "
    "given there; converted by data/cxb/make_cxb_tables.py"
)
CAPPELLUTI_SOURCE = (
    "Digitized from the CXB spectrum figure of Cappelluti et al. 2017: file "
    "Cappelluti2017.dat (columns E, value, upper, lower) of repository sophie-newman/shen2020 "
    "(observational data used by Shen et al. 2020, MNRAS 495, 3252; commit not recorded); "
    "errors converted to err_lo = value - lower, err_hi = upper - value; no bin widths "
    "(e_lo, e_hi are NaN); converted by data/cxb/make_cxb_tables.py"
)

KNOWN_ISSUES = (
    "Absolute normalisations of different CXB instruments differ by 10-20 % (BAT is ~8-10 % "
    "above HEAO-1); a fit should add a systematic error floor or a free cross-normalisation "
    "per instrument and say which. See data/cxb/README.md."
)


def read_xspec_serr(path: Path) -> np.ndarray:
    """Rows of an XSPEC ``READ SERR 1 2`` file: E, dE_lo, dE_hi, y, err_lo, err_hi[, model]."""
    rows = []
    for line in path.read_text().splitlines():
        s = line.strip()
        if not s or s.upper().startswith("READ") or s[0] in "@!#":
            continue
        rows.append([float(v) for v in s.split()])
    arr = np.array(rows, dtype=float)
    if arr.ndim != 2 or arr.shape[1] < 6:
        raise ValueError(f"{path}: expected >= 6 columns, got shape {arr.shape}")
    return arr[:, :6]


def read_digitized(path: Path) -> np.ndarray:
    """Rows of a digitized file with one header line: E, value, upper, lower."""
    arr = np.loadtxt(path, skiprows=1, dtype=float)
    if arr.ndim != 2 or arr.shape[1] != 4:
        raise ValueError(f"{path}: expected 4 columns, got shape {arr.shape}")
    return arr


def build_table(energy, e_lo, e_hi, intensity, err_lo, err_hi, used, meta) -> Table:
    energy = np.asarray(energy, float)
    order = np.argsort(energy)
    cols = dict(
        energy=energy, e_lo=np.asarray(e_lo, float), e_hi=np.asarray(e_hi, float),
        intensity=np.asarray(intensity, float), err_lo=np.asarray(err_lo, float),
        err_hi=np.asarray(err_hi, float),
    )
    # 6 decimals keep every digit of the sources (<= 7 significant figures) and remove the
    # float noise of the differences (E - dE, value - lower)
    cols = {k: np.round(v[order], 6) for k, v in cols.items()}
    used = np.asarray(used, bool)[order]

    # checks before writing
    assert np.all(np.diff(cols["energy"]) > 0), "energies not strictly increasing"
    for k in ("energy", "intensity", "err_lo", "err_hi"):
        assert np.all(np.isfinite(cols[k]) & (cols[k] > 0)), f"{k}: non-finite or <= 0"
    fin = np.isfinite(cols["e_lo"]) & np.isfinite(cols["e_hi"])
    assert np.all(cols["e_lo"][fin] < cols["energy"][fin])
    assert np.all(cols["energy"][fin] < cols["e_hi"][fin])

    t = Table()
    t["energy"] = cols["energy"] * ENERGY_UNIT
    t["energy"].description = "photon energy of the point (bin centre as given by the source)"
    t["e_lo"] = cols["e_lo"] * ENERGY_UNIT
    t["e_lo"].description = "lower bin edge (NaN where the source gives no bin width)"
    t["e_hi"] = cols["e_hi"] * ENERGY_UNIT
    t["e_hi"].description = "upper bin edge (NaN where the source gives no bin width)"
    t["intensity"] = cols["intensity"] * INTENSITY_UNIT
    t["intensity"].description = "CXB intensity E^2 dN/dE"
    t["err_lo"] = cols["err_lo"] * INTENSITY_UNIT
    t["err_lo"].description = "1-sigma error below the value (positive distance)"
    t["err_hi"] = cols["err_hi"] * INTENSITY_UNIT
    t["err_hi"].description = "1-sigma error above the value (positive distance)"
    t["used_in_fit"] = used
    t["used_in_fit"].description = "True where the point is in the training set (see meta selection)"
    meta = dict(meta)
    meta["n_points"] = int(len(t))
    meta["n_used_in_fit"] = int(used.sum())
    meta["quantity"] = "E^2 dN/dE"
    meta["units"] = UNITS_TEXT
    meta["known_issues"] = meta.get("known_issues", KNOWN_ISSUES)
    meta["generated_by"] = "data/cxb/make_cxb_tables.py"
    t.meta.update(meta)
    return t


def make_bat(src: Path) -> Table:
    a = read_xspec_serr(src / "ajello_compilation" / "BAT.dat")
    assert len(a) == 20
    e = a[:, 0]
    used = e <= 100.0
    assert used.sum() == 15
    meta = dict(
        dataset="swift_bat",
        label="Swift/BAT (Ajello et al. 2008)",
        paper=(
            "Ajello, M., Greiner, J., Sato, G., et al. 2008, ApJ, 689, 666, 'Cosmic X-Ray "
            "Background and Earth Albedo Spectra with Swift BAT' (arXiv:0808.3377)"
        ),
        instrument="Swift BAT (Burst Alert Telescope), 14-195 keV, Earth-occultation technique",
        source_of_numbers=AJELLO_SOURCE.format(fname="BAT.dat"),
        selection=(
            "used_in_fit = E <= 100 keV: the 15 points 15-93 keV (bins 14-98.8 keV); the 5 points "
            "at 106-181 keV are kept but not used. Ananna et al. 2019 (Table 5) fitted 15 BAT "
            "points without listing them. Reasons for the cut at 100 keV: (1) the CXB peak "
            "(20-40 keV) and the high-energy roll-over that constrain the Compton-thick "
            "fraction and the cutoff energy lie below 100 keV; (2) above ~100 keV a growing "
            "part of the CXB comes from sources the Seyfert population model does not contain "
            "(blazars / FSRQs, the tail toward the MeV background), and the BAT result there "
            "depends most on the instrumental-background and Earth-albedo modelling; (3) A19 "
            "itself treats E < 100 keV as the range of interest (galaxy contribution 'at E < "
            "100 keV'). The low-energy BAT points (15-21 keV) have 15-29 % errors but overlap "
            "RXTE only at 15-19 keV and are kept."
        ),
        a19_reference_count=15,
    )
    return build_table(e, e - a[:, 1], e + a[:, 2], a[:, 3], a[:, 4], a[:, 5], used, meta)


def make_rxte(src: Path) -> Table:
    a = read_xspec_serr(src / "ajello_compilation" / "XTE.dat")
    assert len(a) == 45
    e = a[:, 0]
    e_lo = e - a[:, 1]
    used = e_lo < 15.0
    assert used.sum() == 34
    meta = dict(
        dataset="rxte",
        label="RXTE/PCA (Revnivtsev et al. 2003)",
        paper=(
            "Revnivtsev, M., Gilfanov, M., Sunyaev, R., Jahoda, K., Markwardt, C. 2003, "
            "A&A, 411, 329 (CXB spectrum 3-20 keV measured with RXTE/PCA)"
        ),
        instrument="RXTE PCA (Proportional Counter Array), 3-20 keV",
        source_of_numbers=AJELLO_SOURCE.format(fname="XTE.dat"),
        selection=(
            "used_in_fit = bins whose lower edge is below 15 keV: the 34 points with centres "
            "3.21-15.18 keV (bins 3.03-15.36 keV); the 11 points at 15.55-19.24 keV are kept but "
            "not used. Above ~15 keV the PCA CXB spectrum is dominated by instrument-background "
            "systematics (errors grow from 13 % to 25 % and the points scatter up to 70, far "
            "above BAT at the same energies); Ananna et al. 2019 (Table 5) fitted 34 RXTE "
            "points. Note: a cut on bin centres 'E <= 15 keV' keeps only 33 points; the 34th "
            "point (15.18 keV, bin 14.996-15.364 keV) starts just below 15 keV, so the cut is "
            "written on the lower bin edge (equivalently: bin centre < 15.3 keV)."
        ),
        a19_reference_count=34,
    )
    return build_table(e, e_lo, e + a[:, 2], a[:, 3], a[:, 4], a[:, 5], used, meta)


def make_cosmos(src: Path) -> Table:
    d = read_digitized(src / "literature_digitized" / "Cappelluti2017.dat")
    assert len(d) == 31
    e, val, up, lo = d.T
    # 1.5 keV outlier of A19 Fig. 11: the point nearest the Al K-alpha instrumental line (1.486 keV)
    i_out = int(np.argmin(np.abs(e - 1.486)))
    used = (e >= 0.6) & (e <= 6.0)
    used[i_out] = False
    assert used.sum() == 25, used.sum()
    meta = dict(
        dataset="chandra_cosmos",
        label="Chandra COSMOS (Cappelluti et al. 2017)",
        paper=(
            "Cappelluti, N., Li, Y., Ricarte, A., et al. 2017, ApJ, 837, 19, 'The Chandra "
            "COSMOS Legacy Survey: Energy Spectrum of the Cosmic X-Ray Background and "
            "Constraints on Undetected Populations'"
        ),
        instrument="Chandra ACIS-I (COSMOS-Legacy survey field)",
        source_of_numbers=CAPPELLUTI_SOURCE,
        selection=(
            f"used_in_fit = 0.6 keV <= E <= 6 keV, without the point at {e[i_out]:.3f} keV: 25 "
            "points 0.64-5.70 keV. Ananna et al. 2019 (Table 5, Fig. 11) fitted 25 Chandra "
            "COSMOS points after removing 'one outlying data point at 1.5 keV ... due to "
            "incorrect background subtraction'; they do not list the others. Our choices: "
            f"(1) the 1.5 keV outlier is the point at {e[i_out]:.3f} keV, nearest the Al K-alpha "
            "fluorescence line (1.486 keV) of the ACIS instrumental background, the likeliest "
            "place for a background-subtraction error (the next point, 1.569 keV, is 0.08 keV "
            "away); (2) the 3 points below 0.6 keV are dropped: they sit on the O K edge "
            "(0.54 keV) of the ACIS optical-blocking-filter contamination layer and on the "
            "Galactic O VII foreground line (0.57 keV), the 0.548 keV point (4.6 +/- 2.5) is "
            "unphysically low, and the AGN model has no Galactic foreground; (3) the 2 points "
            "above 6 keV (6.17, 6.68 keV) are dropped: the Chandra effective area falls steeply "
            "there, the particle background dominates (errors 18-29 %), and RXTE covers this "
            "range with much smaller errors. The digitized source holds 31 points (A19 had 26 "
            "before the outlier cut), so the A19 points are not exactly recoverable."
        ),
        a19_reference_count=25,
        known_issues=KNOWN_ISSUES + (
            " Values and errors are digitized from a figure (reading precision ~1 %); the "
            "asymmetric errors are as read from the figure and may partly reflect the "
            "digitization rather than a true asymmetry."
        ),
    )
    nan = np.full_like(e, np.nan)
    return build_table(e, nan, nan, val, val - lo, up - val, used, meta)


def make_asca(src: Path) -> Table:
    a = read_xspec_serr(src / "ajello_compilation" / "ASCA.dat")
    g = read_digitized(src / "literature_digitized" / "gendreau1995.dat")
    assert len(a) == 45 and len(g) == 45
    # The Ajello compilation does not name the ASCA paper; the independent digitization of
    # Gendreau et al. 1995 matches it point by point, which identifies it.
    de = np.max(np.abs(a[:, 0] / g[:, 0] - 1))
    dv = np.max(np.abs(a[:, 3] / g[:, 1] - 1))
    assert de < 0.01 and dv < 0.01, (de, dv)
    e = a[:, 0]
    used = np.zeros(len(e), bool)
    meta = dict(
        dataset="asca",
        label="ASCA SIS (Gendreau et al. 1995)",
        paper=(
            "Gendreau, K. C., Mushotzky, R., Fabian, A. C., et al. 1995, PASJ, 47, L5, "
            "'ASCA Observations of the Spectrum of the X-Ray Background'"
        ),
        instrument="ASCA SIS (Solid-state Imaging Spectrometer)",
        source_of_numbers=(
            AJELLO_SOURCE.format(fname="ASCA.dat")
            + ". The compilation does not name the ASCA paper; it is identified as Gendreau "
            "et al. 1995 by the independent digitization gendreau1995.dat (repository "
            "sophie-newman/shen2020), which matches it point by point (45 points, energies "
            f"within {100 * de:.2f} %, values within {100 * dv:.2f} %). The tabulated "
            "compilation is used rather than the digitization because it gives bin widths and "
            "is not limited by plot-reading precision; the digitization's asymmetric errors "
            "are within a few % of the compilation's symmetric ones."
        ),
        selection=(
            "used_in_fit = False for all 45 points: Ananna et al. 2019 show ASCA in Fig. 11 and "
            "list it in Table 2 but fit only Chandra COSMOS, RXTE and Swift/BAT (Table 5). Kept "
            "for plots and validation; load with selected=False. Below ~1 keV these points "
            "include Galactic foreground emission."
        ),
        a19_reference_count=0,
    )
    return build_table(e, e - a[:, 1], e + a[:, 2], a[:, 3], a[:, 4], a[:, 5], used, meta)


OUTPUTS = {
    "chandra_cosmos_cappelluti2017.ecsv": make_cosmos,
    "rxte_revnivtsev2003.ecsv": make_rxte,
    "swift_bat_ajello2008.ecsv": make_bat,
    "asca_gendreau1995.ecsv": make_asca,
}


def main(argv: list[str]) -> int:
    src = Path(argv[1]) if len(argv) > 1 else DEFAULT_SOURCE
    if not src.is_dir():
        print(f"source folder {src} not found; pass the shared data/cxb folder", file=sys.stderr)
        return 2
    for fname, make in OUTPUTS.items():
        t = make(src)
        t.write(HERE / fname, format="ascii.ecsv", overwrite=True)
        print(f"wrote {fname}: {len(t)} points, {t.meta['n_used_in_fit']} used in fit")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv))
