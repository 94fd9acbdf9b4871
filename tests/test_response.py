"""The response layer: one kernel per observable; the block responses are the kernels on the 15 block cubes."""

import numpy as np
import pytest
import torch

from popsynth.blocks import BLOCKS, Blocks
from popsynth.grid import Grid, N_BLOCKS, block_index_of, block_names, lum_range_of_blocks, nh_class_of_blocks
from popsynth.response import (block_counts_response, block_cxb_response, counts_response, cxb_response, dndz_response,
                               intrinsic_block_counts, intrinsic_block_dndz, intrinsic_ct_fraction, selected_counts)

DT = torch.float64


@pytest.fixture(scope="module")
def small():
    g = Grid(z=np.linspace(0.05, 3.0, 12), logl_edges=np.linspace(41, 47, 25), lognh_edges=np.linspace(20, 26, 13))
    gen = torch.Generator().manual_seed(3)
    phi = torch.rand(g.shape, generator=gen, dtype=DT) * 1e-5
    return g, phi, gen


def _masked(phi, g):
    return phi[None] * g.block_masks()[:, None]  # the 15 block cubes [15, nz, nL, nN]


def _close(a, b, tol=1e-12):
    assert a.shape == b.shape
    assert float(((a - b).abs() / b.abs().clamp_min(1e-300 + tol * float(b.abs().max()))).max()) < tol


def test_blocks_layout_defined_once():
    assert BLOCKS == Blocks() and BLOCKS.n == N_BLOCKS == 15
    assert block_names()[7] == "compton_thin:L43-44" and BLOCKS.names() == block_names()
    assert torch.equal(nh_class_of_blocks(), BLOCKS.nh_class()) and torch.equal(lum_range_of_blocks(), BLOCKS.lum_range())
    assert BLOCKS.is_ct().nonzero().flatten().tolist() == [10, 11, 12, 13, 14]
    assert int(block_index_of(2, 3)) == 13
    g = Grid()
    assert torch.equal(g.block_masks(), BLOCKS.masks(g.block_index))
    assert g.block_masks() is g.block_masks()  # made once
    assert g.distances() is g.distances()


def test_cxb_block_response_is_the_cube_kernel_on_the_block_cubes(small):
    g, phi, gen = small
    k = torch.rand(g.shape[0], g.shape[2], 7, generator=gen, dtype=DT)
    _close(cxb_response(phi, k, g, select=g.block_masks()), cxb_response(_masked(phi, g), k, g))


def test_cxb_block_response_by_rectangles_equals_the_masked_contraction(small):
    # block_cxb_response sums each block's rectangle of cells (log L range x N_H class) instead of
    # contracting with the one-hot masks: the same sums in another order, so equal to rounding
    g, phi, gen = small
    lum, nh = g.block_slices()
    assert [(s.start, s.stop) for s in lum] == [(0, 4), (4, 8), (8, 12), (12, 16), (16, 24)]  # 0.25 dex cells
    assert [(s.start, s.stop) for s in nh] == [(0, 4), (4, 8), (8, 12)]  # 0.5 dex cells
    for k in range(15):  # the rectangles are the masks
        c, j = divmod(k, 5)
        rect = torch.zeros(g.shape[1:], dtype=DT)
        rect[lum[j], nh[c]] = 1.0
        assert torch.equal(rect, g.block_masks()[k])
    k = torch.rand(g.shape[0], g.shape[2], 7, generator=gen, dtype=DT)
    _close(block_cxb_response(phi, k, g), cxb_response(phi, k, g, select=g.block_masks()), 1e-13)
    _close(block_cxb_response(phi, k, g), cxb_response(_masked(phi, g), k, g), 1e-13)
    # a grid reaching below log L 41 and above 47 puts those cells in the end ranges
    g2 = Grid(z=g.z, logl_edges=np.linspace(40, 48, 33), lognh_edges=g.lognh_edges)
    assert [(s.start, s.stop) for s in g2.block_slices()[0]] == [(0, 8), (8, 12), (12, 16), (16, 20), (20, 32)]
    phi2 = torch.rand(g2.shape, generator=gen, dtype=DT)
    _close(block_cxb_response(phi2, k, g2), cxb_response(phi2, k, g2, select=g2.block_masks()), 1e-13)


def test_counts_block_response_is_the_cube_kernel_on_the_block_cubes(small):
    g, phi, gen = small
    nz, _, nn = g.shape
    log_k = -46.0 + torch.rand(3, nz, nn, generator=gen, dtype=DT)  # log10 cm^-2, 3 draws
    fluxes = torch.tensor([1e-16, 1e-14, 3e-13, 1e-11], dtype=DT)
    vol = torch.rand(nz, generator=gen, dtype=DT) * 1e6
    args = (log_k, fluxes, vol, g.buffer("dlogl"), g.buffer("dlognh"), g.buffer("logl_edges"))
    cum_b, dif_b = block_counts_response(phi, *args, g.lognh)
    cum_c, dif_c = counts_response(_masked(phi, g), *args)
    _close(cum_b, cum_c[:, 0, 0])
    _close(dif_b, dif_c[:, 0, 0], 1e-11)
    # and the sum over the blocks is the full cube's count
    _close(cum_b.sum(0), counts_response(phi[None], *args)[0][0, 0, 0])


def test_sample_block_responses_are_the_cube_kernels_on_the_block_cubes(small):
    g, phi, gen = small
    nz, _, nn = g.shape
    sel = torch.rand(g.shape, generator=gen, dtype=DT)
    dl, dn = g.buffer("dlogl"), g.buffer("dlognh")
    dvol, vol = torch.rand(nz, generator=gen, dtype=DT), torch.rand(nz, generator=gen, dtype=DT)
    used = (torch.arange(nz) > 2).to(DT)
    share = torch.rand(nn, generator=gen, dtype=DT)
    masks, cubes = g.block_masks(), _masked(phi, g)
    _close(dndz_response(phi, sel, dl, dn, dvol, used, masks), dndz_response(cubes, sel, dl, dn, dvol, used))
    _close(dndz_response(phi, sel, dl, dn, dvol, used, masks, share=share),
           dndz_response(cubes, sel, dl, dn, dvol, used, share=share))
    for s in (sel, None):
        for sh in (share, None):
            _close(selected_counts(phi, s, dl, dn, vol, sh, masks), selected_counts(cubes, s, dl, dn, vol, sh))


def test_intrinsic_block_counts_and_ct_fraction(small):
    g, phi, _ = small
    f = intrinsic_block_dndz(phi, g)  # [nz, 15]
    i = 5
    trap = (0.5 * torch.as_tensor(np.diff(g.z[: i + 1]))[:, None] * (f[1: i + 1] + f[:i])).sum(0)
    c = intrinsic_block_counts(phi, g, float(g.z[i]))
    _close(c, trap, 1e-12)
    w = torch.ones(2, 15, dtype=DT)
    w[1, 10:] = 2.0
    frac = intrinsic_ct_fraction(w, c)
    ct = c[10:].sum() / c.sum()
    _close(frac, torch.stack([ct, 2 * ct / (1 + ct)]))
    # above log L 43: only the blocks of the last three luminosity ranges
    keep = BLOCKS.lum_range() >= 2
    _close(intrinsic_ct_fraction(w[:1], c, 43.0), (c[keep & BLOCKS.is_ct()].sum() / c[keep].sum())[None])
    with pytest.raises(Exception, match="zmax"):
        intrinsic_block_counts(phi, g, 0.1234)


def test_whole_counts_bits_and_the_cumulative_only_path(small):
    """The whole-axis N(>S) gathers c0 and the interval step c1 - c0 (taken once per interval): the
    same bits as gathering c0 and c1 per query; differential=False gives the same N(>S) and no dN/dS."""
    from popsynth._tensor import bracket
    from popsynth.response import reverse_cumulative

    g, phi, gen = small
    nz, _, nn = g.shape
    log_k = -46.0 + torch.rand(5, nz, nn, generator=gen, dtype=DT)
    fluxes = torch.tensor([1e-16, 1e-14, 3e-13, 1e-11], dtype=DT)
    vol = torch.rand(nz, generator=gen, dtype=DT) * 1e6
    dl, dn, edges = g.buffer("dlogl"), g.buffer("dlognh"), g.buffer("logl_edges")
    cubes = torch.stack([phi, 2 * phi])
    cum, dif = counts_response(cubes, log_k, fluxes, vol, dl, dn, edges)
    # the former formula, written out: per-query gathers of c0 and c1
    c = reverse_cumulative(cubes, dl).reshape(2, nz * nn, -1)
    t = (torch.log10(fluxes) - log_k.reshape(-1, nz * nn, 1)).contiguous()
    i0, i1, s, width = bracket(edges, t)
    cx = c[:, None].expand(2, t.shape[0], nz * nn, c.shape[-1])
    c0, c1 = torch.gather(cx, -1, i0.expand((2,) + t.shape)), torch.gather(cx, -1, i1.expand((2,) + t.shape))
    wzn = (vol[:, None] * dn[None, :]).reshape(-1)
    old = torch.zeros(2, 4, dtype=DT) + torch.einsum("bdms,m->bs", c0 + s * (c1 - c0), wzn)
    assert torch.equal(cum[:, 0, 0], old / 5)
    inside = ((t > edges[0]) & (t < edges[-1])).to(DT) / width
    old_dif = torch.zeros(2, 4, dtype=DT) - torch.einsum("bdms,dms,m->bs", c1 - c0, inside, wzn)
    assert torch.equal(dif[:, 0, 0], old_dif / (5 * fluxes * np.log(10.0)))
    cum_only, none = counts_response(cubes, log_k, fluxes, vol, dl, dn, edges, differential=False)
    assert none is None and torch.equal(cum_only, cum)
