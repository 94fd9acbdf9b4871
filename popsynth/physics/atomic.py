"""K-shell atomic data: edges, fluorescence yields and fluorescence lines (Fe, Ni, ...).

All numbers come from ``xraydb`` (the Elam, Ravel & Sieber 2002, Radiat. Phys. Chem. 63,
121 compilation shipped inside the package; nothing is downloaded):

* K-edge energy, K-shell fluorescence yield omega_K and K-edge jump ratio J from
  ``xraydb.xray_edge(el, "K")``. For Fe xraydb gives omega_K = 0.351 (Ni 0.412); Bambynek
  et al. 1972 (Rev. Mod. Phys. 44, 716) and Krause 1979 (J. Phys. Chem. Ref. Data 8, 307)
  give 0.34 for Fe (Krause: Ni 0.406), i.e. xraydb is ~3 % higher.
* Line energies and relative intensities (branching fractions of a K vacancy that decays
  radiatively; they sum to 1 over the K lines) from ``xraydb.xray_lines(el, "K")``.

A line group ("K alpha" = K-L1 + K-L2 + K-L3, "K beta" = every K-M and K-N transition) is
collapsed to one line at the intensity-weighted mean energy. Its ``yield_`` is the number of
line photons emitted per K-shell vacancy: omega_K times the summed branching fraction.
Caveat: xraydb's K beta / K alpha branching ratio for Fe is 0.143; measured values for neutral
Fe (photo-ionisation) and the value adopted in MYTorus (Murphy & Yaqoob 2009, MNRAS 397, 1549)
are lower, about 0.13-0.135, so the Fe K beta line here is ~6-8 % stronger than in those models.
Nothing here depends on temperature or ionisation: neutral atoms only.
"""

from __future__ import annotations

from functools import lru_cache
from typing import NamedTuple

from ..errors import PopsynthError
from .abundances import ELEMENTS


class FluorescenceLine(NamedTuple):
    """One K-shell fluorescence line (group) of a neutral atom.

    name: e.g. "Fe Ka", "Fe Kb", "Ni Ka"; element: symbol; energy_keV: intensity-weighted mean
    line energy (keV); edge_keV: K-edge energy of the element (keV), the threshold above which
    absorption can produce the line; yield_: line photons per K-shell photo-ionisation
    (dimensionless) = K fluorescence yield * branching fraction of the group.
    """

    name: str
    element: str
    energy_keV: float
    edge_keV: float
    yield_: float


class KEdge(NamedTuple):
    """K-shell edge data of a neutral atom: energy (keV), fluorescence yield omega_K, jump ratio J.

    J = sigma_photo(E_K+) / sigma_photo(E_K-), so a fraction (J - 1) / J of the photoabsorption
    just above the edge is by the K shell.
    """

    energy_keV: float
    fluorescence_yield: float
    jump_ratio: float


def canonical_element(element: str) -> str:
    """Element symbol in canonical case ("fe" -> "Fe"); PopsynthError unless it is H..Zn."""
    sym = str(element).strip().capitalize()
    if sym not in ELEMENTS:
        raise PopsynthError(
            f"unknown or unsupported element '{element}'",
            "use a chemical symbol from H to Zn (Z = 1-30), e.g. 'Fe'",
        )
    return sym


@lru_cache(maxsize=None)
def k_edge(element: str) -> KEdge:
    """K-edge energy (keV), K fluorescence yield and K jump ratio of ``element`` (xraydb/Elam).

    Raises PopsynthError for H and He-like light elements where xraydb has no K-edge entry
    with a jump ratio, or for symbols outside H..Zn.
    """
    import xraydb

    sym = canonical_element(element)
    edge = xraydb.xray_edge(sym, "K")
    if edge is None or not edge.jump_ratio or edge.jump_ratio <= 1.0:
        raise PopsynthError(
            f"xraydb has no K-edge data with a jump ratio for {sym}",
            "use an element from Li to Zn",
        )
    return KEdge(float(edge.energy) / 1000.0, float(edge.fyield), float(edge.jump_ratio))


def _line_group(element: str, prefix: str, label: str) -> FluorescenceLine | None:
    import xraydb

    sym = canonical_element(element)
    edge = k_edge(sym)
    lines = xraydb.xray_lines(sym, "K") or {}
    group = [ln for key, ln in lines.items() if key.startswith(prefix) and ln.intensity > 0]
    if not group:
        return None
    weight = sum(float(ln.intensity) for ln in group)
    energy_ev = sum(float(ln.energy) * float(ln.intensity) for ln in group) / weight
    return FluorescenceLine(
        name=f"{sym} {label}",
        element=sym,
        energy_keV=energy_ev / 1000.0,
        edge_keV=edge.energy_keV,
        yield_=edge.fluorescence_yield * weight,
    )


def fluorescence_lines(elements=("Fe", "Ni")) -> list[FluorescenceLine]:
    """K alpha and K beta fluorescence lines of each element in ``elements`` (neutral atoms).

    elements: iterable of chemical symbols (H..Zn; in practice Na and heavier have lines in
    the X-ray band). Returns a list in the order given, K alpha before K beta for each element
    (K beta is left out where xraydb lists none, e.g. O and Ne). For the default ("Fe", "Ni"):
    Fe Ka 6.40 keV (yield_ 0.307), Fe Kb 7.06 keV (0.044), Ni Ka 7.47 keV (0.359),
    Ni Kb 8.27 keV (0.053); the edges are 7.112 and 8.333 keV.

    A photon absorbed by the K shell of that element (probability per absorption:
    ``crosssections.sigma_photo_kshell(el, E) / crosssections.sigma_photo(E)``) is re-emitted
    isotropically as line ``i`` with probability ``yield_`` of line i.
    """
    if isinstance(elements, str):
        elements = (elements,)
    out: list[FluorescenceLine] = []
    for el in elements:
        for prefix, label in (("Ka", "Ka"), ("Kb", "Kb")):
            line = _line_group(el, prefix, label)
            if line is not None:
                out.append(line)
    return out
