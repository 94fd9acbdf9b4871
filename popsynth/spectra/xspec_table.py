"""XSPEC table models (OGIP/92-009): the model object and its differentiable evaluation.

Reading and writing the FITS files is :mod:`popsynth.io.ogip`; an external torus table used
as a spectral component is :class:`popsynth.spectra.external_torus.ExternalTorus`.

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
import warnings
from typing import Mapping, Sequence

import numpy as np
import torch

from .._tensor import DTYPE
from ..errors import PopsynthError

__all__ = ["TableModel"]

_KINDS = ("add", "mul", "exp")
_GRID_FUZZ = 1e-6



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
    lead = np.broadcast_shapes(tuple(cum.shape[:-1]), tuple(rest.shape[:-1]))
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
