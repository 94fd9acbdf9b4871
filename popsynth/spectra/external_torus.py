"""An external XSPEC torus table (torus1006.fits, UXCLUMPY, borus02, ...) as a spectral component.

:class:`ExternalTorus` is the one adapter between such a table and popsynth: it feeds each
table parameter from a popsynth quantity (:data:`TORUS_PARAMETERS`), evaluates the table per
bin (:meth:`ExternalTorus.binned`) and is a :class:`~popsynth.spectra.component.Component`
(:meth:`ExternalTorus.spectrum`) that replaces the built-in torus (transmitted beam and
reprocessing) in the a19 models (:func:`popsynth.spectra.registry.make_components`).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Callable, Mapping

import torch

from ..errors import PopsynthError
from ..io.ogip import read_table_model
from ..mc.shipped import ShippedTable
from ..mc.table import GreensTable
from .component import Component, Transmitted
from .primary import band_energy_flux
from .reprocessed import TorusReprocessed, a19_torus_inclination
from .xspec_table import TableModel, _f64

__all__ = ["ExternalTorus", "TORUS_PARAMETERS"]


def _norm(s: str) -> str:
    return re.sub(r"[^a-z0-9]", "", s.lower())


def _deg_to_cos(d: torch.Tensor) -> torch.Tensor:
    return torch.cos(torch.deg2rad(d))


# popsynth quantity -> (table-name aliases after _norm, conversion popsynth -> table, note)
_Conv = Callable[[torch.Tensor], torch.Tensor]
TORUS_PARAMETERS: list[tuple[str, tuple[str, ...], _Conv, str]] = [
    ("nh", ("nh", "nh22", "nhtor", "nhlos"), lambda v: v / 1e22, "N_H [cm^-2] -> N_H/1e22"),
    ("nh", ("lognhtor", "lognh", "lognhlos"), torch.log10, "N_H [cm^-2] -> log10 N_H"),
    ("photon_index", ("phoindex", "gamma", "photonindex"), lambda v: v, "Gamma"),
    ("e_cut", ("ecut", "ecutoff", "foldenergy", "efold"), lambda v: v, "E_cut [keV]"),
    ("theta_inc", ("thetainc", "thinc", "incl", "inclination", "incang"), lambda v: v,
     "inclination [deg]"),
    ("theta_inc", ("costhinc", "costhetainc", "cosincl", "cosinc", "costheta"), _deg_to_cos,
     "inclination [deg] -> cos"),
    ("theta_tor", ("thetator", "thtor", "openingangle", "thetaopen"), lambda v: v,
     "torus opening angle [deg]"),
    ("covering_factor", ("cftor", "cf", "coveringfactor", "fcov"), lambda v: v,
     "covering factor"),
    ("tor_sigma", ("torsigma",), lambda v: v, "UXCLUMPY TORsigma [deg]"),
    ("ctk_cover", ("ctkcover",), lambda v: v, "UXCLUMPY CTKcover"),
    ("a_fe", ("afe", "feabund", "feabundance"), lambda v: v, "iron abundance"),
]


class ExternalTorus(Component):
    """An XSPEC torus table in place of the built-in torus.

    Table parameters: each is fed from a popsynth quantity through :data:`TORUS_PARAMETERS`
    (names matched case- and punctuation-insensitively; e.g. BNTorus ``nH`` [1e22 cm^-2]
    <- ``nh`` [cm^-2] / 1e22, borus02 ``logNHtor`` <- log10 ``nh``, ``cos(thInc)`` <- cos of
    ``theta_inc`` in degrees), from ``mapping`` (table name -> (popsynth quantity, function))
    for tables with other names, or held fixed via ``fixed`` (table name -> value). The
    table's redshift is the ``z`` argument of :meth:`binned`, never a table parameter.
    Parameter values outside the table grid raise unless ``out_of_range="clamp"``.

    As a component (:meth:`spectrum`) the table replaces both the transmitted beam and the
    torus reprocessing (such tables include the line-of-sight beam), so use it with
    :class:`~popsynth.spectra.component.Scattered` and
    :class:`~popsynth.spectra.reprocessed.Reflection` only
    (:func:`popsynth.spectra.registry.make_components` does this for ``torus_table=...``).
    Conventions:

    * normalisation: the table's norm is the photon flux density of the power law at 1 keV
      (the BNTorus / borus convention), set to the primary's K = 1 / L(2-10 keV) integral so
      the output is per erg/s of intrinsic L(2-10), like every other component;
    * high-energy cutoff: ``cutoff="highecut"`` multiplies by exp(-E/E_cut) (A19's
      ``bntorus * highecut``); "table" leaves it to a table that has an E_cut parameter;
    * quantities fed to the table: nh (cm^-2, the XLF cell's column), photon_index, theta_tor
      and theta_inc (deg; ``inclination``, default the A19 rules
      :func:`~popsynth.spectra.reprocessed.a19_torus_inclination`) and e_cut (keV);
    * outside the table's energy range (BNTorus: 0.1-320 keV) the built-in transmitted beam
      and torus reprocessing are used (``fill="builtin"``, with a warning), never silent zeros;
      ``fill="zero"`` follows XSPEC (no photons there, with a warning).

    ``table``: a :class:`~popsynth.spectra.xspec_table.TableModel` (or the path of its FITS file,
    read here with :func:`popsynth.io.ogip.read_table_model`). ``fill_table``: the torus Green's
    table of the built-in fill (a :class:`~popsynth.mc.table.GreensTable` or
    :class:`~popsynth.mc.shipped.ShippedTable`; default the shipped torus, read when first needed).
    """

    name = "torus"

    def __init__(
        self,
        table: TableModel | str | Path,
        fixed: Mapping[str, float] | None = None,
        mapping: Mapping[str, tuple[str, Callable[[torch.Tensor], torch.Tensor]]] | None = None,
        out_of_range: str = "raise",
        use_defaults: bool = False,
        *,
        inclination: Callable | None = None,
        cutoff: str = "highecut",
        fill: str = "builtin",
        fill_table: GreensTable | ShippedTable | None = None,
    ):
        if cutoff not in ("highecut", "table"):
            raise PopsynthError(f"unknown cutoff treatment '{cutoff}' for an external torus",
                                "use 'highecut' (A19) or 'table' (the table has an E_cut parameter)")
        if fill not in ("builtin", "zero"):
            raise PopsynthError(f"unknown fill '{fill}'", "use 'builtin' or 'zero'")
        self.inclination = inclination or a19_torus_inclination
        self.cutoff = cutoff
        self.fill = fill
        # the built-in transmitted beam and torus beyond the table's energies (fill="builtin")
        self._builtin = (Transmitted(), TorusReprocessed(table=fill_table)) if fill == "builtin" else None
        self.table = table if isinstance(table, TableModel) else read_table_model(table)
        if self.table.kind != "add":
            raise PopsynthError(
                f"torus table '{self.table.name}' is {self.table.kind}, not additive",
                "an external torus must be an atable (ADDMODEL=T)",
            )
        self.out_of_range = out_of_range
        self.use_defaults = use_defaults
        self.fixed = dict(self.table._lookup(dict(fixed or {})))
        user_map = dict(self.table._lookup(dict(mapping or {})))
        self.links: dict[str, tuple[str, Callable, str]] = {}
        for tname in self.table.param_names + self.table.add_param_names:
            if tname in self.fixed:
                continue
            if tname in user_map:
                q, fn = user_map[tname]
                self.links[tname] = (q, fn, "user mapping")
                continue
            for q, aliases, fn, note in TORUS_PARAMETERS:
                if _norm(tname) in aliases:
                    self.links[tname] = (q, fn, note)
                    break
        unlinked = [
            n for n in self.table.param_names + self.table.add_param_names
            if n not in self.links and n not in self.fixed
        ]
        if unlinked and not use_defaults:
            raise PopsynthError(
                f"torus table '{self.table.name}': no popsynth quantity feeds parameter(s) "
                f"{unlinked}",
                "pass fixed={name: value}, mapping={name: (quantity, function)}, or "
                "use_defaults=True to hold them at the file's INITIAL values",
            )
        self.quantities = sorted({q for q, _, _ in self.links.values()})

    def describe_links(self) -> str:
        """One line per table parameter: where its value comes from."""
        lines = [repr(self.table)]
        for n in self.table.param_names + self.table.add_param_names:
            if n in self.links:
                q, _, note = self.links[n]
                lines.append(f"  {n} <- {q} ({note})")
            elif n in self.fixed:
                lines.append(f"  {n} = {self.fixed[n]} (fixed)")
            else:
                lines.append(f"  {n} = INITIAL (default)")
        return "\n".join(lines)

    def binned(
        self,
        energy_edges_keV: torch.Tensor | None,
        z: float | torch.Tensor = 0.0,
        **quantities: float | torch.Tensor,
    ) -> torch.Tensor:
        """Photons cm^-2 s^-1 per observed bin for unit table normalisation.

        ``quantities``: popsynth quantities (``nh`` in cm^-2, ``photon_index``, ``e_cut``
        keV, ``theta_inc``/``theta_tor`` deg, ``covering_factor``, ...), each a number or
        [B] tensor. Returns [m] or [B, m] (see :meth:`TableModel.evaluate`).
        """
        extra = sorted(set(quantities) - set(self.quantities))
        missing = sorted(set(self.quantities) - set(quantities))
        if extra or missing:
            raise PopsynthError(
                f"torus table '{self.table.name}' takes quantities {self.quantities}"
                + (f"; unknown {extra}" if extra else "")
                + (f"; missing {missing}" if missing else ""),
                "pass exactly the quantities the table uses (see ExternalTorus.describe_links())",
            )
        params: dict[str, object] = dict(self.fixed)
        for tname, (q, fn, _) in self.links.items():
            params[tname] = fn(_f64(quantities[q], self.table.device))
        return self.table.evaluate(
            params,
            energy_edges_keV,
            redshift=z,
            out_of_range=self.out_of_range,
            use_defaults=self.use_defaults,
        )

    def spectrum(self, energy, primary, params, log_nh):
        """Emitted spectrum [D, M, nE], photons s^-1 keV^-1 per erg/s of intrinsic L(2-10), for
        primaries [D, nE], params {name: [D]} and columns log_nh [M] (log10 cm^-2)."""
        dev = energy.device
        theta = params["theta_tor"]
        D, M = theta.numel(), log_nh.numel()
        le = torch.log(energy)
        mid = torch.exp(0.5 * (le[1:] + le[:-1]))
        edges = torch.cat([energy[:1] * torch.exp(-(le[1] - le[0]) / 2), mid, energy[-1:] * torch.exp((le[-1] - le[-2]) / 2)])
        q_all = {
            "nh": (10.0 ** log_nh)[None, :].expand(D, M),
            "photon_index": params["gamma"][:, None].expand(D, M),
            "theta_tor": theta[:, None].expand(D, M),
            "theta_inc": self.inclination(log_nh[:, None], theta[None, :]).T,
            "e_cut": params["ecut"][:, None].expand(D, M),
        }
        unknown = sorted(set(self.quantities) - set(q_all))
        if unknown:
            raise PopsynthError(f"the torus table needs quantities {unknown} that popsynth does not provide",
                                "pass fixed={name: value} or mapping=... to ExternalTorus")
        q = {k: q_all[k].reshape(-1).to(dev) for k in self.quantities}
        per_bin = self.binned(edges.to(self.table.device), **q).to(dev)  # [D*M, nE]
        dens = (per_bin / (edges[1:] - edges[:-1])).reshape(D, M, -1)
        k_norm = 1.0 / band_energy_flux(params["gamma"], params["ecut"])  # [D]
        out = dens * k_norm[:, None, None]
        if self.cutoff == "highecut":
            out = out * torch.exp(-energy[None, :] / params["ecut"][:, None])[:, None, :]
        e0, e1 = (float(x) for x in self.table.energy_edges[[0, -1]])
        outside = (edges[:-1] < e0) | (edges[1:] > e1)
        if self.fill == "builtin" and bool(outside.any()):
            fillv = sum(c.spectrum(energy, primary, params, log_nh) for c in self._builtin)
            out = torch.where(outside[None, None, :], fillv, out)
        return out

    def load_tables(self) -> None:
        if self._builtin is not None:
            self._builtin[1].load_tables()

    def describe(self):
        return {**super().describe(), "table": self.describe_links(), "cutoff": self.cutoff, "fill": self.fill,
                "inclination": getattr(self.inclination, "__name__", repr(self.inclination))}
