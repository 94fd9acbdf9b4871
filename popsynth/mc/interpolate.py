"""Applying the Green's function tables: interpolation between nodes and inclination bins,
response matrices, reprocessed spectra, and the analytic transmitted beam.

Interpolation and grid limits
-----------------------------
:func:`response_matrix` and :func:`apply_greens` interpolate linearly in log N_H and theta_tor
between table nodes and linearly in cos i between the centres of the inclination bins that lie
on the same side of the torus opening as the requested line of sight (so an observer in the
opening never mixes with bins seen through the torus); beyond the outermost bin centre of that
side the end bin is used (nearest). log N_H or theta_tor outside the node range raise
:class:`~popsynth.errors.PopsynthError`, or, with ``out_of_grid="clamp"``, are clamped to the
nearest node with a ``UserWarning``: never silently.
"""

from __future__ import annotations

import warnings

import torch

from .._tensor import bracket
from ..errors import PopsynthError
from ..physics import crosssections as xs
from .table import GreensTable, Reprocessed

def _bracket(nodes: torch.Tensor, x: torch.Tensor, name: str, out_of_grid: str):
    """Indices (i0, i1) and weight w1 for linear interpolation of ``x`` [B] on ``nodes`` [n]."""
    lo, hi = float(nodes[0]), float(nodes[-1])
    bad = (x < lo - 1e-9) | (x > hi + 1e-9) | ~torch.isfinite(x)
    if bool(bad.any()):
        vals = x[bad].detach().cpu().numpy()
        if out_of_grid == "raise":
            raise PopsynthError(
                f"{name} = {vals[:5]} outside the Green's function table range [{lo:g}, {hi:g}]",
                "stay inside the table, pass out_of_grid='clamp' to use the nearest node, or "
                "rebuild the table with wider nodes (python -m popsynth.mc.build)",
            )
        if out_of_grid != "clamp":
            raise PopsynthError(f"out_of_grid='{out_of_grid}'", "use 'raise' or 'clamp'")
        warnings.warn(
            f"{name} = {vals[:5]} outside the table range [{lo:g}, {hi:g}]: clamped to the nearest node",
            UserWarning, stacklevel=3,
        )
    x = torch.nan_to_num(x, nan=lo).clamp(lo, hi)
    n = nodes.numel()
    if n == 1:
        z = torch.zeros_like(x, dtype=torch.long)
        return z, z, torch.zeros_like(x)
    i0, i1, w1, _ = bracket(nodes, x)
    return i0, i1, w1


def _inclination_weights(cos_edges: torch.Tensor, split: int, ci: torch.Tensor):
    """Bins (j0, j1) and weight w1 interpolating linearly in cos i between bin centres on the
    same side of the torus opening (bins < split: through the torus; >= split: opening).

    cos_edges [B, n_inc + 1] (per requested point), ci [B] in [0, 1]."""
    n_inc = cos_edges.shape[1] - 1
    centres = 0.5 * (cos_edges[:, 1:] + cos_edges[:, :-1])
    if split > 0:
        open_side = ci >= cos_edges[:, split]
        one = torch.ones_like(ci, dtype=torch.long)
        lo_bin = torch.where(open_side, split * one, 0 * one)
        hi_bin = torch.where(open_side, (n_inc - 1) * one, (split - 1) * one)
    else:
        lo_bin = torch.zeros_like(ci, dtype=torch.long)
        hi_bin = torch.full_like(lo_bin, n_inc - 1)
    j = torch.searchsorted(centres.contiguous(), ci.unsqueeze(1).contiguous(), right=True).squeeze(1) - 1
    j0 = torch.maximum(torch.minimum(j, hi_bin), lo_bin)
    j1 = torch.minimum(j0 + 1, hi_bin)
    c0 = centres.gather(1, j0.unsqueeze(1)).squeeze(1)
    c1 = centres.gather(1, j1.unsqueeze(1)).squeeze(1)
    w1 = torch.where(j1 > j0, ((ci - c0) / (c1 - c0)).clamp(0.0, 1.0), torch.zeros_like(ci))
    return j0, j1, w1


def interpolation_corners(
    table: GreensTable,
    inclination_deg,
    log_nh=None,
    theta_tor_deg=None,
    *,
    out_of_grid: str = "raise",
    device: torch.device | str | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, bool]:
    """Table nodes and weights that interpolate the Green's functions at the requested points.

    Arguments as :func:`response_matrix`. Returns (a, b, j, w, scalar): long tensors a (log N_H
    node), b (theta_tor node), j (inclination bin), each [B, 8], and float64 weights w [B, 8]
    summing to 1, such that the interpolated matrix of point p is
    sum_c w[p, c] * G[a[p, c], b[p, c], j[p, c]]; ``scalar`` says all inputs were scalars.
    """
    dev = torch.device(device) if device is not None else torch.device("cpu")
    t = table.tensors(dev)
    f64 = torch.float64
    inc = torch.as_tensor(inclination_deg, dtype=f64, device=dev)
    scalar = inc.dim() == 0
    if table.kind == "torus":
        if log_nh is None or theta_tor_deg is None:
            raise PopsynthError("the torus table needs log_nh and theta_tor_deg", "pass both")
        nh = torch.as_tensor(log_nh, dtype=f64, device=dev)
        th = torch.as_tensor(theta_tor_deg, dtype=f64, device=dev)
        scalar = scalar and nh.dim() == 0 and th.dim() == 0
        inc, nh, th = torch.broadcast_tensors(inc.reshape(-1), nh.reshape(-1), th.reshape(-1))
        if bool(((inc < 0) | (inc > 180)).any()):
            raise PopsynthError(f"inclination {inc.tolist()[:5]} deg outside 0-180", "pass degrees")
        ci = torch.cos(torch.deg2rad(inc)).abs()
        a0, a1, wa = _bracket(t["log_nh"], nh, "log_nh", out_of_grid)
        b0, b1, wb = _bracket(t["theta"], th, "theta_tor_deg", out_of_grid)
    else:
        inc = inc.reshape(-1)
        if bool(((inc < 0) | (inc > 90)).any()):
            raise PopsynthError(
                f"slab inclination {inc.tolist()[:5]} deg outside 0-90", "pass the angle from the normal in degrees"
            )
        ci = torch.cos(torch.deg2rad(inc)).clamp(0.0, 1.0)
        a0 = a1 = b0 = b1 = torch.zeros_like(ci, dtype=torch.long)
        wa = wb = torch.zeros_like(ci)
    ce = t["cos_edges"]
    aa, bb, jj, ww = [], [], [], []
    for a, w_a in ((a0, 1.0 - wa), (a1, wa)):
        for b, w_b in ((b0, 1.0 - wb), (b1, wb)):
            j0, j1, wj = _inclination_weights(ce[b], table.n_torus_bins, ci)
            for j, w_j in ((j0, 1.0 - wj), (j1, wj)):
                aa.append(a)
                bb.append(b)
                jj.append(j)
                ww.append(w_a * w_b * w_j)
    return torch.stack(aa, 1), torch.stack(bb, 1), torch.stack(jj, 1), torch.stack(ww, 1), scalar


def response_matrix(
    table: GreensTable,
    inclination_deg,
    log_nh=None,
    theta_tor_deg=None,
    *,
    out_of_grid: str = "raise",
    device: torch.device | str | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Interpolated Green's matrices for the requested configurations.

    inclination_deg: angle(s) from the slab normal / torus axis in degrees (torus: 0-180,
    folded about the equator; slab: 0-90). log_nh: log10 N_H (cm^-2), torus only.
    theta_tor_deg: torus half-opening angle(s) in deg, torus only. Scalars or 1-D tensors /
    arrays of a common length B (broadcast). device: default CPU.
    Returns (M [..., n_out, n_in], M_line [..., L, n_in]) float64, with leading shape () for
    scalar inputs or (B,), such that continuum = M @ N_in and lines = M_line @ N_in.
    """
    dev = torch.device(device) if device is not None else torch.device("cpu")
    a, b, j, w, scalar = interpolation_corners(
        table, inclination_deg, log_nh, theta_tor_deg, out_of_grid=out_of_grid, device=dev
    )
    t = table.tensors(dev)
    G, GL = t["G"], t["G_line"]
    M = 0.0
    ML = 0.0
    for c in range(w.shape[1]):
        wc = w[:, c, None, None]
        M = M + wc * G[a[:, c], b[:, c], j[:, c]].to(torch.float64)
        ML = ML + wc * GL[a[:, c], b[:, c], j[:, c]].to(torch.float64)
    if scalar:
        return M[0], ML[0]
    return M, ML


def apply_greens(
    table: GreensTable,
    n_in: torch.Tensor,
    inclination_deg,
    log_nh=None,
    theta_tor_deg=None,
    *,
    out_of_grid: str = "raise",
) -> Reprocessed:
    """Reprocessed photon spectrum for an input photon spectrum ``n_in``.

    n_in: [..., n_in] photons per input bin (``table.e_in_edges``) that the observer would
    receive directly from the bare source, float64 tensor on any device (differentiable).
    inclination_deg, log_nh, theta_tor_deg, out_of_grid: as :func:`response_matrix` (scalars,
    or 1-D of length B that broadcast against the leading axes of ``n_in``).
    Returns :class:`Reprocessed` (continuum [..., n_out] per output bin of
    ``table.e_out_edges``; lines [..., L]), same units as ``n_in``. The transmitted beam is
    not included (see :func:`transmitted_fraction`).
    """
    n_in = torch.as_tensor(n_in, dtype=torch.float64)
    if n_in.shape[-1] != table.n_in:
        raise PopsynthError(
            f"input spectrum has {n_in.shape[-1]} bins, the table has {table.n_in}",
            "bin the input spectrum on table.e_in_edges",
        )
    M, ML = response_matrix(
        table, inclination_deg, log_nh, theta_tor_deg, out_of_grid=out_of_grid, device=n_in.device
    )
    cont = (M @ n_in.unsqueeze(-1)).squeeze(-1)
    lines = (ML @ n_in.unsqueeze(-1)).squeeze(-1)
    return Reprocessed(cont, lines)


def transmitted_fraction(energy_keV, log_nh, theta_tor_deg=None, inclination_deg=None, abund: str = "angr") -> torch.Tensor:
    """Zeroth-order (unscattered) transmission along the line of sight, exp(-N_H sigma_tot(E)).

    sigma_tot = sigma_photo + 1.21 sigma_KN per H atom (the same physics as the Monte Carlo).
    For the torus, lines of sight with inclination < theta_tor (or > 180 - theta_tor) pass
    through the opening: transmission 1. energy_keV: [..., n_E] keV; log_nh, theta_tor_deg,
    inclination_deg: floats. Returns float64 [..., n_E] on the energies' device (CPU for
    non-tensors).
    """
    e = torch.as_tensor(energy_keV, dtype=torch.float64)
    sig = xs.sigma_photo(e, abund=abund) + xs.ELECTRONS_PER_H * xs.sigma_kn(e)
    tr = torch.exp(-(10.0 ** float(log_nh)) * sig)
    if theta_tor_deg is not None and inclination_deg is not None:
        inc = float(inclination_deg) % 180.0
        inc = min(inc, 180.0 - inc)
        if inc < float(theta_tor_deg):
            return torch.ones_like(tr)
    return tr
