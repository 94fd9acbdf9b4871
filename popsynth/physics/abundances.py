"""Elemental abundance tables: number of atoms of each element per hydrogen atom.

Three tables, with the names XSPEC uses for them (``abund`` command):

``"angr"``  Anders, E. & Grevesse, N. 1989, Geochim. Cosmochim. Acta 53, 197, Table 2
            (solar photosphere), given there as log eps = 12 + log10(N_el / N_H).
            The default of XSPEC and of pexrav/pexmon (Magdziarz & Zdziarski 1995; Nandra
            et al. 2007), hence of the Ananna et al. 2019 spectra.
``"aneb"``  Anders, E. & Ebihara, M. 1982, Geochim. Cosmochim. Acta 46, 2363, Table 1
            (solar system), given there as atoms per 1e6 Si atoms (H = 2.72e10).
            The abundances behind the Morrison & McCammon 1983 (ApJ 270, 119) cross
            section (XSPEC ``wabs``).
``"wilm"``  Wilms, J., Allen, A. & McCray, R. 2000, ApJ 542, 914, Table 2 (total
            interstellar-medium abundances, gas + grains), given there as 12 + log10(N_el / N_H).
            Elements they leave out (Li, Be, B, F, K, Sc, V, Cu, Zn) are absent here
            (abundance zero), as in that paper.

Only elements H to Zn (Z = 1-30) are tabulated: heavier elements have no measurable effect
on the X-ray opacity of gas with these compositions. Every value is dimensionless (number
of atoms per H atom); the ``"H"`` entry is 1 exactly.
"""

from __future__ import annotations

from ..errors import PopsynthError

# Element symbols H..Zn in order of atomic number Z (index + 1 = Z).
ELEMENTS: tuple[str, ...] = (
    "H", "He", "Li", "Be", "B", "C", "N", "O", "F", "Ne",
    "Na", "Mg", "Al", "Si", "P", "S", "Cl", "Ar", "K", "Ca",
    "Sc", "Ti", "V", "Cr", "Mn", "Fe", "Co", "Ni", "Cu", "Zn",
)  # fmt: skip

# Anders & Grevesse 1989, Table 2, photospheric log eps (12 + log10 N/N_H). Ne and Ar have no
# photospheric lines; A&G adopt 8.09 and 6.56 (their Table 2 "photosphere" column, from
# solar-wind / coronal and meteoritic arguments).
_ANGR_LOG_EPS: dict[str, float] = {
    "H": 12.00, "He": 10.99, "Li": 1.16, "Be": 1.15, "B": 2.60,
    "C": 8.56, "N": 8.05, "O": 8.93, "F": 4.56, "Ne": 8.09,
    "Na": 6.33, "Mg": 7.58, "Al": 6.47, "Si": 7.55, "P": 5.45,
    "S": 7.21, "Cl": 5.50, "Ar": 6.56, "K": 5.12, "Ca": 6.36,
    "Sc": 3.10, "Ti": 4.99, "V": 4.00, "Cr": 5.67, "Mn": 5.39,
    "Fe": 7.67, "Co": 4.92, "Ni": 6.25, "Cu": 4.21, "Zn": 4.60,
}  # fmt: skip

# Anders & Ebihara 1982, Table 1, solar-system abundances in atoms per 1e6 Si atoms.
_ANEB_PER_1E6_SI: dict[str, float] = {
    "H": 2.72e10, "He": 2.18e9, "Li": 59.7, "Be": 0.78, "B": 24.0,
    "C": 1.21e7, "N": 2.48e6, "O": 2.01e7, "F": 843.0, "Ne": 3.76e6,
    "Na": 5.70e4, "Mg": 1.075e6, "Al": 8.49e4, "Si": 1.00e6, "P": 1.04e4,
    "S": 5.15e5, "Cl": 5240.0, "Ar": 1.04e5, "K": 3770.0, "Ca": 6.11e4,
    "Sc": 33.8, "Ti": 2400.0, "V": 295.0, "Cr": 1.34e4, "Mn": 9510.0,
    "Fe": 9.00e5, "Co": 2250.0, "Ni": 4.93e4, "Cu": 514.0, "Zn": 1260.0,
}  # fmt: skip

# Wilms, Allen & McCray 2000, Table 2, ISM abundances 12 + log10(N/N_H) (total, gas + dust).
_WILM_LOG_EPS: dict[str, float] = {
    "H": 12.00, "He": 10.99, "C": 8.38, "N": 7.88, "O": 8.69, "Ne": 7.94,
    "Na": 6.16, "Mg": 7.40, "Al": 6.33, "Si": 7.27, "P": 5.42, "S": 7.09,
    "Cl": 5.12, "Ar": 6.41, "Ca": 6.20, "Ti": 4.81, "Cr": 5.51, "Mn": 5.34,
    "Fe": 7.43, "Co": 4.92, "Ni": 6.05,
}  # fmt: skip


def _from_log_eps(table: dict[str, float]) -> dict[str, float]:
    return {el: 10.0 ** (table[el] - 12.0) for el in ELEMENTS if el in table}


def _from_per_si(table: dict[str, float]) -> dict[str, float]:
    h = table["H"]
    return {el: table[el] / h for el in ELEMENTS if el in table}


ABUNDANCE_TABLES: dict[str, dict[str, float]] = {
    "angr": _from_log_eps(_ANGR_LOG_EPS),
    "aneb": _from_per_si(_ANEB_PER_1E6_SI),
    "wilm": _from_log_eps(_WILM_LOG_EPS),
}
"""Number abundance per H atom (dimensionless), keyed by table name then element symbol."""

ABUNDANCE_REFERENCES: dict[str, str] = {
    "angr": "Anders & Grevesse 1989, Geochim. Cosmochim. Acta 53, 197 (solar photosphere)",
    "aneb": "Anders & Ebihara 1982, Geochim. Cosmochim. Acta 46, 2363 (solar system; used by "
    "Morrison & McCammon 1983)",
    "wilm": "Wilms, Allen & McCray 2000, ApJ 542, 914 (interstellar medium)",
}


def abundances(name: str = "angr") -> dict[str, float]:
    """Abundance table ``name`` as a new dict {element symbol: atoms per H atom}.

    ``name`` is one of ``"angr"``, ``"aneb"``, ``"wilm"`` (case-insensitive); elements are
    H..Zn with non-zero tabulated abundance, ordered by atomic number. Raises PopsynthError
    for any other name.
    """
    key = str(name).strip().lower()
    if key not in ABUNDANCE_TABLES:
        valid = ", ".join(f"'{k}'" for k in ABUNDANCE_TABLES)
        raise PopsynthError(
            f"unknown abundance table '{name}'",
            f"use one of {valid} (Anders & Grevesse 1989, Anders & Ebihara 1982, "
            "Wilms et al. 2000)",
        )
    return dict(ABUNDANCE_TABLES[key])
