"""Number-count and Compton-thick-fraction constraints of a run (A19 section 4, Table 2; section 6).

A19 trains on the CXB, then picks among the converged starts the one that best fits the X-ray
number counts and the observed CT fractions. :class:`Constraints` holds the observables of
every constraint (built once per run from :mod:`popsynth.observables`), batched over starts:

* ``chi2(w)``: chi^2 of every constraint, {name: [B]};
* ``residuals(w)``: residuals [B, n] whose squares sum to the weighted chi^2 of all constraints
  (for the joint fit, ``--mode joint``): each constraint enters with the weight
  ``counts_weight`` (number counts) or ``ct_weight`` (CT fractions), default 1, i.e. plain
  chi^2 with the published errors (asymmetric: the upper error where the model is above the
  datum, the lower one below).

Default constraints (:data:`DEFAULT_COUNTS`): the Swift/BAT 105-month differential counts
(independent bins; the cumulative table carries the same sources), the CDF-S 4 Ms AGN counts of
Lehmer et al. 2012 in 0.5-2 and 2-8 keV and the XMM-COSMOS 2-10 keV counts of Cappelluti et al.
2009; and every observed CT fraction in ``data/counts/ct_fractions.ecsv`` (Swift/BAT 70-month,
NuSTAR UDS, COSMOS and serendipitous). The Luo et al. 2017 7 Ms counts are left out by default
because their population (all sources or AGN only) is not known (data/counts/README.md); pass
them explicitly to use them. Cumulative counts are correlated from point to point, so their
chi^2 is not a strict chi^2 (as in A19, which compared cumulative curves too).
"""

from __future__ import annotations

import hashlib
import math
import pickle
import warnings
from pathlib import Path

import torch

from .data.counts import list_counts, load_counts, load_ct_fractions
from .errors import PopsynthError
from .grid import Grid
from .io.cache import arrays_sha256, cache_file, cache_key, cached, source_digest
from .observables import asym_residuals, build_counts_model, build_ct_model, model_from_state, model_state
from .spectra.table import SpectralTable
from .survey import survey_for_counts, survey_for_ct

DEFAULT_COUNTS = (
    "bat105_agn_differential_14_195keV",
    "lehmer12_cdfs4ms_agn_cumulative_0p5_2keV",
    "lehmer12_cdfs4ms_agn_cumulative_2_8keV",
    "cappelluti09_xmmcosmos_cumulative_2_10keV",
)


def _num(x):
    """float, or None for NaN (JSON has no NaN)."""
    x = float(x)
    return None if math.isnan(x) else x


def ct_key(survey: str) -> str:
    """Short identifier of a CT-fraction row: 'ct:' + the survey name in lower case with underscores."""
    return "ct:" + "".join(c if c.isalnum() else "_" for c in survey.lower()).strip("_").replace("__", "_")


def _inputs_key(grid: Grid, phi0: torch.Tensor, table: SpectralTable) -> str:
    """The part of a survey model's cache key shared by a run's models: the grid, phi0, the
    per-draw spectra, the package sources, the torch version and its thread count (which sets
    the last bits of the reductions)."""
    return cache_key({"grid": arrays_sha256(grid.z, grid.logl_edges, grid.lognh_edges), "phi0": arrays_sha256(phi0),
                      "spectra": arrays_sha256(table.energy, table.lognh, table.per_draw), "code": source_digest(),
                      "torch": torch.__version__, "threads": torch.get_num_threads()})


def _model_cache_path(kind: str, item, inputs: str) -> tuple[Path, str]:
    """(cache file, key) of one survey model: the data row or table ``item`` and :func:`_inputs_key`."""
    key = cache_key({"kind": kind, "item": hashlib.sha256(pickle.dumps(item)).hexdigest(), "inputs": inputs})
    name = "".join(c if c.isalnum() else "_" for c in str(getattr(item, "name", None) or getattr(item, "survey", kind)))
    return cache_file("surveys", f"{name[:60]}-{key}.pt"), key


def _load_state(path: Path, key: str) -> dict | None:
    """The model state in a cache file (tensors and plain values only: ``weights_only``, no pickled
    code is run), or None (with a warning) when the file is damaged or not a model state."""
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
        ok = isinstance(blob, dict) and isinstance(blob.get("state"), dict) and {"tensors", "nh_threshold", "target",
                                                                                  "lazy"} <= set(blob["state"])
    except Exception as exc:  # noqa: BLE001 - a damaged or foreign file: rebuild it
        ok, blob = False, exc
    if not ok:
        why = type(blob).__name__ if isinstance(blob, Exception) else "not a survey-model state"
        warnings.warn(f"ignoring the survey-model cache file {path} ({why}); rebuilding it", RuntimeWarning, stacklevel=3)
        return None
    return blob["state"] if blob.get("key") == key else None


def _cached_model(kind: str, item, grid: Grid, phi0: torch.Tensor, table: SpectralTable, device, inputs: str | None):
    """The survey model of a counts table (``kind`` "counts") or a CT-fraction row ("ct"), built by
    :func:`build_counts_model` / :func:`build_ct_model`; kept on disk under ``inputs``
    (:func:`_inputs_key`; None: not cached)."""
    build, survey_of = {"counts": (build_counts_model, survey_for_counts), "ct": (build_ct_model, survey_for_ct)}[kind]
    if inputs is None:
        return build(item, grid, phi0, table, device=device)
    path, key = _model_cache_path(kind, item, inputs)
    state = cached(lambda: model_state(build(item, grid, phi0, table, device=device)), key, path=path,
                   load=_load_state, save=lambda tmp, st: torch.save({"key": key, "state": st}, tmp),
                   what="survey-model cache file")
    return model_from_state(state, survey_of(item), item, grid, phi0, device)


class Constraints:
    """Counts and CT-fraction constraints for block weights w [B, 15].

    Args: grid, phi0 [nz, nL, nN] (Mpc^-3 dex^-2, cell averages), table (the run's spectral
    table, with per-draw spectra), counts (names of ``data/counts`` tables), use_ct (include the
    observed CT fractions), counts_weight and ct_weight (multipliers of the chi^2 in the joint
    loss), device, cache: keep each survey model in the cache folder (``cache_dir()/surveys``,
    10-20 MB each; CPU only), keyed by everything it is computed from (:func:`_model_cache_path`),
    so that a run's set-up reads the eight default models (~9 s to build on 2 cores) instead of
    building them.
    """

    def __init__(self, grid: Grid, phi0: torch.Tensor, table: SpectralTable, counts=DEFAULT_COUNTS,
                 use_ct: bool = True, counts_weight: float = 1.0, ct_weight: float = 1.0, device=None,
                 cache: bool = False):
        known = list_counts()
        bad = [n for n in counts if n not in known]
        if bad:
            raise PopsynthError(f"unknown counts table(s) {bad}", f"choose from {known}")
        if counts_weight < 0 or ct_weight < 0 or not (math.isfinite(counts_weight) and math.isfinite(ct_weight)):
            raise PopsynthError(f"constraint weights must be finite and >= 0, got {counts_weight}, {ct_weight}",
                                "pass `counts_weight` and `ct_weight` >= 0")
        self.counts_weight = float(counts_weight)
        self.ct_weight = float(ct_weight)
        self.models = {}
        cpu = (phi0.device if device is None else torch.device(device)).type == "cpu"
        inputs = _inputs_key(grid, phi0, table) if cache and cpu else None
        for name in counts:
            self.models[name] = _cached_model("counts", load_counts(name), grid, phi0, table, device, inputs)
        self.ct_rows = load_ct_fractions() if use_ct else []
        for row in self.ct_rows:
            self.models[ct_key(row.survey)] = _cached_model("ct", row, grid, phi0, table, device, inputs)

    @property
    def names(self) -> list[str]:
        return list(self.models)

    def is_ct(self, name: str) -> bool:
        return self.models[name].target == "ct_fraction"

    def n_points(self, name: str) -> int:
        m = self.models[name]
        return 1 if self.is_ct(name) else int(m.data.value.size)

    def chi2(self, w: torch.Tensor) -> dict[str, torch.Tensor]:
        """chi^2 of every constraint: {name: [B]}."""
        return {n: m.chi2(w) for n, m in self.models.items()}

    def total(self, w: torch.Tensor) -> torch.Tensor:
        """Unweighted sum of the constraint chi^2: [B] (the A19-faithful selection statistic)."""
        out = torch.zeros(w.shape[0], dtype=w.dtype, device=w.device)
        for v in self.chi2(w).values():
            out = out + v
        return out

    def residuals(self, w: torch.Tensor) -> torch.Tensor:
        """[B, n] residuals, sum of squares = sum_c weight_c chi^2_c (asymmetric errors)."""
        parts = []
        for n, m in self.models.items():
            d = m.data
            if self.is_ct(n):
                r = asym_residuals(m.predict(w)[:, None], d.fraction, d.err_lo, d.err_hi)
                parts.append(r * math.sqrt(self.ct_weight))
            else:
                r = asym_residuals(m.predict(w), d.value, d.err_lo, d.err_hi)
                parts.append(r * math.sqrt(self.counts_weight))
        if not parts:
            return w[:, :0]
        return torch.cat(parts, dim=-1)

    def residuals_and_jacobian(self, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(:meth:`residuals` [B, n], their derivative with respect to w [B, n, 15]).

        Counts are linear in w (w @ R), so d r / d w = R / error (the asymmetric error is piecewise
        constant); a CT fraction f = (w . c) / (w . s) has d f / d w = (c - f s) / (w . s)."""
        rs, js = [], []
        for n, m in self.models.items():
            d = m.data
            if self.is_ct(n):
                num, den = w @ m.ct_response, w @ m.sample_response
                f = num / den
                v = torch.as_tensor(d.fraction, dtype=w.dtype, device=w.device)
                err = torch.where(f - v > 0, torch.as_tensor(d.err_hi, dtype=w.dtype, device=w.device),
                                  torch.as_tensor(d.err_lo, dtype=w.dtype, device=w.device))
                k = math.sqrt(self.ct_weight)
                rs.append(asym_residuals(m.predict(w)[:, None], d.fraction, d.err_lo, d.err_hi) * k)
                js.append(((m.ct_response[None] - f[:, None] * m.sample_response[None]) / (den * err / k)[:, None])[:, None])
            else:
                resp = {"cumulative": m.cum_response, "differential": m.diff_response,
                        "binned": m.bin_response}[m.target].T  # [n, 15]
                pred = m.predict(w)
                v = torch.as_tensor(d.value, dtype=w.dtype, device=w.device)
                err = torch.where(pred - v > 0, torch.as_tensor(d.err_hi, dtype=w.dtype, device=w.device),
                                  torch.as_tensor(d.err_lo, dtype=w.dtype, device=w.device))
                k = math.sqrt(self.counts_weight)
                rs.append(asym_residuals(pred, d.value, d.err_lo, d.err_hi) * k)
                js.append(resp[None] * (k / err)[..., None])
        if not rs:
            return w[:, :0], w[:, :0, None].expand(-1, -1, w.shape[-1])
        return torch.cat(rs, dim=-1), torch.cat(js, dim=1)

    def ct_fractions(self, w: torch.Tensor) -> list[dict]:
        """Observed versus model CT fraction of every CT constraint, for weights w [1, 15]."""
        out = []
        for row in self.ct_rows:
            m = self.models[ct_key(row.survey)]
            zr = None if row.z_range is None else [_num(row.z_range[0]), _num(row.z_range[1])]
            out.append({"survey": row.survey, "band_keV": list(row.band_keV), "flux_limit": row.flux_limit,
                        "z_range": zr, "nh_threshold": row.nh_threshold,
                        "observed": row.fraction, "err_lo": row.err_lo, "err_hi": row.err_hi,
                        "model": float(m.ct_fraction(w)[0]), "model_intrinsic": float(m.intrinsic_ct_fraction(w)[0])})
        return out
