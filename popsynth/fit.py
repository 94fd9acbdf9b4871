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
  - "lm": batched Levenberg-Marquardt on u = log w with per-start damping (gain ratio), in
    chunks of starts; J^T J and J^T r written out for the point-fit residuals
    (:meth:`FitResiduals.normal_equations`), else from forward-mode autograd Jacobians
    (:func:`jacobian_rows`). The default: it converges in tens of steps where gradient descent
    needs thousands.

:class:`Convergence` decides when a start is done: for LM when the Gauss-Newton predicted
decrease is below ``rtol`` of its loss (a stationary point; such starts are frozen), for the
first-order optimisers when its loss has stopped improving.
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

    def step(self, state: dict, residual_fn: Callable[[torch.Tensor], torch.Tensor], active: torch.Tensor | None = None,
             info: dict | None = None) -> tuple[dict, torch.Tensor]:
        """One step for all starts, or only for those where ``active`` [B] (bool) is True (the others
        keep their state and report their loss where they are); returns (new state, loss [B] at the
        new point). An optimiser that can say how much decrease is still available fills ``info``
        (when given) with ``loss0`` [B], the loss where the step started, and ``predicted`` [B], the
        decrease of the loss its local model predicts from there (see :class:`Convergence`)."""
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

    def step(self, state, residual_fn, active=None, info=None):
        _, g = _loss_and_grad(residual_fn, state["w"])
        w = (state["w"] - self.lr * g).clamp_min(1e-6)
        if active is not None:  # row-wise arithmetic: the active rows are those of an unmasked step
            w = torch.where(active[:, None], w, state["w"])
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

    def step(self, state, residual_fn, active=None, info=None):
        u = state["u"].detach().clone().requires_grad_(True)
        opt = torch.optim.Adam([u], lr=self.lr, betas=self.betas, eps=self.eps, foreach=False)
        opt.state[u] = {"step": state["t"].detach().clone(), "exp_avg": state["m"].detach().clone(),
                        "exp_avg_sq": state["v"].detach().clone()}
        loss = (residual_fn(torch.exp(u)) ** 2).sum(-1)
        (u.grad,) = torch.autograd.grad(loss.sum(), u)
        opt.step()
        st = opt.state[u]
        with torch.no_grad():
            u_new, m, v = u.detach().clamp(LOG_W_MIN, LOG_W_MAX), st["exp_avg"], st["exp_avg_sq"]
            if active is not None:  # frozen starts keep u and their moments (t counts the calls)
                keep = active[:, None]
                u_new, m, v = (torch.where(keep, a, b)
                               for a, b in ((u_new, state["u"]), (m, state["m"]), (v, state["v"])))
            loss = (residual_fn(torch.exp(u_new)) ** 2).sum(-1)
        return {"u": u_new, "m": m, "v": v, "t": st["step"].to(DTYPE)}, loss


class LevenbergMarquardt(Optimizer):
    """Batched Levenberg-Marquardt on u = log w (Marquardt 1963 diagonal scaling).

    Per start: solve (J^T J + lam diag(J^T J)) d = -J^T r, accept the step if the loss drops, else
    keep u and raise lam *= 2. After an accepted step lam follows the gain ratio rho = (actual
    decrease) / (decrease predicted by the linearised residuals): lam *= max(1/3, 1 - (2 rho - 1)^3)
    (Nielsen 1999; Madsen, Nielsen & Tingleff 2004, eq. 3.15), i.e. lam /= 3 where the linear model
    is good and grows where it is poor. The fixed rule lam /= 3 of earlier versions (``damping =
    "fixed"``) oscillates at the kinks of the asymmetric-error chi^2 (the error switches side where
    a model point crosses its datum): full Gauss-Newton steps cross the kink, are rejected, a few
    doublings later one is accepted and lam falls back, so starts crawl. Measured on the default
    CXB fit (spectral set 5, 300 starts, converged = Gauss-Newton decrease <= 1e-6 of the loss):
    fixed rule 107/300 converged after 300 steps (all 300 in 224 steps with symmetric errors),
    gain ratio all 300 in 43 steps (45 with symmetric errors).
    ``lr`` scales the initial damping lam0. Steps are capped at |d| <= 3 per component (a factor
    e^3 in a weight); a component at a bound of u whose descent direction points out of the box
    is held there (:meth:`_hold_at_bounds`).

    With ``info`` (a dict; ``info["rtol"]`` the tolerance the caller tests, :meth:`Convergence.step_info`),
    :meth:`step` adds ``loss0`` [B], the loss where each start's step began, and ``predicted`` [B],
    the Gauss-Newton predicted decrease there, g^T H^-1 g (g = J^T r, H = J^T J + 1e-12 diag(J^T J),
    the least-damped system the optimiser uses; components held at a weight bound with the gradient
    pointing outwards left out): the decrease still available to the optimiser's local model, which
    goes to zero at a stationary point whatever the damping. It is computed where the linearised
    loss along the step taken drops by at most ``rtol`` x loss0 (that drop is a lower bound of it);
    elsewhere ``predicted`` is that lower bound, already above the tolerance. A start whose damping
    has reached :attr:`lam_stuck` (a long run of rejected, ever smaller steps: no decrease is
    possible at the machine's precision) reports 0; an inactive start inf.
    """

    name = "lm"
    default_lr = 1e-2
    # a cap, not a criterion (:class:`Convergence` stops the fit): measured on spectral set 5 with
    # 100 starts, every start has converged (rtol 1e-6) by step 76 in mode cxb (10,000 starts),
    # 122 in the posterior mode search and 421 in mode joint
    default_steps = 500
    # lr is the initial damping lam0. On the default data every start converges for 1e-8 - 1e6;
    # from ~1e12 the first steps are too small to register and every start stalls where it began.
    lr_range = (1e-8, 1e6)
    lr_meaning = "initial damping of the Levenberg-Marquardt steps"
    #: "gain" (the gain-ratio update above) or "fixed" (lam /= 3 after every accepted step)
    damping = "gain"
    lam_min, lam_max = 1e-12, 1e12
    #: damping from which a start counts as stationary (no step it can take lowers the loss)
    lam_stuck = 1e10
    #: a step is accepted when it lowers the loss by more than this fraction. Near a fit the
    #: residuals are differences of nearly equal numbers, and two evaluations of the loss that
    #: differ only by rounding (explicit vs autograd Jacobian, chunk sizes) differ by up to ~1e-14
    #: of it (measured on the test problems); accepting gains of that size moves a start along its
    #: flat directions by noise (1e-7 in a weight) and makes the gain ratio meaningless
    min_gain = 1e-12

    def init(self, w0):
        u = torch.log(w0)
        return {"u": u, "lam": torch.full(u.shape[:1], self.lr, dtype=DTYPE, device=u.device)}

    def state_spec(self, n_starts, n_blocks):
        return {"u": ((n_starts, n_blocks), DTYPE), "lam": ((n_starts,), DTYPE)}

    def step(self, state, residual_fn, active: torch.Tensor | None = None, info: dict | None = None):
        """One step for all starts, or only for those where ``active`` [B] (bool) is True: the others
        keep u and lam and report their loss at u. Within a chunk of starts that holds an active one,
        residuals, J^T J, J^T r and trial losses are evaluated on the whole chunk: on CPU a matrix
        product's rows depend at rounding level on the batch size (w @ A: rows in a partial panel)
        and a batched bmm's on where each matrix sits in memory (a gathered copy differs, a prefix
        does not), so only the damped solve is restricted to the active starts (the same bits on any
        subset). An active start's iterates are therefore bitwise those of an unmasked step. A chunk
        without active starts only evaluates its losses. ``info``: see the class docstring."""
        u, lam = state["u"], state["lam"]
        fn = lambda uu: residual_fn(torch.exp(uu))  # noqa: E731
        src = self._source(residual_fn)
        b = u.shape[0]
        # the starts are independent: step them in chunks, so that the Jacobians [chunk, n, 15]
        # stay small (memory, cache) whatever the number of starts
        parts = [self._step(u[i:i + self.chunk], lam[i:i + self.chunk], fn, src,
                            None if active is None else active[i:i + self.chunk],
                            None if info is None else float(info.get("rtol", self.screen)))
                 for i in range(0, b, self.chunk)]
        if len(parts) == 1:
            (u_new, lam_new, loss, loss0, pred), = parts
        else:
            u_new, lam_new, loss, loss0, pred = (torch.cat(x) for x in zip(*parts))
        if info is not None:
            info.update(loss0=loss0, predicted=pred)
        return {"u": u_new, "lam": lam_new}, loss

    #: Starts per chunk of :meth:`step`. Chunks keep the per-step tensors small (J^T J of a chunk is
    #: 1.8 MB, cache-resident) whatever the number of starts, and a chunk whose starts have all
    #: converged is not stepped. Measured (10,000 CXB starts, one thread, load ~7): 4,096 -> 7.6 s,
    #: 2,048 -> 4.3 s, 1,024 -> 4.4 s, 512 -> 4.3 s for the whole fit.
    chunk = 1024
    #: Up to this many starts the autograd Jacobian is taken start by start (vmap of jacfwd); it
    #: costs little there. Larger batches use :func:`jacobian_rows` (agrees to ~1e-16 relative).
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

    @staticmethod
    def _source(residual_fn):
        """How the step gets J^T J and J^T r: ("normal_equations" | "log_jacobian" | "jacobian" |
        "autograd", the method or None)."""
        normal = getattr(residual_fn, "normal_equations", None)  # J^T J, J^T r without J (FitResiduals)
        if normal is not None:
            return "normal_equations", normal
        jac_u = getattr(residual_fn, "log_jacobian", None)  # d/du written into a buffer
        if jac_u is not None:
            return "log_jacobian", jac_u
        jac_w = getattr(residual_fn, "jacobian", None)  # explicit d/dw (FitResiduals)
        if jac_w is not None:
            return "jacobian", jac_w
        return "autograd", None

    def _normal_equations(self, u, fn, src):
        """(r [B, n], J^T J [B, p, p], J^T r [B, p]) at u, with J = dr/du."""
        kind, method = src
        if kind == "normal_equations":
            return method(torch.exp(u))
        if kind == "autograd":
            r = fn(u)
            if u.shape[0] <= self.small_batch:  # per-start jacfwd
                jac = torch.func.vmap(torch.func.jacfwd(lambda us: fn(us[None])[0]))(u)
            else:
                jac = jacobian_rows(fn, u)  # [B, n, p], same values up to rounding, far faster
        elif kind == "log_jacobian":  # d/du = d/dw * w, written into a buffer kept between steps
            r, jac = method(torch.exp(u), alloc=self._jacobian_buffer)
        else:
            w = torch.exp(u)
            r, jw = method(w)
            jac = jw * w[:, None, :]  # d/du = d/dw * w
        jt = jac.transpose(1, 2)
        return r, jt @ jac, (jt @ r[..., None])[..., 0]

    def _step(self, u, lam, fn, src, active=None, rtol=None):
        """One chunk: (u, lam, loss at the new point, loss at u, predicted decrease at u), each [b]; the
        Gauss-Newton decrease only with ``rtol`` (else inf)."""
        if active is not None and not bool(active.any()):  # nothing to step: the losses only
            with torch.no_grad():
                loss0 = (fn(u) ** 2).sum(-1)
            return u, lam, loss0, loss0, torch.full_like(loss0, math.inf)
        with torch.no_grad():
            r, h, g = self._normal_equations(u, fn, src)
        loss0 = (r ** 2).sum(-1)
        idx = None
        if active is not None and not bool(active.all()):
            idx = torch.nonzero(active)[:, 0]
            u_all, lam_all, loss0_all = u, lam, loss0
            # bmm of a gathered copy differs at rounding level (alignment): select after
            u, lam, loss0, h, g = u[idx], lam[idx], loss0[idx], h[idx], g[idx]
        h, g = self._hold_at_bounds(u, h, g)
        dg = torch.diagonal(h, dim1=1, dim2=2).clamp_min(1e-12)
        a = h.clone()
        a.diagonal(dim1=1, dim2=2).add_(lam[:, None] * dg)  # h + diag(lam dg), one copy
        try:
            d = torch.linalg.solve(a, -g[..., None])[..., 0]
        except RuntimeError:
            d = -g / (dg * (1 + lam[:, None]))
        d = torch.nan_to_num(d, nan=0.0).clamp(-3.0, 3.0)
        u_try = (u + d).clamp(LOG_W_MIN, LOG_W_MAX)
        with torch.no_grad():
            if idx is None:
                loss_try = (fn(u_try) ** 2).sum(-1)
            else:  # the trial loss on the whole chunk (same rows, same bits), inactive starts at u
                loss_try = (fn(u_all.index_copy(0, idx, u_try)) ** 2).sum(-1)[idx]
        ok = torch.isfinite(loss_try) & (loss_try < loss0 * (1.0 - self.min_gain))
        pred = None
        if self.damping == "fixed":
            shrink = torch.full_like(lam, 1.0 / 3.0)
        else:  # gain ratio of the step actually taken (after the caps)
            pred = self._model_decrease(u_try - u, h, g)
            rho = torch.where(pred > 0, (loss0 - loss_try) / torch.where(pred > 0, pred, 1.0), 1.0)
            shrink = (1.0 - (2.0 * rho - 1.0) ** 3).clamp_min(1.0 / 3.0)
        u_new = torch.where(ok[:, None], u_try, u)
        lam_new = torch.where(ok, lam * shrink, lam * 2.0).clamp(self.lam_min, self.lam_max)
        loss_new = torch.where(ok, loss_try, loss0)
        pred_gn = torch.full_like(loss0, math.inf)
        if rtol is not None:
            if pred is None:
                pred = self._model_decrease(u_try - u, h, g)
            # the linear model's decrease along any step is at most the Gauss-Newton one: where it
            # exceeds rtol * loss the start is not converged, and that lower bound is reported
            pred_gn = pred.clamp_min(0.0)
            near = torch.nonzero(pred <= rtol * loss0)[:, 0]
            if near.numel():
                pred_gn[near] = self._gauss_newton_decrease(u[near], h[near], g[near], dg[near])
            pred_gn = torch.where(lam_new >= self.lam_stuck, torch.zeros_like(pred_gn), pred_gn)
        if idx is not None:
            u_new, lam_new = u_all.index_copy(0, idx, u_new), lam_all.index_copy(0, idx, lam_new)
            loss_new = loss0_all.index_copy(0, idx, loss_new)
            pred_gn = torch.full_like(loss0_all, math.inf).index_copy(0, idx, pred_gn)
            loss0 = loss0_all
        return u_new, lam_new, loss_new, loss0, pred_gn

    #: the tolerance for ``predicted`` when ``info`` does not give one (``info["rtol"]``)
    screen = 1e-2

    @staticmethod
    def _model_decrease(s, h, g):
        """Decrease of the linearised loss along steps s [b, p]: -(2 g.s + s^T h s) [b]."""
        return -(2.0 * (g * s).sum(-1) + (s * (h * s[:, None, :]).sum(-1)).sum(-1))

    @staticmethod
    def _hold_at_bounds(u, h, g):
        """(h, g) with the components held at a bound of u (at LOG_W_MIN with the descent direction
        -g pointing below it, or at LOG_W_MAX pointing above) taken out: their rows and columns of h
        set to those of the identity and their g to 0, so that the step leaves them where they are
        and the other components are solved for without them (a step computed with them and then
        clipped moves the others to compensate for a move that does not happen). The same tensors
        when nothing is held."""
        held = ((u <= LOG_W_MIN) & (g > 0)) | ((u >= LOG_W_MAX) & (g < 0))
        if not bool(held.any()):
            return h, g
        pair = held[:, :, None] | held[:, None, :]
        h = torch.where(pair, torch.zeros_like(h), h) + torch.diag_embed(held.to(h.dtype))
        return h, torch.where(held, torch.zeros_like(g), g)

    def _gauss_newton_decrease(self, u, h, g, dg):
        """g^T H^-1 g [b] at u, H = J^T J + lam_min diag(J^T J) (h and g with the components held at
        a bound taken out); inf where H cannot be factorised."""
        hp = h.clone()
        hp.diagonal(dim1=1, dim2=2).add_(self.lam_min * dg)
        x, bad = torch.linalg.solve_ex(hp, g[..., None])
        pred = (g * x[..., 0]).sum(-1)
        return torch.where((bad != 0) | ~torch.isfinite(pred), torch.full_like(pred, math.inf), pred.clamp_min(0.0))


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

    def normal_equations(self, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(r [B, n], J_u^T J_u [B, 15, 15], J_u^T r [B, 15]) at weights w [B, 15], J_u = dr/d(ln w)
        (:meth:`log_jacobian`), without building J_u: for the CXB rows J_u[b, e, k] = s[b, e] A[k, e]
        w[b, k] (s = dr/dpred), so J_u^T J_u = (w w^T) * sum_e s^2 A[k, e] A[l, e], one matrix
        product [B, nE] @ [nE, 120] over the upper triangle of the fixed A[k, e] A[l, e] (instead
        of B small [15, nE] @ [nE, 15] products), and J_u^T r = w * ((s r) @ A^T). The prior adds
        1 / (ln 10 sigma)^2 on the diagonal and r_prior / (ln 10 sigma) to J_u^T r; the constraints
        (few rows) their J_u^T J_u by a batched product. Equal to the products of
        :meth:`log_jacobian`'s J_u to rounding (~1e-15 relative)."""
        r, scale = self._cxb_residuals_and_scale(w)
        upper, full = self._response_products(w)
        b, n_w = w.shape
        h = ((scale * scale) @ upper)[:, full].view(b, n_w, n_w)
        h.mul_(w[:, :, None] * w[:, None, :])
        g = ((scale * r) @ self.model.response.T) * w
        rs = [r]
        if self.weight_prior > 0:
            rp = prior_residuals(w, self.weight_prior)
            c = 1.0 / (math.log(10.0) * self.weight_prior)  # d r_prior / d ln w
            h.diagonal(dim1=1, dim2=2).add_(c * c)
            g = g + rp * c
            rs.append(rp)
        if self.constraints is not None:
            rc, jc = self.constraints.residuals_and_jacobian(w)
            jcu = jc * w[:, None, :]
            jt = jcu.transpose(1, 2)
            h = h + jt @ jcu
            g = g + (jt @ rc[..., None])[..., 0]
            rs.append(rc)
        return torch.cat(rs, dim=-1), h, g

    def _response_products(self, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(A[k, e] A[l, e] for k <= l as [nE, n_w (n_w + 1) / 2], the index [n_w^2] of every (k, l)
        into those columns); computed once per device."""
        cache = getattr(self, "_rr", None)
        if cache is None or cache[0].device != like.device or cache[0].dtype != like.dtype:
            resp = self.model.response.T.to(like)  # [nE, n_w]
            n_w = resp.shape[1]
            iu = torch.triu_indices(n_w, n_w, device=like.device)
            upper = (resp[:, iu[0]] * resp[:, iu[1]]).contiguous()
            col = torch.empty(n_w, n_w, dtype=torch.long, device=like.device)
            col[iu[0], iu[1]] = torch.arange(iu.shape[1], device=like.device)
            col[iu[1], iu[0]] = col[iu[0], iu[1]]
            cache = self._rr = (upper, col.reshape(-1))
        return cache


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
    """Per-start convergence: which starts are stationary, so that the fit freezes them
    (``opt.step(..., active=conv.active(state))``) and stops once every start has stalled or at the
    step cap (``while ... not conv.stalled(state).all()``). One step of the fit loop::

        info = conv.step_info()
        state, loss = opt.step(state, residual_fn, active=conv.active(conv_state), info=info)
        conv_state = conv.update(conv_state, loss, info)

    Two tests, by what the optimiser reports (:meth:`update`'s ``info``, filled by
    ``opt.step(..., info=info)``):

    - Second order (Levenberg-Marquardt reports ``predicted``, the Gauss-Newton decrease still
      available where its step began): a start has converged once ``predicted <= rtol * loss0``,
      i.e. even a full Gauss-Newton step would lower its loss by less than the fraction ``rtol``
      (or its damping shows that no step can: ``predicted`` = 0). That holds at a stationary point
      whatever happened to the last steps; a run of rejected steps (the damping growing at a kink
      of the asymmetric-error chi^2) is not a stationary point and does not count. Measured on the
      default data, the predicted decrease estimates the loss still to gain: starts converged at
      ``rtol`` end within ~``rtol`` x their loss of where hundreds more steps take them. This is
      final: the start is frozen (``active`` False) and stays converged.
    - First order (gradient descent, Adam, or no ``info``): a start has stalled while its loss has
      improved by less than ``rtol`` (relative) for ``patience`` consecutive steps; it may move on
      (the count resets) and is never frozen. It is not a stationarity test: gradient descent on
      the A19 cost improves by less than 1e-6 per step for thousands of steps and keeps improving
      (measured: freezing such starts would give up to 0.7 % of their cost), so only the loop stops
      when every start has stalled at once, as before.

    State (checkpointable): ``best`` (lowest loss seen), ``count`` (consecutive stalled steps; a
    converged start holds ``patience``), ``converged`` (bool: certified and frozen).
    """

    def __init__(self, rtol: float = 1e-6, patience: int = 10):
        self.rtol, self.patience = rtol, patience

    def init(self, loss: torch.Tensor) -> dict:
        return {"best": loss.clone(), "count": torch.zeros_like(loss, dtype=torch.long),
                "converged": torch.zeros_like(loss, dtype=torch.bool)}

    def step_info(self) -> dict:
        """A fresh ``info`` dict for ``opt.step(..., info=...)``: it tells the optimiser the tolerance
        (``rtol``) and receives what it reports; then pass it to :meth:`update`."""
        return {"rtol": self.rtol}

    def update(self, state: dict, loss: torch.Tensor, info: dict | None = None) -> dict:
        """State after a step whose losses [B] are ``loss``; ``info`` is the dict the optimiser's step
        filled (None or without ``predicted``: the first-order test)."""
        best = torch.minimum(state["best"], loss)
        if info is not None and "predicted" in info:
            conv = state["converged"] | (info["predicted"] <= self.rtol * info["loss0"])
            count = torch.where(conv, torch.full_like(state["count"], self.patience), torch.zeros_like(state["count"]))
            return {"best": best, "count": count, "converged": conv}
        improved = loss < state["best"] * (1 - self.rtol) - 1e-300
        count = torch.where(improved, torch.zeros_like(state["count"]), state["count"] + 1)
        count = torch.where(state["converged"], state["count"], count)
        return {"best": best, "count": count, "converged": state["converged"]}

    def stalled(self, state: dict) -> torch.Tensor:
        """bool [B]: the starts that need no more steps (converged, or stalled by the first-order test)."""
        return state["count"] >= self.patience

    def active(self, state: dict) -> torch.Tensor:
        """bool [B]: the starts still to step (all but the converged ones)."""
        return ~state["converged"]

    @staticmethod
    def state_spec(n_starts: int) -> dict[str, tuple[tuple, torch.dtype]]:
        """Shape and dtype of every state tensor for ``n_starts`` starts."""
        return {"best": ((n_starts,), DTYPE), "count": ((n_starts,), torch.long),
                "converged": ((n_starts,), torch.bool)}


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
