"""FitResiduals.log_jacobian (the Jacobian in ln w, assembled in one buffer) gives the numbers of
jacobian(w) * w bit for bit, and Levenberg-Marquardt with it follows the same trajectory;
FitResiduals.normal_equations (J^T J and J^T r without J) agrees with its products."""

import pytest
import torch

from popsynth.cxb import CXBModel
from popsynth.fit import FitData, FitResiduals, LevenbergMarquardt, initial_weights

D = torch.float64


def _toy(n=30, seed=0):
    g = torch.Generator().manual_seed(seed)
    e = torch.logspace(0, 2, n, dtype=D)
    resp = torch.rand(15, n, dtype=D, generator=g) * (e / 10) ** torch.linspace(-1, 1, 15, dtype=D)[:, None] + 0.05
    obs = ((0.5 + 2 * torch.rand(1, 15, dtype=D, generator=g)) @ resp)[0]
    err = 0.02 * obs
    return resp, FitData(e, obs, err, err * 1.5, torch.zeros(n, dtype=torch.long), ("toy",), ("toy",))


class _Ratio:
    """Constraint-like residuals: a ratio of two linear forms and a linear one, with their Jacobian."""

    def __init__(self):
        g = torch.Generator().manual_seed(5)
        self.a, self.b, self.c = (torch.rand(15, dtype=D, generator=g) for _ in range(3))

    def residuals_and_jacobian(self, w):
        num, den = w @ self.a, w @ self.b
        r = torch.stack([num / den - 0.4, (w @ self.c - 3.0) / 0.5], -1)
        j1 = self.a[None] / den[:, None] - (num / den ** 2)[:, None] * self.b[None]
        j2 = (self.c / 0.5).expand_as(w)
        return r, torch.stack([j1, j2], 1)

    def residuals(self, w):
        return self.residuals_and_jacobian(w)[0]


class _Plain:
    """The same residual function with only .jacobian (the path without log_jacobian)."""

    def __init__(self, f):
        self.f, self.jacobian = f, f.jacobian

    def __call__(self, w):
        return self.f(w)


class _LogOnly:
    """The same residual function with only .log_jacobian (LM prefers normal_equations when present)."""

    def __init__(self, f):
        self.f, self.log_jacobian = f, f.log_jacobian

    def __call__(self, w):
        return self.f(w)


@pytest.mark.parametrize("loss", ["chi2", "a19"])
@pytest.mark.parametrize("prior", [1.0, 0.0])
@pytest.mark.parametrize("constrained", [False, True])
def test_log_jacobian_is_jacobian_times_w_bit_for_bit(loss, prior, constrained):
    resp, data = _toy()
    fr = FitResiduals(CXBModel(resp, data.energy, 0.01 * data.obs), data, loss, 0.05, prior,
                      _Ratio() if constrained else None)
    w = initial_weights(37, 15, seed=2)
    r0, jw = fr.jacobian(w)
    r1, ju = fr.log_jacobian(w)
    assert torch.equal(r0, r1) and torch.equal(jw * w[:, None, :], ju)
    buf = torch.full((37 * ju.shape[1] * 15 + 11,), float("nan"), dtype=D)  # stale contents are overwritten
    r2, jb = fr.log_jacobian(w, alloc=lambda shape, like: buf[:37 * ju.shape[1] * 15].view(shape))
    assert torch.equal(jb, ju) and jb.data_ptr() == buf.data_ptr()
    opt_a, opt_b = LevenbergMarquardt(), LevenbergMarquardt()
    opt_b.chunk = 16  # chunks share one buffer
    sa, sb = opt_a.init(w), opt_b.init(w)
    for _ in range(25):
        sa, la = opt_a.step(sa, _Plain(fr))
        sb, lb = opt_b.step(sb, _LogOnly(fr))
    assert torch.equal(sa["u"], sb["u"]) and torch.equal(sa["lam"], sb["lam"]) and torch.equal(la, lb)


@pytest.mark.parametrize("loss", ["chi2", "a19"])
@pytest.mark.parametrize("prior", [1.0, 0.0])
@pytest.mark.parametrize("constrained", [False, True])
def test_normal_equations_equal_the_jacobian_products(loss, prior, constrained):
    """FitResiduals.normal_equations: the residuals of log_jacobian bit for bit, J^T J and J^T r of its
    J_u to rounding, and LM with them (the path it takes for FitResiduals) reaches the weights of LM
    with the Jacobian."""
    resp, data = _toy()
    fr = FitResiduals(CXBModel(resp, data.energy, 0.01 * data.obs), data, loss, 0.05, prior,
                      _Ratio() if constrained else None)
    w = initial_weights(37, 15, seed=2)
    r, ju = fr.log_jacobian(w)
    rn, h, g = fr.normal_equations(w)
    assert torch.equal(rn, r)
    h_ref, g_ref = ju.transpose(1, 2) @ ju, (ju.transpose(1, 2) @ r[..., None])[..., 0]
    assert float(((h - h_ref).abs() / h_ref.abs().amax((1, 2), keepdim=True)).max()) < 1e-13
    assert float(((g - g_ref).abs() / g_ref.abs().amax(1, keepdim=True)).max()) < 1e-13
    assert torch.equal(h, h.transpose(1, 2))
    opt = LevenbergMarquardt()
    sa, sb = opt.init(w), opt.init(w)
    for _ in range(25):
        sa, la = opt.step(sa, _LogOnly(fr))
        sb, lb = opt.step(sb, fr)
    if prior > 0:
        torch.testing.assert_close(opt.weights(sb), opt.weights(sa), rtol=1e-8, atol=0)
    else:  # without the prior J^T J is near singular here (condition ~1e15): rounding in it moves the
        # weights along the flat directions (measured: 1e-5 after 25 steps), not the loss
        torch.testing.assert_close(lb, la, rtol=1e-6, atol=1e-9)  # exact fits reach ~1e-28
