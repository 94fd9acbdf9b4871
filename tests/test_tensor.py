"""popsynth._tensor: the bracketing helper reproduces, bit for bit, each interpolator's former
hand-written searchsorted formula; device messages name the `device` parameter."""

import numpy as np
import pytest
import torch

from popsynth._tensor import Bracket, bracket, bracket_np, interp_loglog, node_below, resolve_device
from popsynth.errors import PopsynthError

DT = torch.float64


def _cases(seed):
    """Increasing nodes [n] and queries [...] that hit nodes exactly, fall between them and leave the range."""
    gen = torch.Generator().manual_seed(seed)
    out = []
    for n in (2, 3, 17, 60):
        nodes = torch.sort(torch.rand(n, generator=gen, dtype=DT) * 10 - 3).values
        span = float(nodes[-1] - nodes[0])
        between = nodes[0] - 0.2 * span + torch.rand(7, 5, generator=gen, dtype=DT) * 1.4 * span
        on = nodes[torch.randint(0, n, (7, 5), generator=gen)]
        xq = torch.where(torch.rand(7, 5, generator=gen) < 0.3, on, between)
        out.append((nodes, xq))
    return out


def _eq(a, b):
    return torch.equal(a, b) if isinstance(a, torch.Tensor) else np.array_equal(a, b)


# ------------------------------------------------------------------ the former formulas, as they were written
def _old_interp_loglog(x, xp, fp):  # _tensor.interp_loglog before the helper
    lx = torch.log(x)
    lxp = torch.log(xp)
    idx = torch.searchsorted(lxp, lx.reshape(-1).contiguous()).clamp(1, lxp.numel() - 1)
    x0, x1 = lxp[idx - 1], lxp[idx]
    t = ((lx.reshape(-1) - x0) / (x1 - x0)).clamp(0.0, 1.0)
    lf = torch.log(fp.clamp_min(1e-300))
    f0 = lf[..., idx - 1]
    f1 = lf[..., idx]
    out = torch.exp(f0 + (f1 - f0) * t)
    out = torch.where(out < 1e-290, torch.zeros_like(out), out)
    return out.reshape(*fp.shape[:-1], *x.shape)


def _old_interp_edges(edges, t):  # response.interp_edges and response._whole_counts
    idx = torch.searchsorted(edges, t.contiguous(), right=True).clamp(1, edges.numel() - 1)
    i0 = idx - 1
    width = edges[idx] - edges[i0]
    s = ((t - edges[i0]) / width).clamp(0.0, 1.0)
    return i0, idx, s, width


def _old_band_primitive(x, xq):  # observables.band_flux_factor's primitive (h = x[1:] - x[:-1])
    h = x[1:] - x[:-1]
    xq = xq.clamp(x[0], x[-1])
    idx = torch.searchsorted(x, xq, right=True).clamp(1, x.numel() - 1)
    i0 = idx - 1
    s = ((xq - x[i0]) / h[i0]).clamp(0.0, 1.0)
    return i0, idx, s, h[i0]


def _old_selection_index(uf, u):  # observables._selection_antiderivative
    return torch.searchsorted(uf, u.contiguous(), right=True) - 1


def _old_unresolved(edges, tt):  # unresolved._moment_below
    idx = torch.searchsorted(edges, tt, right=True).clamp(1, edges.numel() - 1)
    return idx - 1, idx


def _old_greens(nodes, x):  # mc.interpolate._bracket after the clamp to the node range
    n = nodes.numel()
    i0 = (torch.searchsorted(nodes, x.contiguous(), right=True) - 1).clamp(0, n - 2)
    w1 = ((x - nodes[i0]) / (nodes[i0 + 1] - nodes[i0])).clamp(0.0, 1.0)
    return i0, i0 + 1, w1


def _old_mock_primitive(x, xq):  # mock.SpectralKernel._primitive (numpy, h = np.diff(x))
    h = np.diff(x)
    xq = np.clip(xq, x[0], x[-1])
    idx = np.clip(np.searchsorted(x, xq, side="right"), 1, x.size - 1)
    i0 = idx - 1
    s = np.clip((xq - x[i0]) / h[i0], 0.0, 1.0)
    return i0, idx, s, h[i0]


# ------------------------------------------------------------------ bit for bit
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_bracket_reproduces_every_former_formula(seed):
    for nodes, xq in _cases(seed):
        b = bracket(nodes, xq)
        assert isinstance(b, Bracket) and b.lo.dtype == torch.long and b.lo.shape == xq.shape
        for got, want in zip(b, _old_interp_edges(nodes, xq)):
            assert _eq(got, want)
        for got, want in zip(bracket(nodes, xq.clamp(nodes[0], nodes[-1])), _old_band_primitive(nodes, xq)):
            assert _eq(got, want)
        for got, want in zip(bracket(nodes, xq.clamp(nodes[0], nodes[-1]))[:3],
                             _old_greens(nodes, xq.clamp(nodes[0], nodes[-1]))):
            assert _eq(got, want)
        lo, hi, frac, width = bracket(nodes, xq, fraction=False)
        assert frac is None and width is None
        assert _eq(lo, _old_unresolved(nodes, xq)[0]) and _eq(hi, _old_unresolved(nodes, xq)[1])
        assert _eq(node_below(nodes, xq), _old_selection_index(nodes, xq))
        xn, qn = nodes.numpy(), xq.numpy()
        for got, want in zip(bracket_np(xn, np.clip(qn, xn[0], xn[-1])), _old_mock_primitive(xn, qn)):
            assert _eq(got, want)
        assert bracket_np(xn, qn).lo.dtype == np.int64


@pytest.mark.parametrize("seed", [0, 1])
def test_interp_loglog_bits_unchanged(seed):
    gen = torch.Generator().manual_seed(seed)
    xp = torch.sort(torch.rand(40, generator=gen, dtype=DT) * 100 + 0.1).values
    fp = torch.rand(3, 4, 40, generator=gen, dtype=DT) * 1e-3
    fp[0, 0, 5:9] = 0.0  # zeros interpolate as zero
    x = torch.cat([xp[::3], torch.rand(30, generator=gen, dtype=DT) * 120 + 0.05]).reshape(2, -1)
    assert torch.equal(interp_loglog(x, xp, fp), _old_interp_loglog(x, xp, fp))
    # the autograd path (out of place) gives the same values and a correct gradient
    f = (fp[1:] + 1e-3).requires_grad_(True)  # away from 0, where log f is steep for the finite differences
    assert torch.equal(interp_loglog(x, xp, f).detach(), _old_interp_loglog(x, xp, f.detach()))
    assert torch.autograd.gradcheck(lambda v: interp_loglog(x, xp, v), (f,))


def test_bracket_conventions():
    nodes = torch.tensor([0.0, 1.0, 3.0, 4.0], dtype=DT)
    xq = torch.tensor([-1.0, 0.0, 1.0, 2.0, 3.0, 4.0, 9.0], dtype=DT)
    b = bracket(nodes, xq)
    assert b.lo.tolist() == [0, 0, 1, 1, 2, 2, 2] and torch.equal(b.hi, b.lo + 1)
    assert b.frac.tolist() == [0.0, 0.0, 0.0, 0.5, 0.0, 1.0, 1.0]
    assert b.width.tolist() == [1.0, 1.0, 2.0, 2.0, 1.0, 1.0, 1.0]
    left = bracket(nodes, xq, right=False)  # a node is the right end of the interval below it
    assert left.lo.tolist() == [0, 0, 0, 1, 1, 2, 2] and left.frac.tolist() == [0.0, 0.0, 1.0, 0.5, 1.0, 1.0, 1.0]
    assert node_below(nodes, xq).tolist() == [-1, 0, 1, 1, 2, 3, 3]
    assert node_below(nodes, xq, right=False).tolist() == [-1, -1, 0, 1, 1, 2, 3]
    bn = bracket_np(nodes.numpy(), xq.numpy())
    assert bn.lo.tolist() == b.lo.tolist() and bn.frac.tolist() == b.frac.tolist()
    assert bracket_np(nodes.numpy(), xq.numpy(), right=False).lo.tolist() == left.lo.tolist()


# ------------------------------------------------------------------ device messages
@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_device_messages_name_the_parameter():
    from popsynth.cli import flag_text

    with pytest.raises(PopsynthError) as err:
        resolve_device("cuda:7")
    msg = str(err.value)
    assert "\n" not in msg and "`device` cpu" in msg and "--device" not in msg
    assert "use --device cpu, or install a CUDA build" in flag_text(msg)
    with pytest.raises(PopsynthError, match="use `device` cpu, cuda, cuda:N, mps or auto"):
        resolve_device("tpu7")


def test_interp_loglog_large_outputs_in_numpy_buffers_same_bits():
    """A CXB-kernel-sized interpolation (60 cells x 119 z x 74 energies, 4.2 MB): the no-autograd
    path writes into numpy-allocated buffers (huge pages, :func:`popsynth._tensor.empty_cpu`);
    the same bits as the former formula and as the autograd path."""
    from popsynth._tensor import LARGE_BUFFER_BYTES

    gen = torch.Generator().manual_seed(3)
    xp = torch.logspace(-1, 3, 400, dtype=DT)
    fp = torch.rand(60, 400, generator=gen, dtype=DT) * 1e-3 + 1e-6
    x = torch.rand(119, 74, generator=gen, dtype=DT) * 900 + 0.2
    assert 60 * x.numel() * 8 >= LARGE_BUFFER_BYTES
    got = interp_loglog(x, xp, fp)
    assert got.is_contiguous() and got.shape == (60, 119, 74)
    assert torch.equal(got, _old_interp_loglog(x, xp, fp))
    assert torch.equal(got, interp_loglog(x, xp, fp.clone().requires_grad_(True)).detach())
    # the query-major layout the CXB kernel reads: element [q, m] is interp_loglog's [m, q], bit for bit
    from popsynth._tensor import interp_loglog_query_major

    qm = interp_loglog_query_major(x, xp, fp)
    assert qm.shape == (119 * 74, 60) and torch.equal(qm.T.reshape(60, 119, 74), got)
