"""The named spectral models: one registry mapping each name to its components.

``SPECTRAL_MODELS`` lists the names (the ``spectral_model`` setting); :func:`make_components`
builds a model's components, optionally with an external XSPEC torus table in place of the
built-in torus. Components are built without reading the Green's tables: they hold
:class:`~popsynth.mc.shipped.ShippedTable` names, which cache keys hash as files;
:func:`load_tables` reads them when a spectral table must be computed (a cache miss).
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, NamedTuple

from ..errors import PopsynthError
from ..io.ogip import read_table_model
from .component import Component, Scattered, Transmitted
from .external_torus import ExternalTorus
from .reprocessed import Reflection, TorusReprocessed
from .xspec_table import TableModel


class SpectralModel(NamedTuple):
    """One registry entry: ``build()`` -> its components; ``reflection_absorber``: the absorber of
    the reflection kept next to an external torus table ("wabs" or "full"; None: the model has
    no torus, so an external torus table cannot replace it)."""

    build: Callable[[], list[Component]]
    reflection_absorber: str | None
    description: str


_REGISTRY: dict[str, SpectralModel] = {
    "a19": SpectralModel(
        lambda: [Scattered(), Transmitted(), Reflection(), TorusReprocessed()], "wabs",
        "A19 section 5.2: f_scatt * cutoffpl + wabs * pexmon + bntorus * highecut"),
    "a19-incident-cutoff": SpectralModel(
        lambda: [Scattered(), Transmitted(), Reflection(), TorusReprocessed(cutoff="incident")], "wabs",
        "as a19, the torus reprocessing the cutoff power law itself"),
    "a19-full-absorber": SpectralModel(
        lambda: [Scattered(), Transmitted(), Reflection(absorber="full"), TorusReprocessed()], "full",
        "as a19, the reflection also Compton-attenuated by the line-of-sight column"),
    "transmitted": SpectralModel(
        lambda: [Scattered(), Transmitted()], None,
        "transmitted + scattered only (no reflection, no torus reprocessing)"),
}

SPECTRAL_MODELS = tuple(_REGISTRY)


def make_components(model: str = "a19", torus_table: "str | Path | TableModel | ExternalTorus | None" = None
                    ) -> list[Component]:
    """The components of a named spectral model.

    The Reflection and TorusReprocessed components name the shipped Green's tables
    (:class:`~popsynth.mc.shipped.ShippedTable`) without reading them; :func:`load_tables` (or
    their first spectrum) reads them.

    ``torus_table``: path of an XSPEC torus atable, read here (or a
    :class:`~popsynth.spectra.xspec_table.TableModel`, or an
    :class:`~popsynth.spectra.external_torus.ExternalTorus`) that replaces the built-in torus
    (transmitted beam and reprocessing) in the a19 models: the components are then
    [Scattered, Reflection (the model's absorber), ExternalTorus].

    - "a19" (default): A19 section 5.2, f_scatt * cutoffpl + wabs * pexmon + bntorus * highecut:
      :class:`~popsynth.spectra.component.Scattered`,
      :class:`~popsynth.spectra.component.Transmitted` (the torus's line-of-sight beam), the slab
      :class:`~popsynth.spectra.reprocessed.Reflection` at 30 deg with wabs absorption, and the
      :class:`~popsynth.spectra.reprocessed.TorusReprocessed` scattered light and lines with
      A19's inclinations and highecut;
    - "a19-incident-cutoff": as a19, the torus reprocessing the cutoff power law itself;
    - "a19-full-absorber": as a19, the reflection also Compton-attenuated by the line-of-sight
      column (A19's wabs lets the reflection of Compton-thick sources pass above 10 keV);
    - "transmitted": transmitted + scattered only (no reflection, no torus reprocessing).
    """
    entry = _REGISTRY.get(model)
    if entry is None:
        raise PopsynthError(f"unknown spectral model '{model}'", f"use one of {', '.join(SPECTRAL_MODELS)}")
    if torus_table is None:
        return entry.build()
    if entry.reflection_absorber is None:
        raise PopsynthError("an external torus table needs a model with a torus",
                            "use `spectral_model` 'a19' (or drop `torus_table`)")
    if isinstance(torus_table, ExternalTorus):
        torus = torus_table
    else:  # the FITS file is read here, at the edge; the component receives the table
        torus = ExternalTorus(torus_table if isinstance(torus_table, TableModel) else read_table_model(torus_table))
    return [Scattered(), Reflection(absorber=entry.reflection_absorber), torus]


def default_components() -> list[Component]:
    """Components of the default (A19) spectrum: see :func:`make_components`."""
    return make_components("a19")


def load_tables(components: list[Component]) -> list[Component]:
    """Read the input tables the components name (:meth:`Component.load_tables`: the shipped
    Green's tables, lazily, once per process); returns ``components``, now holding them."""
    for c in components:
        c.load_tables()
    return components
