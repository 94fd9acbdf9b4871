"""Losses and batched optimisers for block weights of many random starts at once.

Every start b has its own weights w[b, 15] > 0 and its own loss; the starts never interact,
so the batch is advanced together (the gradient of the summed loss is each start's gradient).

Losses (``residuals`` returns r[b, n] with loss = sum_n r^2; an optional weak prior on the
weights, :func:`prior_residuals`, appends its own residuals):
  - "a19": A19 eq. B3, C = sum_E (obs - model)^2 / (2 n) (intensity units squared).
  - "chi2": sum ((model - obs) / sigma)^2 with the asymmetric 1-sigma error on the side of the
    model (err_hi if model > obs, else err_lo), plus an optional systematic floor added in
    quadrature: sigma^2 = sigma_stat^2 + (f_sys * obs)^2.
A19 calls a start converged when its eq. B3 cost is <= 5 ("roughly reduced chi^2 <= 2").

Optimisers:
  - "gd": plain gradient descent on w as in A19 eq. B6 (w -> w - lr dC/dw), with w clipped at
    1e-6 to stay positive. Gradients by autograd instead of A19's finite differences.
  - "adam": Adam on u = log w (positivity by construction).
  - "lm": batched Levenberg-Marquardt on u = log w with per-start damping; Jacobians by
    forward-mode autograd, the 15 tangents pushed through the whole batch of starts at once
    (:func:`jacobian_rows`), in chunks of starts. The default: it converges in tens of steps
    where gradient descent needs thousands.
"""

from __future__ import annotations

import math
from typing import Callable, NamedTuple

import torch

from ._tensor import DTYPE
from .errors import PopsynthError

LOSSES = ("chi2", "a19")
A19_CONVERGED_COST = 5.0
LOG_W_MIN, LOG_W_MAX = -14.0, 9.0  # weights kept within [8e-7, 8e3]


class FitData(NamedTuple):
    """Observed points, concatenated over datasets.

    energy [n] keV; obs, err_lo, err_hi [n] in keV^2 cm^-2 s^-1 keV^-1 sr^-1; dataset long [n]
    (index into names); names/labels per dataset.
    """

    energy: torch.Tensor
    obs: torch.Tensor
    err_lo: torch.Tensor
    err_hi: torch.Tensor
    dataset: torch.Tensor
    names: tuple
    labels: tuple

    @classmethod
    def from_cxb(cls, datasets, device=None) -> "FitData":
        """Build from a list of :class:`popsynth.data.cxb.CXBDataset`."""
        cat = lambda attr: torch.cat([torch.as_tensor(getattr(d, attr), dtype=DTYPE) for d in datasets]).to(device)  # noqa: E731
        idx = torch.cat([torch.full((len(d.energy),), i, dtype=torch.long) for i, d in enumerate(datasets)]).to(device)
        return cls(cat("energy"), cat("intensity"), cat("err_lo"), cat("err_hi"), idx,
                   tuple(d.name for d in datasets), tuple(d.label for d in datasets))

    @property
    def n(self) -> int:
        return int(self.obs.numel())


def sigma(pred: torch.Tensor, data: FitData, sys_floor: float = 0.0) -> torch.Tensor:
    """1-sigma error per point on the model's side, with the systematic floor: [B, n]."""
    s = torch.where(pred > data.obs, data.err_hi, data.err_lo)
    if sys_floor:
        s = torch.sqrt(s ** 2 + (sys_floor * data.obs) ** 2)
    return s


def residuals(pred: torch.Tensor, data: FitData, loss: str = "chi2", sys_floor: float = 0.0) -> torch.Tensor:
    """Residuals r[B, n] whose squares sum to the loss of each start."""
    if loss == "a19":
        return (pred - data.obs) / (2.0 * data.n) ** 0.5
    if loss == "chi2":
        return (pred - data.obs) / sigma(pred, data, sys_floor)
    raise PopsynthError(f"unknown loss '{loss}'", f"use --loss {' or '.join(LOSSES)}")


def prior_residuals(weights: torch.Tensor, sigma_dex: float) -> torch.Tensor:
    """Residuals of a Gaussian prior on log10 w around 0 (w = 1, the U14+R15 start): [B, 15].

    Adds sum_k (log10 w_k / sigma_dex)^2 to the loss. The CXB alone does not fix 15 block
    weights (A19 section 5.1: "different distribution in luminosity bins can produce the same
    CXB"); a weak prior (1 dex: a factor 10) keeps the degenerate directions near the start
    instead of wherever the optimiser wanders. sigma_dex <= 0 disables it (returns [B, 0]).
    """
    if sigma_dex <= 0:
        return weights[:, :0]
    return torch.log10(weights) / sigma_dex


def a19_cost(pred: torch.Tensor, data: FitData) -> torch.Tensor:
    """A19 eq. B3 cost per start: sum (obs - model)^2 / (2 n); [B]."""
    return ((pred - data.obs) ** 2).sum(-1) / (2.0 * data.n)


def chi2_by_dataset(pred: torch.Tensor, data: FitData, sys_floor: float = 0.0) -> torch.Tensor:
    """chi^2 per start and dataset: [B, n_datasets]."""
    terms = ((pred - data.obs) / sigma(pred, data, sys_floor)) ** 2
    out = torch.zeros(pred.shape[0], len(data.names), dtype=pred.dtype, device=pred.device)
    return out.index_add_(1, data.dataset, terms)


class Optimizer:
    """Base class: state is a dict of tensors (checkpointable); ``weights(state)`` -> w [B, 15].

    ``lr_range`` (low, high) is the range of ``lr`` in which the optimiser can make progress on
    this problem; outside it a run either never moves or jumps straight to the weight bounds
    (measured on the default data for every loss; see each class). ``lr_meaning`` says what
    ``lr`` is for this optimiser.
    """

    name = "base"
    default_lr = 0.0
    default_steps = 0
    lr_range = (0.0, math.inf)
    lr_meaning = "learning rate"

    def __init__(self, lr: float | None = None):
        if lr is not None and (isinstance(lr, bool) or not isinstance(lr, (int, float))):
            raise PopsynthError(f"learning rate lr must be a number, got {lr!r}", "pass a positive --lr")
        self.lr = self.default_lr if lr is None else float(lr)
        lo, hi = self.lr_range
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise PopsynthError(f"learning rate --lr must be finite and > 0, got {lr}",
                                f"pass --lr between {lo:g} and {hi:g} for --optimizer {self.name} ({self.lr_meaning}; "
                                f"default {self.default_lr:g})")
        if not (lo <= self.lr <= hi):
            raise PopsynthError(f"learning rate --lr {self.lr:g} is outside the working range of --optimizer {self.name}, "
                                f"{lo:g} to {hi:g} ({self.lr_meaning})",
                                f"pass --lr within it (default {self.default_lr:g}), or omit --lr")

    def init(self, w0: torch.Tensor) -> dict:
        raise NotImplementedError

    def state_spec(self, n_starts: int, n_blocks: int) -> dict[str, tuple[tuple, torch.dtype]]:
        """Shape and dtype of every state tensor for ``n_starts`` x ``n_blocks`` weights."""
        raise NotImplementedError

    def weights(self, state: dict) -> torch.Tensor:
        return torch.exp(state["u"])

    def step(self, state: dict, residual_fn: Callable[[torch.Tensor], torch.Tensor]) -> tuple[dict, torch.Tensor]:
        """One step for all starts; returns (new state, loss [B] at the new point)."""
        raise NotImplementedError


def _loss_and_grad(fn, x):
    x = x.detach().requires_grad_(True)
    loss = (fn(x) ** 2).sum(-1)
    (g,) = torch.autograd.grad(loss.sum(), x)
    return loss.detach(), g


class GradientDescent(Optimizer):
    """A19 eq. B6 on the weights themselves; w clipped at 1e-6 to stay positive."""

    name = "gd"
    default_lr = 2e-3
    default_steps = 20000
    # lr multiplies dC/dw; on the default data the a19 cost converges for 1e-4 - 1e-2 and chi2
    # (gradients ~100x larger) for 1e-6 - 1e-4; 0.1 diverges for both.
    lr_range = (1e-10, 0.1)
    lr_meaning = "step on w per unit gradient"

    def init(self, w0):
        return {"w": w0.clone()}

    def state_spec(self, n_starts, n_blocks):
        return {"w": ((n_starts, n_blocks), DTYPE)}

    def weights(self, state):
        return state["w"]

    def step(self, state, residual_fn):
        _, g = _loss_and_grad(residual_fn, state["w"])
        w = (state["w"] - self.lr * g).clamp_min(1e-6)
        loss = (residual_fn(w) ** 2).sum(-1).detach()
        return {"w": w}, loss


class Adam(Optimizer):
    """Adam (Kingma & Ba 2015) on u = log w: one ``torch.optim.Adam`` step per call.

    The state stays a dict of plain tensors (u, m, v, t), checkpointable and checked like every
    optimiser's: m and v are ``torch.optim.Adam``'s ``exp_avg`` and ``exp_avg_sq``, t its
    ``step``; each call loads them into a fresh ``torch.optim.Adam`` (no Python object to pickle)
    and reads them back. u is clamped to [LOG_W_MIN, LOG_W_MAX] after the step.
    """

    name = "adam"
    default_lr = 0.05
    default_steps = 3000
    betas = (0.9, 0.999)
    eps = 1e-8
    # lr is the step in log w: on the default data 1e-3 - 1 converge, 3 and above jump to the
    # weight bounds; below 1e-5 the weights move by less than 0.03 dex in the default steps.
    lr_range = (1e-5, 1.0)
    lr_meaning = "step in ln w per iteration"

    def init(self, w0):
        u = torch.log(w0)
        return {"u": u, "m": torch.zeros_like(u), "v": torch.zeros_like(u), "t": torch.zeros((), dtype=DTYPE, device=u.device)}

    def state_spec(self, n_starts, n_blocks):
        return {"u": ((n_starts, n_blocks), DTYPE), "m": ((n_starts, n_blocks), DTYPE),
                "v": ((n_starts, n_blocks), DTYPE), "t": ((), DTYPE)}

    def step(self, state, residual_fn):
        u = state["u"].detach().clone().requires_grad_(True)
        opt = torch.optim.Adam([u], lr=self.lr, betas=self.betas, eps=self.eps, foreach=False)
        opt.state[u] = {"step": state["t"].detach().clone(), "exp_avg": state["m"].detach().clone(),
                        "exp_avg_sq": state["v"].detach().clone()}
        loss = (residual_fn(torch.exp(u)) ** 2).sum(-1)
        (u.grad,) = torch.autograd.grad(loss.sum(), u)
        opt.step()
        st = opt.state[u]
        with torch.no_grad():
            u_new = u.detach().clamp(LOG_W_MIN, LOG_W_MAX)
            loss = (residual_fn(torch.exp(u_new)) ** 2).sum(-1)
        return {"u": u_new, "m": st["exp_avg"], "v": st["exp_avg_sq"], "t": st["step"].to(DTYPE)}, loss


class LevenbergMarquardt(Optimizer):
    """Batched Levenberg-Marquardt on u = log w (Marquardt 1963 diagonal scaling).

    Per start: solve (J^T J + lam diag(J^T J)) d = -J^T r, accept the step if the loss drops
    (then lam /= 3), else keep u and raise lam *= 2. ``lr`` scales the initial damping lam0.
    Steps are capped at |d| <= 3 per component (a factor e^3 in a weight).
    """

    name = "lm"
    default_lr = 1e-2
    default_steps = 200
    # lr is the initial damping lam0; lam /= 3 per accepted step. On the default data every
    # start converges for 1e-8 - 1e6; from ~1e12 the first steps are too small to register
    # and every start stalls where it began.
    lr_range = (1e-8, 1e6)
    lr_meaning = "initial damping of the Levenberg-Marquardt steps"

    def init(self, w0):
        u = torch.log(w0)
        return {"u": u, "lam": torch.full(u.shape[:1], self.lr, dtype=DTYPE, device=u.device)}

    def state_spec(self, n_starts, n_blocks):
        return {"u": ((n_starts, n_blocks), DTYPE), "lam": ((n_starts,), DTYPE)}

    def step(self, state, residual_fn, active: torch.Tensor | None = None):
        """One step for all starts, or only for those where ``active`` [B] (bool) is True: the others
        keep u and lam and report their loss at u. Residuals, Jacobians, J^T J, J^T r and trial losses
        are still evaluated on the whole batch (chunk): on CPU a matrix product's rows depend at
        rounding level on the batch size (w @ A: rows in a partial panel) and a batched bmm's on
        where each matrix sits in memory (a gathered copy differs, a prefix does not), so only
        the damped LU solve is restricted to the active starts (the same bits on any subset). An
        active start's iterates are therefore bitwise those of an unmasked step."""
        u, lam = state["u"], state["lam"]
        fn = lambda uu: residual_fn(torch.exp(uu))  # noqa: E731
        jac_w = getattr(residual_fn, "jacobian", None)  # explicit Jacobian (FitResiduals), else autograd
        jac_u = getattr(residual_fn, "log_jacobian", None)  # the same times w, into a buffer
        b = u.shape[0]
        if b <= self.chunk:
            return self._step(u, lam, fn, jac_w, jac_u, active)
        # the starts are independent: step them in chunks, so that the Jacobians [chunk, n, 15]
        # stay small (memory, cache) whatever the number of starts
        parts = [self._step(u[i:i + self.chunk], lam[i:i + self.chunk], fn, jac_w, jac_u,
                            None if active is None else active[i:i + self.chunk])
                 for i in range(0, b, self.chunk)]
        return ({"u": torch.cat([p[0]["u"] for p in parts]), "lam": torch.cat([p[0]["lam"] for p in parts])},
                torch.cat([p[1] for p in parts]))

    #: Starts per chunk of :meth:`step` (a Jacobian chunk of 4096 x 130 x 15 doubles is 64 MiB).
    chunk = 4096
    #: Up to this many starts the autograd Jacobian is taken start by start (vmap of jacfwd), which
    #: reproduces earlier versions bit for bit (e.g. the posterior mode NUTS starts from); it costs
    #: little there. Larger batches use :func:`jacobian_rows` (agrees to ~1e-16 relative).
    small_batch = 256

    def _jacobian_buffer(self, shape: tuple, like: torch.Tensor) -> torch.Tensor:
        """A tensor of ``shape`` (dtype and device of ``like``) reused from step to step: freshly
        allocated Jacobians of thousands of starts cost more in page faults than in arithmetic.
        Its previous contents are overwritten by the next call."""
        buf = getattr(self, "_jac_buf", None)
        if buf is None or buf.dtype != like.dtype or buf.device != like.device or buf.numel() < math.prod(shape):
            buf = torch.empty(math.prod(shape), dtype=like.dtype, device=like.device)
            self._jac_buf = buf
        return buf[:math.prod(shape)].view(shape)

    def _step(self, u, lam, fn, jac_w=None, jac_u=None, active=None):
        with torch.no_grad():
            if jac_w is None and jac_u is None:
                r = fn(u)
                if u.shape[0] <= self.small_batch:  # per-start jacfwd: the numbers of earlier versions
                    jac = torch.func.vmap(torch.func.jacfwd(lambda us: fn(us[None])[0]))(u)
                else:
                    jac = jacobian_rows(fn, u)  # [B, n, p], same values up to rounding, far faster
            elif jac_u is not None:  # d/du = d/dw * w, written into a buffer kept between steps
                w = torch.exp(u)
                r, jac = jac_u(w, alloc=self._jacobian_buffer)
            else:
                w = torch.exp(u)
                r, jw = jac_w(w)
                jac = jw * w[:, None, :]  # d/du = d/dw * w
        loss0 = (r ** 2).sum(-1)
        idx = None
        if active is not None and not bool(active.all()):
            idx = torch.nonzero(active)[:, 0]
            if idx.numel() == 0:
                return {"u": u, "lam": lam}, loss0
            u_all, lam_all, loss0_all = u, lam, loss0
            u, lam, loss0 = u[idx], lam[idx], loss0[idx]
        jt = jac.transpose(1, 2)
        h = jt @ jac
        g = (jt @ r[..., None])[..., 0]
        if idx is not None:  # bmm of a gathered copy differs at rounding level (alignment): select after
            h, g = h[idx], g[idx]
        dg = torch.diagonal(h, dim1=1, dim2=2).clamp_min(1e-12)
        a = h + torch.diag_embed(lam[:, None] * dg)
        try:
            d = torch.linalg.solve(a, -g[..., None])[..., 0]
        except RuntimeError:
            d = -g / (dg * (1 + lam[:, None]))
        d = torch.nan_to_num(d, nan=0.0).clamp(-3.0, 3.0)
        u_try = (u + d).clamp(LOG_W_MIN, LOG_W_MAX)
        with torch.no_grad():
            if idx is None:
                loss_try = (fn(u_try) ** 2).sum(-1)
            else:  # the trial loss on the whole batch (same rows, same bits), inactive starts at u
                loss_try = (fn(u_all.index_copy(0, idx, u_try)) ** 2).sum(-1)[idx]
        ok = torch.isfinite(loss_try) & (loss_try < loss0)
        u_new = torch.where(ok[:, None], u_try, u)
        lam_new = torch.where(ok, lam / 3.0, lam * 2.0).clamp(1e-12, 1e12)
        loss_new = torch.where(ok, loss_try, loss0)
        if idx is not None:
            u_new, lam_new = u_all.index_copy(0, idx, u_new), lam_all.index_copy(0, idx, lam_new)
            loss_new = loss0_all.index_copy(0, idx, loss_new)
        return {"u": u_new, "lam": lam_new}, loss_new


def jacobian_rows(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """Jacobian of a row-wise function: fn maps x [B, p] to [B, n], row b depending on x[b] only.

    Returns J [B, n, p] with J[b, i, k] = d fn(x)[b, i] / d x[b, k], exact (forward-mode
    autograd). The p tangents e_k (the same for every row) are pushed through ``fn`` on the whole
    batch at once (``vmap`` over the tangents of one ``jvp``), instead of a ``jacfwd`` per row: the
    same numbers (row b's derivative sees only row b's inputs) at a fraction of the cost.
    """
    eye = torch.eye(x.shape[-1], dtype=x.dtype, device=x.device)

    def column(t):
        return torch.func.jvp(fn, (x,), (t.expand_as(x),))[1]

    return torch.func.vmap(column)(eye).permute(1, 2, 0)


class FitResiduals:
    """The residual function of the point-fit modes, with its Jacobian written out.

    ``r(w)`` [B, n] = [CXB residuals (:func:`residuals`), prior residuals (:func:`prior_residuals`),
    constraint residuals (:meth:`popsynth.constraints.Constraints.residuals`, if given)]: the
    same numbers as concatenating those three calls. :meth:`jacobian` also returns
    J_w [B, n, 15] = dr/dw: the CXB model and the counts are linear in w (w @ A), the asymmetric
    errors are piecewise constant (their choice does not move with an infinitesimal change of w),
    the prior is log10 w / sigma and a CT fraction is a ratio of two linear forms. The
    Levenberg-Marquardt optimiser uses it instead of forward-mode autograd when present.
    """

    def __init__(self, model, data: FitData, loss: str = "chi2", sys_floor: float = 0.0, weight_prior: float = 1.0,
                 constraints=None):
        if loss not in LOSSES:
            raise PopsynthError(f"unknown loss '{loss}'", f"use --loss {' or '.join(LOSSES)}")
        self.model, self.data, self.loss, self.sys_floor = model, data, loss, sys_floor
        self.weight_prior, self.constraints = weight_prior, constraints

    def __call__(self, w: torch.Tensor) -> torch.Tensor:
        parts = [residuals(self.model(w), self.data, self.loss, self.sys_floor), prior_residuals(w, self.weight_prior)]
        if self.constraints is not None:
            parts.append(self.constraints.residuals(w))
        return torch.cat(parts, dim=-1)

    def _cxb_residuals_and_scale(self, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """CXB residuals r [B, nE] and dr/dpred [B, nE] (the errors do not move with w)."""
        pred = self.model(w)
        if self.loss == "a19":
            return (pred - self.data.obs) / (2.0 * self.data.n) ** 0.5, torch.full_like(pred, (2.0 * self.data.n) ** -0.5)
        sig = sigma(pred, self.data, self.sys_floor)
        return (pred - self.data.obs) / sig, 1.0 / sig

    def jacobian(self, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(r [B, n], J_w [B, n, 15]) at weights w [B, 15]."""
        r, scale = self._cxb_residuals_and_scale(w)
        resp = self.model.response.T  # [nE, 15]
        rs, js = [r], [resp[None] * scale[..., None]]
        if self.weight_prior > 0:
            rs.append(prior_residuals(w, self.weight_prior))
            js.append(torch.diag_embed(1.0 / (w * (math.log(10.0) * self.weight_prior))))
        if self.constraints is not None:
            rc, jc = self.constraints.residuals_and_jacobian(w)
            rs.append(rc)
            js.append(jc)
        return torch.cat(rs, dim=-1), torch.cat(js, dim=1)

    def log_jacobian(self, w: torch.Tensor, alloc: Callable | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(r [B, n], J_u [B, n, 15]) with J_u = dr/d(ln w) = :meth:`jacobian`'s J_w * w[:, None, :],
        the same numbers bit for bit (the same elementwise products), written block by block
        into one tensor instead of concatenated and rescaled copies. alloc(shape, like) -> an
        uninitialised tensor of that shape (e.g. a buffer reused between steps); default
        torch.empty."""
        r, scale = self._cxb_residuals_and_scale(w)
        resp = self.model.response.T  # [nE, 15]
        b, n_e, n_w = w.shape[0], r.shape[1], w.shape[1]
        rs = [r]
        if self.weight_prior > 0:
            rs.append(prior_residuals(w, self.weight_prior))
        rc = jc = None
        if self.constraints is not None:
            rc, jc = self.constraints.residuals_and_jacobian(w)
            rs.append(rc)
        r_all = torch.cat(rs, dim=-1)
        shape = (b, r_all.shape[1], n_w)
        out = alloc(shape, w) if alloc is not None else torch.empty(shape, dtype=w.dtype, device=w.device)
        wr = w[:, None, :]
        j = out[:, :n_e]
        torch.mul(resp[None], scale[..., None], out=j)
        j.mul_(wr)
        row = n_e
        if self.weight_prior > 0:  # diag(1 / (w ln10 sigma)) * w: its diagonal times w, zeros elsewhere
            j = out[:, row:row + n_w]
            j.zero_()
            j.diagonal(dim1=1, dim2=2).copy_((1.0 / (w * (math.log(10.0) * self.weight_prior))) * w)
            row += n_w
        if jc is not None:
            torch.mul(jc, wr, out=out[:, row:])
        return r_all, out


OPTIMIZERS = {c.name: c for c in (LevenbergMarquardt, Adam, GradientDescent)}


def make_optimizer(name: str, lr: float | None = None) -> Optimizer:
    """Optimiser by name ("lm", "adam", "gd"); PopsynthError for unknown names."""
    if name not in OPTIMIZERS:
        raise PopsynthError(f"unknown optimizer '{name}'", f"use --optimizer {', '.join(OPTIMIZERS)}")
    return OPTIMIZERS[name](lr)


def initial_weights(n_starts: int, n_blocks: int, seed: int, low: float = 0.3, high: float = 5.0,
                    device=None) -> torch.Tensor:
    """A19 starting weights: uniform in [low, high], seeded; float64 [n_starts, n_blocks]."""
    if n_starts < 1:
        raise PopsynthError(f"need at least one start, got {n_starts}", "pass --starts >= 1")
    gen = torch.Generator().manual_seed(int(seed))
    w = low + (high - low) * torch.rand(n_starts, n_blocks, dtype=DTYPE, generator=gen)
    return w.to(device)


class Convergence:
    """Per-start stall detection: a start has stalled once its loss has improved by less than
    ``rtol`` (relative) for ``patience`` consecutive steps. State is two tensors (checkpointable)."""

    def __init__(self, rtol: float = 1e-6, patience: int = 10):
        self.rtol, self.patience = rtol, patience

    def init(self, loss: torch.Tensor) -> dict:
        return {"best": loss.clone(), "count": torch.zeros_like(loss, dtype=torch.long)}

    def update(self, state: dict, loss: torch.Tensor) -> dict:
        improved = loss < state["best"] * (1 - self.rtol) - 1e-300
        count = torch.where(improved, torch.zeros_like(state["count"]), state["count"] + 1)
        return {"best": torch.minimum(state["best"], loss), "count": count}

    def stalled(self, state: dict) -> torch.Tensor:
        return state["count"] >= self.patience

    @staticmethod
    def state_spec(n_starts: int) -> dict[str, tuple[tuple, torch.dtype]]:
        """Shape and dtype of every state tensor for ``n_starts`` starts."""
        return {"best": ((n_starts,), DTYPE), "count": ((n_starts,), torch.long)}


def check_state(state: dict, spec: dict, what: str) -> None:
    """Check a checkpointed state dict against ``spec`` {name: (shape, dtype)}.

    Names must match exactly; every tensor must have the shape and dtype and hold finite
    values (``count``-like integer tensors must be >= 0). Raises PopsynthError starting with
    ``what`` (e.g. "checkpoint x.pt: opt_state").
    """
    fix = "the checkpoint was damaged or edited, or written by another version; start a new run"
    if set(state) != set(spec):
        missing, extra = sorted(set(spec) - set(state)), sorted(set(state) - set(spec))
        parts = ([f"lacks {', '.join(missing)}"] if missing else []) + ([f"has unexpected {', '.join(extra)}"] if extra else [])
        raise PopsynthError(f"{what} {' and '.join(parts)} (expected {', '.join(sorted(spec))})", fix)
    for name, (shape, dtype) in spec.items():
        check_tensor(state[name], shape, dtype, f"{what}['{name}']")


def check_tensor(t, shape: tuple, dtype: torch.dtype, what: str) -> None:
    """One checkpointed tensor: type, shape, dtype, finite values (integers >= 0); raises
    PopsynthError starting with ``what``."""
    fix = "the checkpoint was damaged or edited, or written by another version; start a new run"
    if not isinstance(t, torch.Tensor):
        raise PopsynthError(f"{what} is a {type(t).__name__}, expected a tensor", fix)
    if tuple(t.shape) != tuple(shape) or t.dtype != dtype:
        raise PopsynthError(f"{what} has shape {list(t.shape)} and dtype {str(t.dtype).replace('torch.', '')}, "
                            f"expected shape {list(shape)} and dtype {str(dtype).replace('torch.', '')}", fix)
    if t.is_floating_point() and not bool(torch.isfinite(t).all()):
        raise PopsynthError(f"{what} holds non-finite values", fix)
    if not t.is_floating_point() and bool((t < 0).any()):
        raise PopsynthError(f"{what} holds negative values", fix)
