"""Losses and batched optimisers: formulas by hand, recovery of known weights, batch independence,
convergence (the Gauss-Newton test, frozen starts, weight bounds)."""

import math

import pytest
import torch

from popsynth.errors import PopsynthError
from popsynth.fit import (Convergence, FitData, a19_cost, chi2_by_dataset, initial_weights, make_optimizer,
                          prior_residuals, residuals)

D = torch.float64


def _toy(n=30, seed=0):
    """A linear 'CXB' with 15 positive block responses, like the real problem's structure."""
    g = torch.Generator().manual_seed(seed)
    e = torch.logspace(0, 2, n, dtype=D)
    resp = torch.rand(15, n, dtype=D, generator=g) * (e / 10) ** torch.linspace(-1, 1, 15, dtype=D)[:, None] + 0.05
    w_true = 0.5 + 2 * torch.rand(1, 15, dtype=D, generator=g)
    obs = (w_true @ resp)[0]
    err = 0.02 * obs
    data = FitData(e, obs, err, err * 1.5, torch.zeros(n, dtype=torch.long), ("toy",), ("toy",))
    return resp, w_true, data


def test_cost_and_chi2_by_hand():
    obs = torch.tensor([10.0, 20.0, 30.0], dtype=D)
    data = FitData(torch.ones(3, dtype=D), obs, torch.tensor([1.0, 2.0, 3.0], dtype=D),
                   torch.tensor([2.0, 4.0, 6.0], dtype=D), torch.tensor([0, 0, 1]), ("a", "b"), ("a", "b"))
    pred = torch.tensor([[12.0, 18.0, 30.0]], dtype=D)
    # A19 eq. B3: (4 + 4 + 0) / (2 * 3)
    assert a19_cost(pred, data).item() == pytest.approx(8 / 6)
    # chi2: model above obs uses err_hi (2), below uses err_lo (2): (2/2)^2 + (2/2)^2 + 0
    torch.testing.assert_close(chi2_by_dataset(pred, data), torch.tensor([[2.0, 0.0]], dtype=D))
    # systematic floor 10 %: sigma^2 = 4 + 1 and 4 + 4
    c = chi2_by_dataset(pred, data, sys_floor=0.1)
    assert c[0, 0].item() == pytest.approx(4 / 5 + 4 / 8)
    assert (residuals(pred, data, "a19") ** 2).sum().item() == pytest.approx(8 / 6)


@pytest.mark.parametrize("name,steps", [("lm", 40), ("adam", 1500)])
def test_optimisers_recover_known_weights(name, steps):
    resp, w_true, data = _toy()
    opt = make_optimizer(name)
    w0 = initial_weights(4, 15, seed=1)
    state = opt.init(w0)

    def fn(w):
        return residuals(w @ resp, data, "chi2")

    loss = None
    for _ in range(steps):
        state, loss = opt.step(state, fn)
    assert float(loss.max()) < (1e-6 if name == "lm" else 0.5)  # chi2 over 30 points; start is ~1e5
    if name == "lm":
        torch.testing.assert_close(opt.weights(state), w_true.expand(4, -1), rtol=1e-4, atol=0)


def test_gradient_descent_decreases_a19_cost_and_keeps_weights_positive():
    resp, _, data = _toy()
    opt = make_optimizer("gd", lr=1e-3)
    state = opt.init(initial_weights(3, 15, seed=2))
    fn = lambda w: residuals(w @ resp, data, "a19")  # noqa: E731
    first = (fn(opt.weights(state)) ** 2).sum(-1)
    for _ in range(300):
        state, loss = opt.step(state, fn)
    assert torch.all(loss < first)
    assert torch.all(opt.weights(state) > 0)


def test_batched_lm_equals_one_start_at_a_time():
    resp, _, data = _toy()
    opt = make_optimizer("lm")
    w0 = initial_weights(3, 15, seed=5)
    fn = lambda w: residuals(w @ resp, data, "chi2")  # noqa: E731
    s = opt.init(w0)
    singles = [opt.init(w0[i:i + 1]) for i in range(3)]
    for _ in range(15):
        s, _ = opt.step(s, fn)
        singles = [opt.step(si, fn)[0] for si in singles]
    torch.testing.assert_close(opt.weights(s), torch.cat([opt.weights(si) for si in singles]), rtol=1e-10, atol=0)


def test_initial_weights_seeded_and_in_range():
    a = initial_weights(100, 15, seed=7)
    b = initial_weights(100, 15, seed=7)
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert float(a.min()) >= 0.3 and float(a.max()) <= 5.0
    assert not torch.equal(a, initial_weights(100, 15, seed=8))


def test_prior_and_convergence():
    w = torch.tensor([[1.0, 10.0, 0.1]], dtype=D)
    torch.testing.assert_close(prior_residuals(w, 0.5), torch.tensor([[0.0, 2.0, -2.0]], dtype=D))
    assert prior_residuals(w, 0.0).shape == (1, 0)
    c = Convergence(rtol=1e-3, patience=2)
    st = c.init(torch.tensor([10.0, 10.0], dtype=D))
    for val in ([5.0, 9.9999], [4.0, 9.9998], [3.0, 9.9997]):
        st = c.update(st, torch.tensor(val, dtype=D))
    assert c.stalled(st).tolist() == [False, True]


def test_bad_optimizer_and_lr():
    with pytest.raises(PopsynthError, match="unknown optimizer"):
        make_optimizer("sgd9")
    with pytest.raises(PopsynthError, match="learning rate"):
        make_optimizer("gd", lr=-1)


@pytest.mark.parametrize("name", ["lm", "adam", "gd"])
def test_lr_range_per_optimizer(name):
    from popsynth.fit import OPTIMIZERS

    cls = OPTIMIZERS[name]
    lo, hi = cls.lr_range
    assert lo <= cls.default_lr <= hi
    assert make_optimizer(name, lo).lr == lo and make_optimizer(name, hi).lr == hi
    for bad in (hi * 10, lo / 10):
        with pytest.raises(PopsynthError, match=f"outside the working range of --optimizer {name}"):
            make_optimizer(name, bad)
    for bad in (float("inf"), float("nan"), 0.0, -1.0):
        with pytest.raises(PopsynthError, match="must be finite and > 0"):
            make_optimizer(name, bad)
    with pytest.raises(PopsynthError, match="must be a number"):
        make_optimizer(name, "0.1")


@pytest.mark.parametrize("name", ["lm", "adam", "gd"])
def test_state_spec_matches_init(name):
    from popsynth.fit import check_state

    opt = make_optimizer(name)
    state = opt.init(initial_weights(3, 15, 0))
    spec = opt.state_spec(3, 15)
    check_state(state, spec, "state")
    check_state(Convergence().init(torch.ones(3, dtype=D)), Convergence.state_spec(3), "conv")
    with pytest.raises(PopsynthError, match=r"state\['.+'\] has shape \[2"):
        check_state({k: v[:2] if v.ndim else v for k, v in state.items()} if name != "adam" else
                    {**state, "u": state["u"][:2]}, spec, "state")


def test_jacobian_rows_equals_per_row_jacfwd():
    """The batched forward-mode Jacobian of a row-wise function equals vmap(jacfwd) row by row."""
    from popsynth.fit import jacobian_rows

    resp, _, data = _toy()
    fn = lambda u: torch.cat([residuals(torch.exp(u) @ resp, data, "chi2"), prior_residuals(torch.exp(u), 1.0)], -1)  # noqa: E731
    u = torch.log(initial_weights(7, 15, seed=2))
    ref = torch.func.vmap(torch.func.jacfwd(lambda x: fn(x[None])[0]))(u)
    torch.testing.assert_close(jacobian_rows(fn, u), ref, rtol=1e-14, atol=0)


@pytest.mark.parametrize("loss", ["chi2", "a19"])
def test_fit_residuals_explicit_jacobian_and_lm_chunks(loss):
    """FitResiduals: the same residuals as the three calls it concatenates, its written-out Jacobian
    equals autograd's, and LM with it (and in chunks of starts) reaches the same weights."""
    from popsynth.cxb import CXBModel
    from popsynth.fit import FitResiduals, LevenbergMarquardt

    resp, _, data = _toy()
    model = CXBModel(resp, data.energy, 0.01 * data.obs)
    fr = FitResiduals(model, data, loss, 0.05, 1.0)
    plain = lambda w: torch.cat([residuals(model(w), data, loss, 0.05), prior_residuals(w, 1.0)], -1)  # noqa: E731
    w = initial_weights(9, 15, seed=3)
    r, jw = fr.jacobian(w)
    assert torch.equal(fr(w), plain(w)) and torch.equal(r, plain(w))
    ref = torch.func.vmap(torch.func.jacfwd(lambda x: plain(x[None])[0]))(w)
    torch.testing.assert_close(jw, ref, rtol=1e-12, atol=0)
    opt = LevenbergMarquardt()
    s_auto, s_expl = opt.init(w), opt.init(w)
    chunked = LevenbergMarquardt()
    chunked.chunk = 4
    s_chunk = chunked.init(w)
    for _ in range(30):
        s_auto, _ = opt.step(s_auto, plain)
        s_expl, _ = opt.step(s_expl, fr)
        s_chunk, _ = chunked.step(s_chunk, plain)
    torch.testing.assert_close(opt.weights(s_expl), opt.weights(s_auto), rtol=1e-8, atol=0)
    torch.testing.assert_close(opt.weights(s_chunk), opt.weights(s_auto), rtol=1e-8, atol=0)


def test_adam_is_torch_optim_adam_and_resumes_from_its_state():
    """Adam steps are torch.optim.Adam's (agree with the written-out Kingma & Ba update to rounding);
    a state round-tripped through plain tensors (as in a checkpoint) continues bit for bit."""
    resp, _, data = _toy()
    fn = lambda w: residuals(w @ resp, data, "chi2")  # noqa: E731
    opt = make_optimizer("adam")
    state = opt.init(initial_weights(4, 15, seed=1))
    u, m, v = state["u"].clone(), torch.zeros_like(state["u"]), torch.zeros_like(state["u"])
    for t in range(1, 31):
        x = u.clone().requires_grad_(True)
        (g,) = torch.autograd.grad((fn(torch.exp(x)) ** 2).sum(), x)
        m = 0.9 * m + 0.1 * g
        v = 0.999 * v + 0.001 * g * g
        u = (u - opt.lr * (m / (1 - 0.9 ** t)) / ((v / (1 - 0.999 ** t)).sqrt() + opt.eps)).clamp(-14.0, 9.0)
        state, _ = opt.step(state, fn)
    torch.testing.assert_close(state["u"], u, rtol=1e-12, atol=0)
    assert float(state["t"]) == 30.0 and state["t"].dtype == D
    cont = state
    saved = {k: val.clone() for k, val in state.items()}
    for _ in range(20):
        cont, loss_a = opt.step(cont, fn)
        saved, loss_b = make_optimizer("adam").step(saved, fn)
    assert all(torch.equal(cont[k], saved[k]) for k in cont) and torch.equal(loss_a, loss_b)


@pytest.mark.parametrize("explicit", [False, True])
def test_lm_active_mask_leaves_active_iterates_bitwise_unchanged(explicit):
    """LevenbergMarquardt.step(active=...): active starts move exactly as in an unmasked step
    (bit for bit, several steps), inactive ones keep u and lam and report their loss at u."""
    from popsynth.fit import FitData, FitResiduals

    resp, _, data = _toy()
    if explicit:
        model = lambda w: w @ resp  # noqa: E731
        model.response = resp
        fd = FitData(data.energy, data.obs, data.err_lo, data.err_hi, data.dataset, data.names, data.labels)
        fn = FitResiduals(model, fd, "chi2", 0.0, 1.0)
    else:
        fn = lambda w: torch.cat([residuals(w @ resp, data, "chi2"), prior_residuals(w, 1.0)], -1)  # noqa: E731
    opt = make_optimizer("lm")
    full = masked = opt.init(initial_weights(13, 15, seed=3))
    active = torch.tensor([True, False, True, True, False, True, True, True, False, True, True, False, True])
    for _ in range(5):
        ref, ref_loss = opt.step(full, fn)
        new, new_loss = opt.step(masked, fn, active=active)
        assert torch.equal(new["u"][active], ref["u"][active]) and torch.equal(new["lam"][active], ref["lam"][active])
        assert torch.equal(new_loss[active], ref_loss[active])
        assert torch.equal(new["u"][~active], masked["u"][~active]) and torch.equal(new["lam"][~active], masked["lam"][~active])
        torch.testing.assert_close(new_loss[~active], (fn(torch.exp(masked["u"][~active])) ** 2).sum(-1), rtol=1e-12, atol=0)
        full, masked = ref, {"u": torch.where(active[:, None], ref["u"], masked["u"]),
                             "lam": torch.where(active, ref["lam"], masked["lam"])}
    all_on, l_on = opt.step(full, fn, active=torch.ones(13, dtype=torch.bool))
    plain, l_plain = opt.step(full, fn)
    assert torch.equal(all_on["u"], plain["u"]) and torch.equal(l_on, l_plain)


def _noisy_toy(seed=0, n=40):
    """_toy with 3 % scatter on the data: a chi^2 whose minimum is not zero, with the asymmetric
    errors (err_hi = 1.5 err_lo) switching side at the points the model crosses."""
    resp, w_true, data = _toy(n, seed)
    g = torch.Generator().manual_seed(100 + seed)
    obs = data.obs * (1 + 0.03 * torch.randn(n, dtype=D, generator=g))
    return resp, FitData(data.energy, obs, data.err_lo, data.err_hi, data.dataset, data.names, data.labels)


def _fit(opt, conv, fn, w0, cap):
    """The loop of popsynth.run: freeze converged starts, stop when all are converged or at the cap."""
    state, cs = opt.init(w0), conv.init((fn(w0) ** 2).sum(-1))
    step = 0
    while step < cap and not bool(conv.stalled(cs).all()):
        info = conv.step_info()
        state, loss = opt.step(state, fn, active=conv.active(cs), info=info)
        cs = conv.update(cs, loss, info)
        step += 1
    return state, cs, loss, step


def test_convergence_second_order_test_is_final_and_ignores_rejections():
    """With the optimiser's predicted decrease: converged once predicted <= rtol * loss0, at once
    (no patience), and for good (frozen); steps that did not lower the loss do not count. Without
    it, the first-order stall test of earlier versions."""
    c = Convergence(rtol=1e-6, patience=10)
    st = c.init(torch.tensor([100.0, 100.0, 100.0], dtype=D))
    same = torch.tensor([100.0, 100.0, 100.0], dtype=D)
    for _ in range(30):  # a long run of rejected steps, far from stationary: never converged
        st = c.update(st, same, {"loss0": same, "predicted": torch.tensor([1.0, 1e-3, 5e-4], dtype=D)})
    assert c.stalled(st).tolist() == [False, False, False]
    st = c.update(st, same, {"loss0": same, "predicted": torch.tensor([5e-5, 1e-3, 0.0], dtype=D)})
    assert c.stalled(st).tolist() == [True, False, True] and c.active(st).tolist() == [False, True, False]
    st = c.update(st, same, {"loss0": same, "predicted": torch.tensor([1.0, 1e-5, math.inf], dtype=D)})
    assert c.stalled(st).tolist() == [True, True, True]  # final: a frozen start reports inf, stays converged
    assert st["converged"].tolist() == [True, True, True] and not bool(c.active(st).any())
    # without info: the first-order test (loss improving by < rtol for `patience` steps), not final
    # and never frozen
    c1 = Convergence(rtol=1e-3, patience=2)
    st = c1.init(torch.tensor([10.0, 10.0], dtype=D))
    for val in ([5.0, 9.9999], [4.0, 9.9998], [3.0, 9.9997]):
        st = c1.update(st, torch.tensor(val, dtype=D))
    assert c1.stalled(st).tolist() == [False, True] and c1.active(st).tolist() == [True, True]
    st = c1.update(st, torch.tensor([2.9999, 1.0], dtype=D))
    assert c1.stalled(st).tolist() == [False, False]


def test_lm_reports_the_gauss_newton_decrease():
    """info['predicted'] = g^T (J^T J)^-1 g at the point where the step began (by hand from autograd's
    Jacobian) where it is <= info['rtol'] * loss0, else a lower bound of it above that; info['loss0']
    the loss there; ~0 at the minimum."""
    resp, data = _noisy_toy()
    fn = lambda w: torch.cat([residuals(w @ resp, data, "chi2"), prior_residuals(w, 1.0)], -1)  # noqa: E731
    opt = make_optimizer("lm")
    state = opt.init(initial_weights(6, 15, seed=1))
    rtol = 1e-3
    exact = 0
    for i in range(40):
        u = state["u"]
        info = {"rtol": rtol}
        state, _ = opt.step(state, fn, info=info)
        fu = lambda x: fn(torch.exp(x))  # noqa: E731
        j = torch.func.vmap(torch.func.jacfwd(lambda x: fu(x[None])[0]))(u)
        r = fu(u)
        g = (j.transpose(1, 2) @ r[..., None])[..., 0]
        want = (g * torch.linalg.solve(j.transpose(1, 2) @ j, g[..., None])[..., 0]).sum(-1)
        loss0 = info["loss0"]
        torch.testing.assert_close(loss0, (r ** 2).sum(-1), rtol=1e-13, atol=0)
        got = info["predicted"]
        near = got <= rtol * loss0
        torch.testing.assert_close(got[near], want[near], rtol=1e-6, atol=1e-12 * float(loss0.max()))
        assert bool((got[~near] <= want[~near] * (1 + 1e-9)).all())  # a lower bound, above the tolerance
        assert bool(near[want <= 0.99 * rtol * loss0].all())  # no converged start is missed
        exact += int(near.sum())
        if i == 0:
            assert not bool(near.any())  # from the random starts every start is far from stationary
    assert exact > 0 and bool((info["predicted"] <= 1e-10 * info["loss0"]).all())


def test_lm_fit_stops_when_every_start_is_stationary():
    """The run loop with the second-order test on a chi^2 with asymmetric errors: every start
    converges before the cap, and the loss a start gives up against 300 more steps is at most
    ~rtol of its loss (the predicted decrease is an estimate of what is left)."""
    resp, data = _noisy_toy(seed=2)
    fn = lambda w: torch.cat([residuals(w @ resp, data, "chi2"), prior_residuals(w, 1.0)], -1)  # noqa: E731
    w0 = initial_weights(24, 15, seed=4)
    opt = make_optimizer("lm")
    for rtol in (1e-4, 1e-8):
        _, cs, loss, steps = _fit(opt, Convergence(rtol=rtol), fn, w0, 200)
        assert bool(Convergence(rtol=rtol).stalled(cs).all()) and steps < 60, steps
        ref = opt.init(w0)
        for _ in range(300):
            ref, ref_loss = opt.step(ref, fn)
        give = (loss - ref_loss) / ref_loss
        assert float(give.max()) <= 2 * rtol and float(give.min()) >= -1e-12, (float(give.max()), float(give.min()))


def test_lm_stationary_at_a_weight_bound():
    """A weight whose best value is negative runs to the lower bound of u; the components held there
    are left out of the step and of the Gauss-Newton decrease, so the others converge and the start is
    certified (with the held component in the solve and clipped afterwards the others crawl: 400 steps
    left them 1e-2 above this optimum)."""
    from popsynth.fit import LOG_W_MIN

    resp, w_true, data = _toy()
    w_neg = w_true.clone()
    w_neg[0, 3] = -0.3  # no positive weight fits: the optimum is at w_3 -> 0
    data = FitData(data.energy, (w_neg @ resp)[0], data.err_lo, data.err_hi, data.dataset, data.names, data.labels)
    fn = lambda w: residuals(w @ resp, data, "chi2")  # noqa: E731
    opt = make_optimizer("lm")
    state, cs, loss, steps = _fit(opt, Convergence(rtol=1e-8), fn, initial_weights(4, 15, seed=6), 300)
    assert bool(Convergence().stalled(cs).all()) and steps <= 15, steps  # measured: 12
    assert bool((state["u"][:, 3] == LOG_W_MIN).all())
    torch.testing.assert_close(loss, torch.full_like(loss, float(loss.min())), rtol=1e-8, atol=0)  # one optimum


@pytest.mark.parametrize("name", ["gd", "adam"])
def test_first_order_optimisers_freeze_inactive_starts(name):
    """GD and Adam with ``active``: inactive starts keep their state, active ones move exactly as in
    an unmasked step."""
    resp, _, data = _toy()
    fn = lambda w: residuals(w @ resp, data, "a19")  # noqa: E731
    opt = make_optimizer(name, lr=1e-3 if name == "gd" else None)
    state = opt.init(initial_weights(5, 15, seed=2))
    active = torch.tensor([True, False, True, False, True])
    ref, ref_loss = opt.step(state, fn)
    new, new_loss = opt.step(state, fn, active=active)
    for k, v in new.items():
        if v.ndim:
            assert torch.equal(v[active], ref[k][active]) and torch.equal(v[~active], state[k][~active]), k
    assert torch.equal(new_loss[active], ref_loss[active])
    torch.testing.assert_close(new_loss[~active], (fn(opt.weights(state)[~active]) ** 2).sum(-1), rtol=1e-12, atol=0)


def test_fit_with_frozen_starts_resumes_bit_for_bit():
    """The optimiser and convergence states are all there is: a fit stopped after some starts have
    converged and continued from copies of the two states (as from a checkpoint) follows the
    uninterrupted fit bit for bit."""
    resp, data = _noisy_toy(seed=3)
    fn = lambda w: torch.cat([residuals(w @ resp, data, "chi2"), prior_residuals(w, 1.0)], -1)  # noqa: E731
    opt, conv = make_optimizer("lm"), Convergence(rtol=1e-4)
    w0 = initial_weights(16, 15, seed=8)

    def advance(state, cs, n):
        for _ in range(n):
            info = conv.step_info()
            state, loss = opt.step(state, fn, active=conv.active(cs), info=info)
            cs = conv.update(cs, loss, info)
        return state, cs

    start = (opt.init(w0), conv.init((fn(w0) ** 2).sum(-1)))
    full = advance(*start, 40)
    half = advance(*start, 8)
    assert 0 < int(half[1]["converged"].sum()) < 16  # some starts frozen at the interruption (15 measured)
    resumed = advance({k: v.clone() for k, v in half[0].items()}, {k: v.clone() for k, v in half[1].items()}, 32)
    for a, b in ((full[0], resumed[0]), (full[1], resumed[1])):
        assert all(torch.equal(a[k], b[k]) for k in a)
