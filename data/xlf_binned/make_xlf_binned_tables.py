"""Write the binned hard X-ray luminosity functions of data/xlf_binned/ as ECSV tables.

Run from the repository root:  python data/xlf_binned/make_xlf_binned_tables.py

Inputs (this folder, plain-text transcriptions, provenance in README.md):

* ``ueda14_fig10_transcription.txt``: the binned XLF points of Ueda et al. 2014 (ApJ 786, 104),
  Figs. 10 (hard-band selected) and 11 (soft-band selected), which the paper gives only as figures.
  Blocks headed "<selection> <z_lo> <z_hi>", then rows "log L  phi  phi_lo  phi_hi" (phi_lo and
  phi_hi are the 1-sigma lower and upper bounds, not distances).
* ``miyaji15_table4_transcription.txt``: Table 4 of Miyaji et al. 2015 (ApJ 804, 104), rows
  "z_min z_max z_mean logL_min logL_max logL_c N_eff phi phi_err".

Outputs: ``ueda14_binned_xlf_2_10keV.ecsv`` and ``miyaji15_binned_xlf_2_10keV.ecsv`` with the
columns read by :func:`popsynth.compare.load_binned_xlf`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from astropy.table import Table

HERE = Path(__file__).resolve().parent
PHI_UNIT = "Mpc-3"  # per dex of L: dPhi/dlog L, Mpc^-3 dex^-1 (h = 0.7)

COMMON_META = {
    "quantity": "dPhi/dlog L_X: comoving number density per dex of intrinsic (absorption-corrected) rest-frame "
                "2-10 keV luminosity, of Compton-thin AGN (log N_H < 24), Mpc^-3 dex^-1",
    "cosmology": "flat LambdaCDM, H0 = 70 km/s/Mpc, Omega_m = 0.3 (the papers' own; popsynth's too, so no conversion)",
    "phi_unit_note": "the ECSV unit of phi, err_lo and err_hi is written Mpc-3; it is per dex of L (dex^-1)",
    "generated_by": "data/xlf_binned/make_xlf_binned_tables.py",
}


def _ueda14() -> Table:
    rows, sel, zlo, zhi = [], None, None, None
    dropped = []
    for line in (HERE / "ueda14_fig10_transcription.txt").read_text().splitlines():
        parts = line.split()
        if not parts:
            continue
        if parts[0] in ("hard", "soft"):
            sel, zlo, zhi = parts[0], float(parts[1]), float(parts[2])
            continue
        logl, phi, lo, hi = map(float, parts)
        if not (0 < lo < phi < hi):  # one row (soft, z 3-4, log L 45.685) has bounds (0, phi): no 1-sigma range
            dropped.append(f"{sel} z {zlo:g}-{zhi:g} log L {logl:g}")
            continue
        rows.append((sel, zlo, zhi, logl, phi, float(f"{phi - lo:.6g}"), float(f"{hi - phi:.6g}")))
    t = Table(rows=rows, names=("selection", "z_lo", "z_hi", "log_l", "phi", "err_lo", "err_hi"),
              dtype=(str, float, float, float, float, float, float))
    t["log_l"].unit = "dex(erg / s)"
    for c in ("phi", "err_lo", "err_hi"):
        t[c].unit = PHI_UNIT
    t["selection"].description = "hard: sample selected above 2 keV, U14 Fig. 10; soft: sample selected in 0.5-2 keV, U14 Fig. 11"
    t["log_l"].description = "log10 of the intrinsic rest-frame 2-10 keV luminosity at the plotted point (erg/s); bin edges are not given"
    t["phi"].description = "binned XLF (N_obs/N_mdl method), de-absorbed to all Compton-thin AGN"
    t["err_lo"].description = "phi minus its 1-sigma lower bound"
    t["err_hi"].description = "1-sigma upper bound minus phi"
    t.meta.update({
        "name": "ueda14_binned_xlf_2_10keV",
        "label": "Ueda et al. 2014 binned XLF (hard- and soft-band samples)",
        "paper": "Ueda, Y., Akiyama, M., Hasinger, G., Miyaji, T., & Watson, M. G. 2014, ApJ, 786, 104",
        "source_of_numbers": "U14 publish the binned points only as figures (Figs. 10-11; no table of them; A19 Fig. 9 "
                             "plots the same points). Machine-readable values with six significant digits are in "
                             "repository sophie-newman/shen2020 (the data compilation of Shen et al. 2020, MNRAS 495, "
                             "3252), files data/ueda2014*/{hard,soft}-z*.dat (commits cb92b12a, fe64645b, 3aae390d); "
                             "transcribed into ueda14_fig10_transcription.txt and converted here",
        "columns_of_source": "log L, phi, 1-sigma lower bound, 1-sigma upper bound (bounds, not distances: a bin "
                             "with one source has bounds 0.17 and 3.3 times phi, Gehrels 1986 for n = 1)",
        "conversion": "err_lo = phi - lower bound, err_hi = upper bound - phi; nothing else",
        "dropped_rows": dropped,
        "verification": "checked against U14's own LDDE (popsynth.xlf.ldde_ueda14, U14 Table 4) at the centre of "
                        "each redshift bin in tests/test_compare.py; the points scatter about the model as in U14 "
                        "Fig. 10",
        "n_points": len(t),
        **COMMON_META,
    })
    return t


def _miyaji15() -> Table:
    raw = np.loadtxt(HERE / "miyaji15_table4_transcription.txt")
    t = Table()
    for i, name in enumerate(("z_lo", "z_hi", "z_mean", "log_l_lo", "log_l_hi", "log_l", "n_eff", "phi")):
        t[name] = raw[:, i]
    t["err_lo"] = raw[:, 8]
    t["err_hi"] = raw[:, 8]
    for c in ("log_l_lo", "log_l_hi", "log_l"):
        t[c].unit = "dex(erg / s)"
    for c in ("phi", "err_lo", "err_hi"):
        t[c].unit = PHI_UNIT
    t["z_mean"].description = "mean redshift of the bin's sources (Table 4)"
    t["log_l"].description = "log L_c of Table 4: the luminosity the binned value refers to"
    t["n_eff"].description = "effective number of AGN in the bin (Table 4; photometric-redshift PDFs make it fractional)"
    t["phi"].description = "binned XLF, N_obs/N_mdl estimator, absorption-corrected to Compton-thin AGN (see README)"
    t["err_lo"].description = "1-sigma error of Table 4 (symmetric)"
    t["err_hi"].description = "1-sigma error of Table 4 (symmetric)"
    t.meta.update({
        "name": "miyaji15_binned_xlf_2_10keV",
        "label": "Miyaji et al. 2015 binned XLF (Table 4)",
        "paper": "Miyaji, T., Hasinger, G., Salvato, M., et al. 2015, ApJ, 804, 104",
        "source_of_numbers": "Table 4 of Miyaji et al. 2015 (binned XLF, 2-10 keV intrinsic luminosity, N_obs/N_mdl "
                             "estimator); the machine-readable copy used is pubtools/data/miyaji2015_table4.dat of "
                             "repository sophie-newman/shen2020 (commit 3aae390d), transcribed into "
                             "miyaji15_table4_transcription.txt",
        "conversion": "none (phi and its error as tabulated, per dex, h = 0.7)",
        "verification": "bin centres inside their bins, errors positive; values checked against the Ueda et al. "
                        "2014 LDDE (an independent fit to overlapping data) in tests/test_compare.py",
        "n_points": len(t),
        **COMMON_META,
    })
    return t


def main() -> None:
    for t in (_ueda14(), _miyaji15()):
        path = HERE / f"{t.meta['name']}.ecsv"
        t.write(path, format="ascii.ecsv", overwrite=True)
        print(f"wrote {path} ({len(t)} rows)")


if __name__ == "__main__":
    main()
