"""XSPEC table models (OGIP/92-009 FITS files): read, evaluate (differentiably) and write.

An XSPEC table model is an N-dimensional grid of model spectra, one per combination of the
tabulated values of N "interpolation" parameters, plus optional "additional" parameters that
add linearly. The FITS layout (OGIP memo OGIP/92-009, "The File Format for XSPEC Table
Models", https://heasarc.gsfc.nasa.gov/docs/heasarc/ofwg/docs/general/ogip_92_009/) is:

* primary header: ``MODLNAME``, ``MODLUNIT``, ``REDSHIFT`` (T/F: XSPEC adds a redshift
  parameter), ``ADDMODEL`` (T: additive "atable"; F: multiplicative "mtable" or, at the
  user's choice in XSPEC, exponential "etable"), optional ``LOELIMIT``/``HIELIMIT``
  (model value below/above the tabulated energies), ``ESCALE``, ``NXFLTEXP``;
* ``PARAMETERS``: header ``NINTPARM``, ``NADDPARM``; one row per parameter with ``NAME``,
  ``METHOD`` (0 linear, 1 logarithmic interpolation), ``INITIAL``, ``DELTA``, ``MINIMUM``,
  ``BOTTOM``, ``TOP``, ``MAXIMUM``, ``NUMBVALS`` and ``VALUE`` (the tabulated values, in
  increasing order; a fixed-width or variable-length vector column);
* ``ENERGIES``: ``ENERG_LO``, ``ENERG_HI`` in keV (rest frame of the model);
* ``SPECTRA``: one row per grid point with ``PARAMVAL`` [NINTPARM], ``INTPSPEC`` [n_energy]
  and ``ADDSP001``... [n_energy] for the additional parameters. Rows are ordered with the
  **last** parameter changing fastest (memo, section "SPECTRA extension": for two
  parameters with values 1,2,3 the order is (1,1),(1,2),(1,3),(2,1),...), i.e. C order, so
  ``INTPSPEC`` reshapes directly to ``[n_1, ..., n_N, n_energy]``.

Conventions followed here (and checked against HEASoft's own table code, the heasp
``table::getValues`` routine and the legacy ``xsatbl``/``inibin`` routines):

* Interpolation is multilinear in the parameters; for ``METHOD=1`` the weight along that axis
  is ``log(p/p_i)/log(p_{i+1}/p_i)`` (linear in log p). The spectra themselves are combined
  linearly. A parameter outside its tabulated range is an error in XSPEC; here it raises a
  :class:`PopsynthError` (``out_of_range="raise"``) or is held at the grid edge with a
  warning (``"clamp"``). It is never extrapolated and never silently zeroed.
* Additional parameters: spectrum = INTPSPEC + sum_k a_k ADDSP_k (interpolated like INTPSPEC).
* Additive spectra are photons cm^-2 s^-1 *per bin* (integrated over the bin) for unit
  normalisation. Multiplicative spectra are dimensionless factors per bin; exponential
  ones give ``exp(-value)``.
* Redshift z: the tabulated (rest-frame) bins are placed at observed energies
  ``E_obs = E_rest / (1+z)``, i.e. the observed bin [a, b] collects the rest-frame photons
  of [a(1+z), b(1+z)]; for additive tables the result is then divided by (1+z) (time
  dilation; XSPEC's heasp ``getValues`` and legacy ``xsatbl`` do the same, as does the
  ``zashift`` convolution model). Multiplicative/exponential tables are only shifted in
  energy (like ``zmshift``), not divided.
* Rebinning onto user energy edges treats each tabulated bin as flat (a "flat-topped
  histogram", as XSPEC's ``inibin``): additive tables conserve photons (overlap fractions),
  multiplicative tables are bin-averaged, exponential tables bin-average the tabulated
  exponent and then take ``exp(-x)`` (legacy ``xsetbl``: interpolate as an mtable, then
  exponentiate). Energies outside the tabulated range get zero photons (additive) or the
  ``LOELIMIT``/``HIELIMIT`` value (default 1 for mtable, exponent 0 for etable), as XSPEC
  does, and a warning says so.

Everything numerical is float64 torch and differentiable with respect to parameter values
(and redshift) given as tensors.
"""

from __future__ import annotations

import itertools
import math
import re
import warnings
from pathlib import Path
from typing import Callable, Mapping, Sequence

import numpy as np
import torch

from .._tensor import DTYPE
from ..errors import PopsynthError

__all__ = [
    "TableModel",
    "read_table_model",
    "write_table_model",
    "ExternalTorus",
    "TORUS_PARAMETERS",
]

_KINDS = ("add", "mul", "exp")
_REQUIRED_PARAM_COLUMNS = (
    "NAME",
    "METHOD",
    "INITIAL",
    "DELTA",
    "MINIMUM",
    "BOTTOM",
    "TOP",
    "MAXIMUM",
    "NUMBVALS",
    "VALUE",
)
# relative fuzz for comparing a parameter value with the (often float32) grid edges
_GRID_FUZZ = 1e-6
_ENERGY_UNITS = {"": 1.0, "kev": 1.0, "ev": 1e-3, "mev": 1e3}


def _f64(x, device: torch.device | str | None = None) -> torch.Tensor:
    """float64 tensor on ``device``; tensors keep their autograd graph, Python numbers are
    converted straight to float64 (never through torch's float32 default dtype)."""
    if isinstance(x, torch.Tensor):
        return x.to(device=device, dtype=DTYPE)
    return torch.as_tensor(np.asarray(x, dtype=np.float64), dtype=DTYPE, device=device)


# --------------------------------------------------------------------------------------
# the model object
# --------------------------------------------------------------------------------------


class TableModel:
    """An XSPEC table model held as float64 torch tensors.

    Attributes (``k`` interpolation parameters, ``n_e`` tabulated energy bins):

    * ``name`` (MODLNAME), ``units`` (MODLUNIT), ``kind``: ``"add"`` | ``"mul"`` | ``"exp"``
    * ``param_names`` [k], ``param_grids`` (k tensors [n_i], increasing),
      ``param_log`` [k] (METHOD == 1), ``param_initial``, ``param_delta``,
      ``param_min``/``param_max`` (hard limits MINIMUM/MAXIMUM),
      ``param_bottom``/``param_top`` (soft limits) - lists of floats, one per parameter
    * ``add_param_names``, ``add_param_initial``, ``add_param_min``, ``add_param_max``:
      the same for additional parameters (may be empty)
    * ``energy_lo``, ``energy_hi``: [n_e] keV, rest frame, as in the file
    * ``spectra``: [n_1, ..., n_k, n_e] (INTPSPEC; photons cm^-2 s^-1 per bin for additive,
      dimensionless for multiplicative, the exponent for exponential tables)
    * ``add_spectra``: [n_1, ..., n_k, n_add, n_e] (ADDSPnnn) or None
    * ``has_redshift`` (REDSHIFT keyword), ``lo_elimit``/``hi_elimit`` (LOELIMIT/HIELIMIT
      or None), ``path`` (file read from, or None)
    """

    def __init__(
        self,
        *,
        name: str,
        kind: str,
        param_names: Sequence[str],
        param_grids: Sequence[torch.Tensor],
        param_log: Sequence[bool],
        energy_lo: torch.Tensor,
        energy_hi: torch.Tensor,
        spectra: torch.Tensor,
        param_initial: Sequence[float] | None = None,
        param_delta: Sequence[float] | None = None,
        param_min: Sequence[float] | None = None,
        param_max: Sequence[float] | None = None,
        param_bottom: Sequence[float] | None = None,
        param_top: Sequence[float] | None = None,
        add_param_names: Sequence[str] = (),
        add_param_initial: Sequence[float] | None = None,
        add_param_min: Sequence[float] | None = None,
        add_param_max: Sequence[float] | None = None,
        add_spectra: torch.Tensor | None = None,
        has_redshift: bool = False,
        units: str = "",
        lo_elimit: float | None = None,
        hi_elimit: float | None = None,
        path: str | None = None,
    ):
        if kind not in _KINDS:
            raise PopsynthError(f"unknown table kind '{kind}'", "use 'add', 'mul' or 'exp'")
        self.name = str(name)
        self.kind = kind
        self.units = str(units)
        self.path = path
        self.has_redshift = bool(has_redshift)
        self.param_names = [str(n) for n in param_names]
        self.param_grids = [_f64(g).detach().reshape(-1) for g in param_grids]
        self.param_log = [bool(b) for b in param_log]
        k = len(self.param_names)
        if not (len(self.param_grids) == len(self.param_log) == k) or k == 0:
            raise PopsynthError(
                "a table model needs one grid and one log flag per interpolation parameter "
                f"(got {k} names, {len(self.param_grids)} grids, {len(self.param_log)} flags)",
                "pass lists of equal, non-zero length",
            )

        def _or(vals, default):
            return [float(v) for v in vals] if vals is not None else list(default)

        lo_edges = [float(g[0]) for g in self.param_grids]
        hi_edges = [float(g[-1]) for g in self.param_grids]
        self.param_initial = _or(
            param_initial, [float(g[len(g) // 2]) for g in self.param_grids]
        )
        self.param_delta = _or(param_delta, [0.01 * (h - l) for l, h in zip(lo_edges, hi_edges)])
        self.param_min = _or(param_min, lo_edges)
        self.param_max = _or(param_max, hi_edges)
        self.param_bottom = _or(param_bottom, lo_edges)
        self.param_top = _or(param_top, hi_edges)

        self.add_param_names = [str(n) for n in add_param_names]
        na = len(self.add_param_names)
        self.add_param_initial = _or(add_param_initial, [0.0] * na)
        self.add_param_min = _or(add_param_min, [-1e30] * na)
        self.add_param_max = _or(add_param_max, [1e30] * na)

        self.energy_lo = _f64(energy_lo).detach().reshape(-1)
        self.energy_hi = _f64(energy_hi).detach().reshape(-1)
        self.lo_elimit = None if lo_elimit is None else float(lo_elimit)
        self.hi_elimit = None if hi_elimit is None else float(hi_elimit)

        shape = tuple(int(g.numel()) for g in self.param_grids)
        n_e = int(self.energy_lo.numel())
        spectra = _f64(spectra).detach()
        if spectra.numel() != math.prod(shape) * n_e:
            raise PopsynthError(
                f"table '{self.name}': spectra hold {spectra.numel()} numbers but the grid "
                f"{shape} x {n_e} energies needs {math.prod(shape) * n_e}",
                "give one spectrum of n_energy values per grid point",
            )
        self.spectra = spectra.reshape(*shape, n_e)
        if add_spectra is not None:
            add_spectra = _f64(add_spectra).detach()
            if add_spectra.numel() != math.prod(shape) * na * n_e:
                raise PopsynthError(
                    f"table '{self.name}': additional-parameter spectra have the wrong size",
                    f"give [{', '.join(map(str, shape))}, {na}, {n_e}] values",
                )
            add_spectra = add_spectra.reshape(*shape, na, n_e)
        elif na:
            raise PopsynthError(
                f"table '{self.name}' declares additional parameters {self.add_param_names} "
                "but no spectra for them",
                "pass add_spectra",
            )
        self.add_spectra = add_spectra
        self._validate()
        self._build_edges()

    # ---------------------------------------------------------------- internals
    def _validate(self) -> None:
        names = self.param_names + self.add_param_names
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise PopsynthError(
                f"table '{self.name}' has duplicate parameter names {dup}",
                "give every parameter a unique NAME",
            )
        for n, g, lg in zip(self.param_names, self.param_grids, self.param_log):
            if g.numel() < 1 or not torch.isfinite(g).all():
                raise PopsynthError(
                    f"table '{self.name}': parameter '{n}' has an empty or non-finite grid",
                    "fix the VALUE column of the PARAMETERS extension",
                )
            if g.numel() > 1 and not bool((g[1:] > g[:-1]).all()):
                raise PopsynthError(
                    f"table '{self.name}': tabulated values of parameter '{n}' are not "
                    f"strictly increasing ({g.tolist()})",
                    "OGIP/92-009 requires VALUE in increasing order; fix the file",
                )
            if lg and bool((g <= 0).any()):
                raise PopsynthError(
                    f"table '{self.name}': parameter '{n}' uses logarithmic interpolation "
                    f"(METHOD=1) but its grid has values <= 0 ({g.tolist()})",
                    "use METHOD=0 for this parameter, or a positive grid",
                )
        lo, hi = self.energy_lo, self.energy_hi
        if lo.numel() < 1 or lo.shape != hi.shape:
            raise PopsynthError(
                f"table '{self.name}': ENERG_LO and ENERG_HI are empty or differ in length",
                "fix the ENERGIES extension",
            )
        if not (torch.isfinite(lo).all() and torch.isfinite(hi).all()) or bool((lo < 0).any()):
            raise PopsynthError(
                f"table '{self.name}': energies must be finite and >= 0 keV",
                "fix the ENERGIES extension",
            )
        if bool((hi <= lo).any()) or bool((lo[1:] <= lo[:-1]).any()):
            raise PopsynthError(
                f"table '{self.name}': energy bins must be increasing with ENERG_HI > ENERG_LO",
                "fix the ENERGIES extension",
            )

    def _build_edges(self) -> None:
        lo, hi = self.energy_lo, self.energy_hi
        # XSPEC treats the tabulated bins as contiguous: edges = ENERG_LO + last ENERG_HI.
        if lo.numel() > 1:
            gap = (lo[1:] - hi[:-1]).abs() / hi[:-1]
            if bool((gap > 1e-5).any()):
                i = int(torch.argmax(gap))
                warnings.warn(
                    f"table '{self.name}': energy bins are not contiguous (ENERG_HI[{i}]="
                    f"{float(hi[i]):.6g} keV but ENERG_LO[{i + 1}]={float(lo[i + 1]):.6g} keV); "
                    "like XSPEC, bins are taken as [ENERG_LO[i], ENERG_LO[i+1]]",
                    stacklevel=3,
                )
        self.energy_edges = torch.cat([lo, hi[-1:]])  # [n_e + 1] keV, rest frame

    @property
    def shape(self) -> tuple[int, ...]:
        """Grid shape (n_1, ..., n_k)."""
        return tuple(int(g.numel()) for g in self.param_grids)

    @property
    def n_energy(self) -> int:
        return int(self.energy_lo.numel())

    @property
    def device(self) -> torch.device:
        return self.spectra.device

    def to(self, device: torch.device | str) -> "TableModel":
        """Move all tensors to ``device`` (in place); returns self."""
        self.param_grids = [g.to(device) for g in self.param_grids]
        self.energy_lo = self.energy_lo.to(device)
        self.energy_hi = self.energy_hi.to(device)
        self.energy_edges = self.energy_edges.to(device)
        self.spectra = self.spectra.to(device)
        if self.add_spectra is not None:
            self.add_spectra = self.add_spectra.to(device)
        return self

    def __repr__(self) -> str:
        pars = ", ".join(
            f"{n}[{g.numel()}{' log' if lg else ''}: {float(g[0]):.4g}..{float(g[-1]):.4g}]"
            for n, g, lg in zip(self.param_names, self.param_grids, self.param_log)
        )
        extra = f"; additional {self.add_param_names}" if self.add_param_names else ""
        return (
            f"TableModel('{self.name}', kind={self.kind}, {pars}{extra}; "
            f"{self.n_energy} bins {float(self.energy_edges[0]):.4g}-"
            f"{float(self.energy_edges[-1]):.4g} keV; redshift={self.has_redshift})"
        )

    # ---------------------------------------------------------------- parameters
    def _lookup(self, params: Mapping[str, object]) -> dict[str, object]:
        """Map user keys onto table parameter names (exact, then case-insensitive)."""
        all_names = self.param_names + self.add_param_names
        lower = {n.lower(): n for n in all_names}
        out: dict[str, object] = {}
        unknown = []
        for key, val in params.items():
            if key in all_names:
                name = key
            elif str(key).lower() in lower:
                name = lower[str(key).lower()]
            else:
                unknown.append(key)
                continue
            if name in out:
                raise PopsynthError(
                    f"parameter '{name}' of table '{self.name}' given twice (as '{key}')",
                    "pass each parameter once",
                )
            out[name] = val
        if unknown:
            hint = " (the redshift goes in the redshift= argument)" if any(
                str(u).lower() in ("z", "redshift") for u in unknown
            ) else ""
            raise PopsynthError(
                f"table '{self.name}' has no parameter(s) {unknown}{hint}; its parameters are "
                f"{all_names}",
                "use the table's parameter names (case does not matter)",
            )
        return out

    def _values(
        self, params: Mapping[str, object], use_defaults: bool
    ) -> tuple[list[torch.Tensor], list[torch.Tensor], int | None]:
        given = self._lookup(params)
        missing = [n for n in self.param_names + self.add_param_names if n not in given]
        if missing and not use_defaults:
            raise PopsynthError(
                f"table '{self.name}' needs values for parameter(s) {missing}; given "
                f"{sorted(given)}; all parameters: {self.param_names + self.add_param_names}",
                "pass every parameter, or use_defaults=True to take the file's INITIAL values "
                "for the missing ones",
            )
        dev = self.device
        defaults = dict(zip(self.param_names, self.param_initial))
        defaults.update(zip(self.add_param_names, self.add_param_initial))
        vals = []
        batch: int | None = None
        for n in self.param_names + self.add_param_names:
            v = given.get(n, defaults[n])
            t = _f64(v, dev)
            if t.dim() > 1 or (t.dim() == 1 and t.numel() == 0):
                raise PopsynthError(
                    f"parameter '{n}' of table '{self.name}' has shape {tuple(t.shape)}",
                    "pass a number or a 1-D tensor [B]",
                )
            if t.dim() == 1:
                if batch is not None and t.numel() != batch:
                    raise PopsynthError(
                        f"parameter '{n}' of table '{self.name}' has {t.numel()} values but "
                        f"another parameter has {batch}",
                        "give all batched parameters the same length B",
                    )
                batch = int(t.numel())
            if not bool(torch.isfinite(t.detach()).all()):
                raise PopsynthError(
                    f"parameter '{n}' of table '{self.name}' is not finite "
                    f"({t.detach().tolist()})",
                    "pass finite parameter values",
                )
            vals.append(t)
        k = len(self.param_names)
        return vals[:k], vals[k:], batch

    def _weights(
        self, values: list[torch.Tensor], out_of_range: str
    ) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Per parameter: lower node index (long) and fraction t in [0, 1] (differentiable)."""
        idx_list, t_list = [], []
        for n, g, lg, v in zip(self.param_names, self.param_grids, self.param_log, values):
            g0, g1 = float(g[0]), float(g[-1])
            vd = v.detach()
            fuzz_lo = _GRID_FUZZ * max(abs(g0), abs(g1), 1e-300)
            below = vd < g0 - fuzz_lo
            above = vd > g1 + fuzz_lo
            if bool(below.any()) or bool(above.any()):
                bad = vd[below | above]
                worst = float(bad[torch.argmax((bad - (g0 + g1) / 2).abs())])
                nbad = int(bad.numel())
                what = (
                    f"parameter '{n}' = {worst:.6g}"
                    + (f" ({nbad} of {vd.numel()} values)" if vd.dim() == 1 else "")
                    + f" is outside the grid [{g0:.6g}, {g1:.6g}] of table '{self.name}'"
                )
                if out_of_range == "raise":
                    raise PopsynthError(
                        what,
                        "keep it inside the tabulated range, or pass out_of_range='clamp' to "
                        "hold it at the grid edge (with a warning)",
                    )
                warnings.warn(what + f"; clamped to [{g0:.6g}, {g1:.6g}]", stacklevel=4)
            vc = v.clamp(g0, g1)  # also absorbs float32 fuzz; zero gradient outside the grid
            m = g.numel()
            if m == 1:
                idx_list.append(torch.zeros(vc.shape, dtype=torch.long, device=g.device))
                t_list.append(torch.zeros_like(vc))
                continue
            # bracket in the linear variable (log is monotone), weight in log where METHOD=1
            i = torch.searchsorted(g, vc.detach().reshape(-1).contiguous(), right=True) - 1
            i = i.clamp(0, m - 2).reshape(vc.shape)
            x = torch.log(vc) if lg else vc
            x0 = torch.log(g[i]) if lg else g[i]
            x1 = torch.log(g[i + 1]) if lg else g[i + 1]
            t = ((x - x0) / (x1 - x0)).clamp(0.0, 1.0)
            # exactly on a node: make the weight exactly 0 or 1 (vectorised and scalar log
            # may differ in the last bit), keeping the gradient of t
            td = t.detach()
            t = t + torch.where(vc.detach() == g[i], -td, torch.zeros_like(td))
            t = t + torch.where(vc.detach() == g[i + 1], 1.0 - td, torch.zeros_like(td))
            idx_list.append(i)
            t_list.append(t)
        return idx_list, t_list

    def interpolate(
        self,
        params: Mapping[str, float | torch.Tensor],
        out_of_range: str = "raise",
        use_defaults: bool = False,
    ) -> torch.Tensor:
        """Tabulated quantity at ``params`` on the table's own (rest-frame) bins.

        Multilinear interpolation (in log p for METHOD=1 parameters) of INTPSPEC, plus
        ``sum_k a_k ADDSP_k`` for additional parameters. No redshift, no rebinning, and for
        ``kind="exp"`` the exponent (not exp(-x)). Returns [n_e] for scalar parameters or
        [B, n_e] when any parameter is a tensor of shape [B].
        """
        if out_of_range not in ("raise", "clamp"):
            raise PopsynthError(
                f"unknown out_of_range='{out_of_range}'", "use 'raise' or 'clamp'"
            )
        ivals, avals, batch = self._values(params, use_defaults)
        idx, ts = self._weights(ivals, out_of_range)
        bshape = (batch,) if batch is not None else ()
        idx = [i.expand(bshape) for i in idx]
        ts = [t.expand(bshape) for t in ts]
        shape = self.shape
        strides = [math.prod(shape[j + 1 :]) for j in range(len(shape))]
        flat = self.spectra.reshape(-1, self.n_energy)
        flat_add = (
            self.add_spectra.reshape(-1, len(self.add_param_names), self.n_energy)
            if self.add_spectra is not None
            else None
        )
        avals = [a.expand(bshape) for a in avals]
        out = None
        active = [j for j, n in enumerate(shape) if n > 1]
        for offs in itertools.product((0, 1), repeat=len(active)):
            o = dict(zip(active, offs))
            row = sum((idx[j] + o.get(j, 0)) * strides[j] for j in range(len(shape)))
            if not isinstance(row, torch.Tensor):
                row = torch.as_tensor(row, device=self.device)
            w = None
            for j in active:
                wj = ts[j] if o[j] else 1.0 - ts[j]
                w = wj if w is None else w * wj
            if w is None:
                w = torch.ones(bshape, dtype=DTYPE, device=self.device)
            spec = flat[row]  # [..., n_e]
            if flat_add is not None:
                addsp = flat_add[row]  # [..., n_add, n_e]
                for a_i, a in enumerate(avals):
                    spec = spec + a[..., None] * addsp[..., a_i, :]
            term = w[..., None] * spec
            out = term if out is None else out + term
        return out

    # ---------------------------------------------------------------- evaluation
    def evaluate(
        self,
        params: Mapping[str, float | torch.Tensor],
        energy_edges_keV: torch.Tensor | None = None,
        redshift: float | torch.Tensor = 0.0,
        out_of_range: str = "raise",
        use_defaults: bool = False,
    ) -> torch.Tensor:
        """Model values per energy bin.

        Parameters
        ----------
        params: table parameter name -> value (float, 0-d tensor or tensor [B]); names
            are matched exactly, then case-insensitively. Every interpolation and additional
            parameter is required unless ``use_defaults=True`` (then missing ones take the
            file's INITIAL values). Tensors that require grad get gradients through the
            interpolation weights.
        energy_edges_keV: [m + 1] increasing observed-frame bin edges in keV, or None for
            the table's own bins (then, at z = 0, the tabulated values are returned
            exactly as interpolated, without rebinning).
        redshift: z (float or tensor, 0-d or [B]); > -1. Observed bin [a, b] maps to the
            rest-frame interval [a(1+z), b(1+z)]; additive results are divided by (1+z).
            Applied whether or not the file sets REDSHIFT=T (that flag only tells XSPEC to
            add a z parameter).
        out_of_range: "raise" (PopsynthError naming parameter, value and grid range) or
            "clamp" (hold at the grid edge, with a warning naming them).
        use_defaults: take INITIAL for parameters not given.

        Returns
        -------
        [m] (or [n_e] without edges) for scalar inputs, [B, m] when any input is [B]:
        additive: photons cm^-2 s^-1 per bin (unit normalisation);
        multiplicative: dimensionless factor per bin (bin average);
        exponential: exp(-x) with x the bin-averaged tabulated exponent.
        """
        spec = self.interpolate(params, out_of_range=out_of_range, use_defaults=use_defaults)
        z_is_zero = not isinstance(redshift, torch.Tensor) and float(redshift) == 0.0
        if energy_edges_keV is None and z_is_zero:
            return torch.exp(-spec) if self.kind == "exp" else spec
        if energy_edges_keV is None:
            edges = self.energy_edges
        else:
            edges = _f64(energy_edges_keV, self.device)
            if edges.dim() != 1 or edges.numel() < 2:
                raise PopsynthError(
                    f"energy_edges_keV must be 1-D with at least 2 edges (got shape "
                    f"{tuple(edges.shape)})",
                    "pass the m+1 edges of m bins",
                )
            bad = ~torch.isfinite(edges).all() | (edges[1:] <= edges[:-1]).any()
            if bool(bad) or bool((edges < 0).any()):
                raise PopsynthError(
                    "energy_edges_keV must be finite, >= 0 and strictly increasing",
                    "pass sorted bin edges in keV",
                )
        z = _f64(redshift, self.device)
        if z.dim() > 1:
            raise PopsynthError("redshift must be a number or a 1-D tensor [B]", "reshape it")
        if bool((z.detach() <= -1).any()) or not bool(torch.isfinite(z.detach()).all()):
            raise PopsynthError(f"redshift {z.detach().tolist()} must be finite and > -1", "fix z")
        if z.dim() == 1 and spec.dim() == 2 and z.numel() != spec.shape[0]:
            raise PopsynthError(
                f"redshift has {z.numel()} values but the parameters have {spec.shape[0]}",
                "give z the same batch length B",
            )
        zf = 1.0 + z
        rest = edges * zf[..., None] if zf.dim() == 1 else edges * zf  # [B?, m+1]
        if zf.dim() == 1 and spec.dim() == 1:
            spec = spec.expand(zf.numel(), -1)
        self._warn_energy_coverage(rest)
        out = _rebin_flat(spec, self.energy_edges, rest, self.kind, self.lo_elimit, self.hi_elimit)
        if self.kind == "add":
            out = out / (zf[..., None] if zf.dim() == 1 else zf)
        elif self.kind == "exp":
            out = torch.exp(-out)
        return out

    def _warn_energy_coverage(self, rest: torch.Tensor) -> None:
        e0, e1 = float(self.energy_edges[0]), float(self.energy_edges[-1])
        rlo, rhi = float(rest.detach().min()), float(rest.detach().max())
        tol = 1e-9 * e1
        sides = []
        if rlo < e0 - tol:
            sides.append(f"below {e0:.6g} keV")
        if rhi > e1 + tol:
            sides.append(f"above {e1:.6g} keV")
        if not sides:
            return
        if self.kind == "add":
            fill = "no photons there (zero, the XSPEC convention for atable)"
        else:
            lo_v = 0.0 if self.lo_elimit is None and self.kind == "exp" else self.lo_elimit
            lo_v = 1.0 if lo_v is None else lo_v
            hi_v = 0.0 if self.hi_elimit is None and self.kind == "exp" else self.hi_elimit
            hi_v = 1.0 if hi_v is None else hi_v
            what = "exponent" if self.kind == "exp" else "factor"
            fill = f"{what} {lo_v:g} below / {hi_v:g} above (LOELIMIT/HIELIMIT or XSPEC default)"
        warnings.warn(
            f"table '{self.name}' is tabulated for rest-frame {e0:.6g}-{e1:.6g} keV only; the "
            f"requested energies reach {' and '.join(sides)}: {fill}",
            stacklevel=3,
        )


def _rebin_flat(
    spec: torch.Tensor,
    edges: torch.Tensor,
    rest: torch.Tensor,
    kind: str,
    lo_elimit: float | None,
    hi_elimit: float | None,
) -> torch.Tensor:
    """Rebin piecewise-flat bins (``edges`` [n+1], values ``spec`` [..., n]) onto ``rest``.

    ``rest`` is [m+1] or [B, m+1] rest-frame edges. Additive: photons in each new bin
    (overlap fractions of the old bins' contents). Multiplicative/exponential: the
    width-weighted average, with ``lo_elimit``/``hi_elimit`` (defaults 1 for "mul", 0 for
    the exponent of "exp") outside the tabulated range. Differentiable in spec and rest.
    """
    n = edges.numel() - 1
    width = edges[1:] - edges[:-1]
    content = spec if kind == "add" else spec * width  # integral over each old bin
    cum = torch.cat([torch.zeros_like(content[..., :1]), torch.cumsum(content, dim=-1)], dim=-1)
    k = torch.searchsorted(edges, rest.detach().contiguous(), right=True) - 1
    k = k.clamp(0, n - 1)
    frac = ((rest - edges[k]) / width[k]).clamp(0.0, 1.0)
    # broadcast to a common batch shape
    lead = torch.broadcast_shapes(cum.shape[:-1], rest.shape[:-1])
    cum_b = cum.expand(*lead, n + 1)
    content_b = content.expand(*lead, n)
    k_b = k.expand(*lead, rest.shape[-1])
    frac_b = frac.expand(*lead, rest.shape[-1])
    part = frac_b * torch.gather(content_b, -1, k_b)
    c_at = torch.gather(cum_b, -1, k_b) + part  # photons below each edge
    # photons above each edge, from a reverse cumulative sum: differencing whichever of the
    # two is smaller keeps the rounding error relative to the bin, not to the total
    rcum = torch.flip(torch.cumsum(torch.flip(content, [-1]), dim=-1), [-1])
    r_at = torch.gather(rcum.expand(*lead, n), -1, k_b) - part
    fwd = c_at[..., 1:] - c_at[..., :-1]
    bwd = r_at[..., :-1] - r_at[..., 1:]
    inside = torch.where(c_at[..., 1:].detach() <= r_at[..., :-1].detach(), fwd, bwd)
    if kind == "add":
        return inside
    default = 1.0 if kind == "mul" else 0.0
    lo_v = default if lo_elimit is None else lo_elimit
    hi_v = default if hi_elimit is None else hi_elimit
    a, b = rest[..., :-1], rest[..., 1:]
    e0, e1 = edges[0], edges[-1]
    below = (torch.minimum(b, e0) - a).clamp_min(0.0)
    above = (b - torch.maximum(a, e1)).clamp_min(0.0)
    total = inside + lo_v * below + hi_v * above
    return total / (b - a)


# --------------------------------------------------------------------------------------
# reading
# --------------------------------------------------------------------------------------


def _bool_key(header, key: str, default: bool) -> bool:
    v = header.get(key, default)
    if isinstance(v, str):
        return v.strip().upper() in ("T", "TRUE", "Y", "YES", "1")
    return bool(v)


def read_table_model(path, kind: str | None = None, check_paramval: bool = True) -> TableModel:
    """Read an OGIP/92-009 XSPEC table model FITS file.

    ``kind``: None takes ``"add"`` when ADDMODEL=T, else ``"mul"`` (or the ``POPSKIND``
    keyword written by :func:`write_table_model`); pass ``"exp"`` to use a multiplicative
    file as an XSPEC etable (the file format does not record mtable vs etable).
    ``check_paramval``: check that each SPECTRA row's PARAMVAL equals the grid point the
    memo's ordering (last parameter fastest) assigns it; rows that are a permutation of the
    grid are reordered with a warning, anything else raises. False trusts the ordering
    without looking at PARAMVAL (what XSPEC does).

    Raises PopsynthError for a missing file, a file that is not FITS, a missing extension or
    column, NUMBVALS inconsistent with the number of spectra, and other malformed content.
    """
    from astropy.io import fits

    p = Path(path)
    if not p.is_file():
        raise PopsynthError(
            f"table model file {p} not found",
            "check the path (XSPEC table models are FITS files such as torus1006.fits)",
        )
    try:
        hdul = fits.open(p, memmap=False)
    except Exception as exc:  # astropy raises OSError / ValueError for non-FITS content
        raise PopsynthError(
            f"{p} is not a readable FITS file ({type(exc).__name__}: {exc})",
            "pass an OGIP/92-009 XSPEC table model (FITS) file",
        ) from None
    with hdul:
        present = [h.name for h in hdul]

        def ext(name):
            try:
                h = hdul[name]
            except KeyError:
                raise PopsynthError(
                    f"{p} has no {name} extension (extensions: {present})",
                    "an XSPEC table model needs PARAMETERS, ENERGIES and SPECTRA extensions "
                    "(OGIP/92-009)",
                ) from None
            if not isinstance(h, fits.BinTableHDU):
                raise PopsynthError(f"{p}: extension {name} is not a binary table", "fix the file")
            return h

        def col(h, name):
            names = [c.upper() for c in h.columns.names]
            if name not in names:
                raise PopsynthError(
                    f"{p}: extension {h.name} has no column {name} (columns: {h.columns.names})",
                    "the file does not follow OGIP/92-009; rewrite it with the required columns",
                )
            return h.data[h.columns.names[names.index(name)]]

        prim = hdul[0].header
        hp, he, hs = ext("PARAMETERS"), ext("ENERGIES"), ext("SPECTRA")
        modname = str(prim.get("MODLNAME", p.stem)).strip()
        units = str(prim.get("MODLUNIT", "")).strip()
        additive = _bool_key(prim, "ADDMODEL", True)
        has_z = _bool_key(prim, "REDSHIFT", False)
        if _bool_key(prim, "ESCALE", False):
            raise PopsynthError(
                f"{p} sets ESCALE=T (an energy-scale parameter), which popsynth does not support",
                "use a table without ESCALE",
            )
        nxflt = int(prim.get("NXFLTEXP", 1) or 1)
        if nxflt != 1:
            raise PopsynthError(
                f"{p} holds {nxflt} spectra per grid point (NXFLTEXP), which popsynth does not "
                "support",
                "use a table with one spectrum per grid point",
            )
        lo_el = prim.get("LOELIMIT")
        hi_el = prim.get("HIELIMIT")
        file_kind = str(prim.get("POPSKIND", "")).strip().lower() or None
        if kind is None:
            kind = "add" if additive else (file_kind if file_kind in ("mul", "exp") else "mul")
        if kind not in _KINDS:
            raise PopsynthError(f"unknown table kind '{kind}'", "use 'add', 'mul' or 'exp'")
        if (kind == "add") != additive:
            raise PopsynthError(
                f"{p} has ADDMODEL={'T' if additive else 'F'} but kind='{kind}' was requested",
                "read additive files with kind='add' (atable) and multiplicative ones with "
                "'mul' (mtable) or 'exp' (etable)",
            )
        if additive and "/kev" in units.lower().replace(" ", ""):
            warnings.warn(
                f"{p}: MODLUNIT='{units}' looks like a per-keV unit; popsynth (like OGIP/92-009) "
                "treats additive spectra as photons/cm^2/s per bin and does not convert",
                stacklevel=2,
            )

        # ---- PARAMETERS
        nrows = len(hp.data) if hp.data is not None else 0
        nadd = int(hp.header.get("NADDPARM", 0) or 0)
        if "NINTPARM" in hp.header:
            nint = int(hp.header["NINTPARM"])
        else:
            nint = nrows - nadd
            warnings.warn(f"{p}: PARAMETERS has no NINTPARM keyword; using {nint}", stacklevel=2)
        if nint < 1 or nadd < 0 or nint + nadd != nrows:
            raise PopsynthError(
                f"{p}: NINTPARM={nint} + NADDPARM={nadd} does not match the {nrows} rows of "
                "PARAMETERS",
                "fix the NINTPARM/NADDPARM keywords or the parameter rows",
            )
        cols = {c: col(hp, c) for c in _REQUIRED_PARAM_COLUMNS}
        names = [str(s).strip() for s in cols["NAME"]]
        grids, logs = [], []
        for i in range(nint):
            method = int(cols["METHOD"][i])
            if method not in (0, 1):
                raise PopsynthError(
                    f"{p}: parameter '{names[i]}' has METHOD={method}",
                    "METHOD must be 0 (linear) or 1 (logarithmic)",
                )
            nv = int(cols["NUMBVALS"][i])
            vals = np.atleast_1d(np.asarray(cols["VALUE"][i], dtype=np.float64)).reshape(-1)
            if nv < 1 or nv > vals.size:
                raise PopsynthError(
                    f"{p}: parameter '{names[i]}' has NUMBVALS={nv} but VALUE holds {vals.size} "
                    "numbers",
                    "make NUMBVALS the number of tabulated values",
                )
            grids.append(torch.as_tensor(vals[:nv].copy(), dtype=DTYPE))
            logs.append(method == 1)

        def fl(c, sl):
            return [float(x) for x in np.asarray(cols[c], dtype=np.float64)[sl]]

        si, sa = slice(0, nint), slice(nint, nint + nadd)

        # ---- ENERGIES
        unit_lo = (he.columns[[c.upper() for c in he.columns.names].index("ENERG_LO")].unit
                   if "ENERG_LO" in [c.upper() for c in he.columns.names] else "")
        e_lo = np.asarray(col(he, "ENERG_LO"), dtype=np.float64).reshape(-1)
        e_hi = np.asarray(col(he, "ENERG_HI"), dtype=np.float64).reshape(-1)
        ukey = (unit_lo or "").strip().lower()
        if ukey not in _ENERGY_UNITS:
            raise PopsynthError(
                f"{p}: ENERGIES are in unit '{unit_lo}', which popsynth does not convert",
                "use keV, eV or MeV energies",
            )
        e_lo, e_hi = e_lo * _ENERGY_UNITS[ukey], e_hi * _ENERGY_UNITS[ukey]
        n_e = e_lo.size

        # ---- SPECTRA
        shape = tuple(int(g.numel()) for g in grids)
        nspec = len(hs.data) if hs.data is not None else 0
        if nspec != math.prod(shape):
            raise PopsynthError(
                f"{p}: SPECTRA has {nspec} rows but NUMBVALS {dict(zip(names[:nint], shape))} "
                f"give a grid of {math.prod(shape)} points",
                "the file is inconsistent: NUMBVALS must multiply to the number of spectra",
            )
        intp = np.asarray(col(hs, "INTPSPEC"), dtype=np.float64).reshape(nspec, -1)
        if intp.shape[1] != n_e:
            raise PopsynthError(
                f"{p}: INTPSPEC has {intp.shape[1]} values per row but ENERGIES has {n_e} bins",
                "the spectra and energy bins must match",
            )
        addsp = None
        if nadd:
            addsp = np.empty((nspec, nadd, n_e))
            for j in range(nadd):
                a = np.asarray(col(hs, f"ADDSP{j + 1:03d}"), dtype=np.float64).reshape(nspec, -1)
                if a.shape[1] != n_e:
                    raise PopsynthError(
                        f"{p}: ADDSP{j + 1:03d} has {a.shape[1]} values per row, not {n_e}",
                        "the spectra and energy bins must match",
                    )
                addsp[:, j, :] = a
        pv = np.asarray(col(hs, "PARAMVAL"), dtype=np.float64).reshape(nspec, -1)
        if pv.shape[1] != nint:
            raise PopsynthError(
                f"{p}: PARAMVAL has {pv.shape[1]} values per row but NINTPARM={nint}",
                "PARAMVAL must hold one value per interpolation parameter",
            )
        if check_paramval:
            order = _paramval_order(p, pv, [g.numpy() for g in grids], names[:nint])
            if order is not None:
                intp = intp[order]
                if addsp is not None:
                    addsp = addsp[order]
        nbad = int((~np.isfinite(intp)).sum())
        if nbad:
            warnings.warn(f"{p}: {nbad} non-finite values in INTPSPEC", stacklevel=2)

    return TableModel(
        name=modname,
        kind=kind,
        units=units,
        param_names=names[:nint],
        param_grids=grids,
        param_log=logs,
        param_initial=fl("INITIAL", si),
        param_delta=fl("DELTA", si),
        param_min=fl("MINIMUM", si),
        param_max=fl("MAXIMUM", si),
        param_bottom=fl("BOTTOM", si),
        param_top=fl("TOP", si),
        add_param_names=names[nint:],
        add_param_initial=fl("INITIAL", sa),
        add_param_min=fl("MINIMUM", sa),
        add_param_max=fl("MAXIMUM", sa),
        energy_lo=torch.as_tensor(e_lo, dtype=DTYPE),
        energy_hi=torch.as_tensor(e_hi, dtype=DTYPE),
        spectra=torch.as_tensor(intp, dtype=DTYPE).reshape(*shape, n_e),
        add_spectra=None if addsp is None else torch.as_tensor(addsp).reshape(*shape, nadd, n_e),
        has_redshift=has_z,
        lo_elimit=None if lo_el is None else float(lo_el),
        hi_elimit=None if hi_el is None else float(hi_el),
        path=str(p),
    )


def _paramval_order(p, pv: np.ndarray, grids: list[np.ndarray], names: list[str]):
    """None if PARAMVAL follows the memo ordering; else the row permutation (with warning)."""
    mesh = np.stack(np.meshgrid(*grids, indexing="ij"), axis=-1).reshape(-1, len(grids))
    scale = np.array([max(np.abs(g).max(), 1e-300) for g in grids])
    tol = 1e-5 * scale
    if np.all(np.abs(pv - mesh) <= tol):
        return None
    # map every row onto its grid indices
    flat = np.zeros(pv.shape[0], dtype=np.int64)
    stride = 1
    for j in reversed(range(len(grids))):
        g = grids[j]
        d = np.abs(pv[:, j][:, None] - g[None, :])
        ij = d.argmin(axis=1)
        if np.any(d[np.arange(pv.shape[0]), ij] > tol[j]):
            r = int(np.argmax(d[np.arange(pv.shape[0]), ij] > tol[j]))
            raise PopsynthError(
                f"{p}: SPECTRA row {r} has PARAMVAL {names[j]}={pv[r, j]:.6g}, which is not one "
                f"of the tabulated values of {names[j]}",
                "fix PARAMVAL, or read with check_paramval=False to trust the OGIP row order "
                "(last parameter fastest) as XSPEC does",
            )
        flat += ij * stride
        stride *= g.size
    if np.unique(flat).size != flat.size:
        raise PopsynthError(
            f"{p}: PARAMVAL lists some grid points twice and misses others",
            "fix PARAMVAL, or read with check_paramval=False to trust the OGIP row order "
            "(last parameter fastest) as XSPEC does",
        )
    warnings.warn(
        f"{p}: SPECTRA rows are not in OGIP order (last parameter fastest); reordered them by "
        "PARAMVAL. XSPEC ignores PARAMVAL and would read this file differently",
        stacklevel=3,
    )
    order = np.empty_like(flat)
    order[flat] = np.arange(flat.size)
    return order


# --------------------------------------------------------------------------------------
# writing
# --------------------------------------------------------------------------------------


def write_table_model(
    path,
    name: str,
    param_names: Sequence[str],
    param_grids: Sequence[Sequence[float] | torch.Tensor | np.ndarray],
    param_log: Sequence[bool],
    energy_lo,
    energy_hi,
    spectra,
    kind: str = "add",
    redshift: bool = False,
    units: str = "photons/cm^2/s",
    *,
    param_initial: Sequence[float] | None = None,
    param_frozen: Sequence[bool] | None = None,
    add_param_names: Sequence[str] = (),
    add_spectra=None,
    add_param_initial: Sequence[float] | None = None,
    lo_elimit: float | None = None,
    hi_elimit: float | None = None,
    precision: str = "single",
    overwrite: bool = True,
) -> Path:
    """Write an OGIP/92-009 table model that XSPEC loads with atable/mtable/etable.

    ``spectra``: [n_1, ..., n_k, n_e] (or [prod n_i, n_e] already flattened) with parameter
    1 varying slowest, i.e. ``spectra[i1, ..., ik]`` is the spectrum at
    ``(grid_1[i1], ..., grid_k[ik])``; written in the memo's row order (last parameter
    fastest). Additive: photons cm^-2 s^-1 per bin for unit normalisation; multiplicative:
    factors; exponential (kind="exp"): the exponent x of exp(-x) (written as ADDMODEL=F;
    load it in XSPEC with etable).
    ``energy_lo``/``energy_hi``: [n_e] keV. ``add_spectra``: [n_1, ..., n_k, n_add, n_e].
    ``precision``: "single" (E columns, as the memo specifies) or "double" (D columns, exact
    float64 round trip). Hard and soft limits are the grid ends; DELTA is 1% of the range
    (negative, i.e. frozen, where ``param_frozen``). Returns the path.
    """
    from astropy.io import fits

    if kind not in _KINDS:
        raise PopsynthError(f"unknown table kind '{kind}'", "use 'add', 'mul' or 'exp'")
    if precision not in ("single", "double"):
        raise PopsynthError(f"unknown precision '{precision}'", "use 'single' or 'double'")
    ftype, npdt = ("E", np.float32) if precision == "single" else ("D", np.float64)
    k = len(param_names)
    grids = [_f64(g).detach().cpu().numpy().reshape(-1) for g in param_grids]
    elo = _f64(energy_lo).detach().cpu().numpy().reshape(-1)
    ehi = _f64(energy_hi).detach().cpu().numpy().reshape(-1)
    spec = _f64(spectra).detach().cpu().numpy()
    add_names = [str(n) for n in add_param_names]
    na = len(add_names)
    add = None
    if na:
        if add_spectra is None:
            raise PopsynthError("add_param_names given without add_spectra", "pass add_spectra")
        add = _f64(add_spectra).detach().cpu().numpy()
    # validate through the model class (grids, energies, sizes, names)
    model = TableModel(
        name=name,
        kind=kind,
        param_names=param_names,
        param_grids=[torch.as_tensor(g) for g in grids],
        param_log=param_log,
        energy_lo=torch.as_tensor(elo),
        energy_hi=torch.as_tensor(ehi),
        spectra=torch.as_tensor(spec),
        param_initial=param_initial,
        add_param_names=add_names,
        add_spectra=None if add is None else torch.as_tensor(add),
        add_param_initial=add_param_initial,
    )
    for n in model.param_names + add_names:
        if len(n) > 12 or not n.strip():
            raise PopsynthError(
                f"parameter name '{n}' is empty or longer than the 12 characters "
                "OGIP/92-009 allows",
                "use a shorter name",
            )
    if len(str(name)) > 12:
        warnings.warn(
            f"model name '{name}' is longer than the 12 characters of OGIP/92-009", stacklevel=2
        )
    n_e = model.n_energy
    nspec = math.prod(model.shape)

    prim = fits.PrimaryHDU()
    h = prim.header
    h["HDUCLASS"] = ("OGIP", "format conforms to OGIP standard")
    h["HDUCLAS1"] = ("XSPEC TABLE MODEL", "model spectra for XSPEC")
    h["HDUVERS"] = ("1.0.0", "version of format")
    h["MODLNAME"] = (str(name), "model name")
    h["MODLUNIT"] = (str(units) if kind == "add" else "", "model units")
    h["REDSHIFT"] = (bool(redshift), "if true then redshift will be a parameter")
    h["ADDMODEL"] = (kind == "add", "if true then this is an additive model")
    h["POPSKIND"] = (kind, "popsynth: add=atable, mul=mtable, exp=etable")
    if lo_elimit is not None:
        h["LOELIMIT"] = (float(lo_elimit), "model value below the tabulated energies")
    if hi_elimit is not None:
        h["HIELIMIT"] = (float(hi_elimit), "model value above the tabulated energies")
    if kind == "exp":
        h["COMMENT"] = "Exponential table: load in XSPEC with etable{file} (value = exp(-x))."

    nmax = max(g.size for g in grids)
    value = np.zeros((k + na, nmax), dtype=npdt)
    for i, g in enumerate(grids):
        value[i, : g.size] = g
    frozen = list(param_frozen) if param_frozen is not None else [False] * k
    delta = [
        (-1.0 if fr else 1.0)
        * (0.01 * (g[-1] - g[0]) if g.size > 1 else 0.01 * max(abs(g[0]), 1.0))
        for g, fr in zip(grids, frozen)
    ] + [0.01] * na
    lo_lim = [float(g[0]) for g in grids] + [float(x) for x in model.add_param_min]
    hi_lim = [float(g[-1]) for g in grids] + [float(x) for x in model.add_param_max]
    pcols = [
        fits.Column("NAME", "12A", array=np.array(model.param_names + add_names)),
        fits.Column("METHOD", "J", array=np.array([int(b) for b in model.param_log] + [0] * na)),
        fits.Column(
            "INITIAL", ftype, array=np.array(model.param_initial + model.add_param_initial)
        ),
        fits.Column("DELTA", ftype, array=np.array(delta)),
        fits.Column("MINIMUM", ftype, array=np.array(lo_lim)),
        fits.Column("BOTTOM", ftype, array=np.array(lo_lim)),
        fits.Column("TOP", ftype, array=np.array(hi_lim)),
        fits.Column("MAXIMUM", ftype, array=np.array(hi_lim)),
        fits.Column("NUMBVALS", "J", array=np.array([g.size for g in grids] + [0] * na)),
        fits.Column("VALUE", f"{nmax}{ftype}", array=value),
    ]
    hp = fits.BinTableHDU.from_columns(pcols, name="PARAMETERS")
    for key, val in (
        ("HDUCLASS", "OGIP"),
        ("HDUCLAS1", "XSPEC TABLE MODEL"),
        ("HDUCLAS2", "PARAMETERS"),
        ("HDUVERS", "1.0.0"),
    ):
        hp.header[key] = val
    hp.header["NINTPARM"] = (k, "number of interpolation parameters")
    hp.header["NADDPARM"] = (na, "number of additional parameters")

    he = fits.BinTableHDU.from_columns(
        [
            fits.Column("ENERG_LO", ftype, unit="keV", array=elo),
            fits.Column("ENERG_HI", ftype, unit="keV", array=ehi),
        ],
        name="ENERGIES",
    )
    for key, val in (
        ("HDUCLASS", "OGIP"),
        ("HDUCLAS1", "XSPEC TABLE MODEL"),
        ("HDUCLAS2", "ENERGIES"),
        ("HDUVERS", "1.0.0"),
    ):
        he.header[key] = val

    mesh = np.stack(np.meshgrid(*grids, indexing="ij"), axis=-1).reshape(nspec, k)
    scols = [
        fits.Column("PARAMVAL", f"{k}{ftype}", array=mesh.astype(npdt)),
        fits.Column(
            "INTPSPEC",
            f"{n_e}{ftype}",
            unit=str(units) if kind == "add" else "",
            array=model.spectra.reshape(nspec, n_e).numpy().astype(npdt),
        ),
    ]
    if na:
        addf = model.add_spectra.reshape(nspec, na, n_e).numpy().astype(npdt)
        for j in range(na):
            scols.append(fits.Column(f"ADDSP{j + 1:03d}", f"{n_e}{ftype}", array=addf[:, j, :]))
    hs = fits.BinTableHDU.from_columns(scols, name="SPECTRA")
    for key, val in (
        ("HDUCLASS", "OGIP"),
        ("HDUCLAS1", "XSPEC TABLE MODEL"),
        ("HDUCLAS2", "MODEL SPECTRA"),
        ("HDUVERS", "1.0.0"),
    ):
        hs.header[key] = val

    out = Path(path)
    if out.exists() and not overwrite:
        raise PopsynthError(f"{out} exists", "pass overwrite=True or choose another path")
    fits.HDUList([prim, hp, he, hs]).writeto(out, overwrite=overwrite)
    return out


# --------------------------------------------------------------------------------------
# external torus tables
# --------------------------------------------------------------------------------------


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


class ExternalTorus:
    """An external XSPEC torus table (e.g. torus1006.fits, UXCLUMPY, borus02) used in place
    of popsynth's built-in torus.

    Each table parameter is fed from a popsynth quantity through :data:`TORUS_PARAMETERS`
    (names matched case- and punctuation-insensitively; e.g. BNTorus ``nH`` [1e22 cm^-2]
    <- ``nh`` [cm^-2] / 1e22, borus02 ``logNHtor`` <- log10 ``nh``, ``cos(thInc)`` <- cos of
    ``theta_inc`` in degrees), from ``mapping`` (table name -> (popsynth quantity, function))
    for tables with other names, or held fixed via ``fixed`` (table name -> value). The
    table's redshift is the ``z`` argument of :meth:`spectrum`, never a table parameter.
    """

    def __init__(
        self,
        table: TableModel | str | Path,
        fixed: Mapping[str, float] | None = None,
        mapping: Mapping[str, tuple[str, Callable[[torch.Tensor], torch.Tensor]]] | None = None,
        out_of_range: str = "raise",
        use_defaults: bool = False,
    ):
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

    def describe(self) -> str:
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

    def spectrum(
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
                "pass exactly the quantities the table uses (see ExternalTorus.describe())",
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
