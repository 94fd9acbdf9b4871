"""Sparse contractions of the physical model's kernels with the reduced cube, with derivatives.

The counts, CT-fraction and binned-XLF kernels of one spectral set (:mod:`popsynth.physical_kernels`)
or of every emulator node (:mod:`popsynth.physical_spectra`) are held as a :class:`NodeContraction`:
cumulative kernels differenced along log L against the reverse cumulative cube (summation by
parts, exact), as int32 CSR matrices with their transposes. :class:`_SparseLinear` carries
reverse-mode, forward-mode and vmapped derivatives through the products; :class:`_TailSum` is the
reverse cumulative sum along log L with a one-pass adjoint.
"""

from __future__ import annotations

import torch

from ._tensor import DTYPE
from .errors import PopsynthError


class _CSRPair:
    """A sparse CSR matrix A [R, N] and its transpose (CSR), held outside the autograd graph (a
    plain object, so that torch.func does not try to wrap the sparse tensors)."""

    def __init__(self, a: torch.Tensor, at: torch.Tensor):
        self.a, self.at = a, at

    @property
    def nnz(self) -> int:
        return int(self.a.values().numel())

    @property
    def T(self) -> "_CSRPair":
        return _CSRPair(self.at, self.a)


class _SparseLinear(torch.autograd.Function):
    """y = x @ A^T for dense x [B, N] and a :class:`_CSRPair` A [R, N]. Reverse mode
    (dL/dx = dL/dy @ A), forward mode (the tangent goes through the same product) and vmap (the
    vmapped rows are stacked into one product), so the sampler's gradients, ``torch.func.jacfwd``
    (the mode's Jacobians) and ``vmap`` all use the sparse product."""

    #: rows of x per sparse product: the product's time grows faster than linearly with the number
    #: of right-hand sides once they leave the cache (measured, 10M nonzeros: 4 rows 35 ms,
    #: 16 rows 224 ms, 76 rows 2.3 s), so the Jacobians' many tangents go in blocks.
    BLOCK = 4

    @staticmethod
    def forward(x, pair):
        b = _SparseLinear.BLOCK
        if x.shape[0] <= b:
            return (pair.a @ x.T).T
        return torch.cat([(pair.a @ x[i:i + b].T).T for i in range(0, x.shape[0], b)], 0)

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.pair = inputs[1]

    @staticmethod
    def backward(ctx, grad):  # through apply again: the product is linear, and vmap / higher orders then work
        return _SparseLinear.apply(grad, ctx.pair.T), None

    @staticmethod
    def jvp(ctx, tx, tpair):
        return _SparseLinear.apply(tx, ctx.pair)

    @staticmethod
    def vmap(info, in_dims, x, pair):
        x = x.movedim(in_dims[0], 0)
        lead = x.shape[:-1]
        y = _SparseLinear.apply(x.reshape(-1, x.shape[-1]), pair)
        return y.reshape(*lead, y.shape[-1]), 0


class _TailSum(torch.autograd.Function):
    """C[..., j, k] = sum_{l >= j} x[..., l, k] w[l] for x [..., nL, K] and weights w [nL]: the
    reverse cumulative sum along log L of the summation by parts below. Its adjoint is the forward
    cumulative sum, dL/dx[l] = w[l] sum_{j <= l} dL/dC[j]: one pass instead of autograd's three
    (flip, cumsum, flip), the same numbers. Differentiable again (backward goes through autograd
    ops); forward mode (the mode's ``jacfwd``) maps the tangent the same way, and vmap uses the
    generated rule. ``w`` is a constant (no gradient)."""

    generate_vmap_rule = True

    @staticmethod
    def forward(x, w):
        return torch.flip(torch.cumsum(torch.flip(x * w[:, None], (-2,)), -2), (-2,))

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.w = inputs[1]

    @staticmethod
    def backward(ctx, grad):
        return torch.cumsum(grad, -2) * ctx.w[:, None], None

    @staticmethod
    def jvp(ctx, tx, tw):
        return torch.flip(torch.cumsum(torch.flip(tx * ctx.w[:, None], (-2,)), -2), (-2,))


#: Entries of an edge-space kernel below this fraction of its row's largest magnitude are the
#: rounding of the cumulative sums the kernel was built from, and dropped. Measured on the set-5
#: kernels (8 and 64 draws): dropping below 1e-15 .. 1e-13 gives the same nonzeros and features
#: equal to the dense contraction to 3e-14; at 1e-12 real entries go (error 2e-9).
EDGE_TOL = 1e-14


class NodeContraction:
    """The counts / CT / binned-XLF kernels of every node as two sparse matrices.

    A kernel K[z, l, k] of a cumulative quantity (N(>S): the share of spectral draws and N_H cells
    whose flux threshold lies below log L_l) is a smoothed step in l, so it is dense (41 % of the
    entries of the default grid) but its difference along l is not: with H = K / dlogL and
    G[j] = H[j] - H[j-1] (H[-1] = 0),

        sum_l K[l] phi[l] = sum_j G[j] C[j],    C[j] = sum_{l >= j} phi[l] dlogL_l,

    exactly (summation by parts); G holds the distribution of the thresholds over the log L edges
    (8 % of the entries at 64 draws). Each feature row is held in whichever form (K against phi, or
    G against C) has fewer nonzeros. Rows [C * F, nz * nL * 6] in node-major order, as ``k_phi``.
    """

    def __init__(self, k_phi: torch.Tensor, nz: int, dlogl: torch.Tensor, chunk: int = 64, tol: float = None):
        rows, n = k_phi.shape
        nl = int(dlogl.numel())
        if n != nz * nl * 6:
            raise PopsynthError(f"kernel rows of length {n} do not match a [{nz}, {nl}, 6] cube", "rebuild the emulator")
        self.shape = (nz, nl, 6)
        self.dlogl = dlogl.to(DTYPE)
        parts = {"k": ([], [], []), "g": ([], [], [])}  # row numbers, column indices, values
        rows_k, rows_g, count = [], [], {"k": 0, "g": 0}
        nnz_k_total = 0
        for r0 in range(0, rows, chunk):  # in row blocks: the 27-node kernels are 1.1 GB dense
            k4 = k_phi[r0:r0 + chunk].to(DTYPE).reshape(-1, nz, nl, 6)
            h = k4 / self.dlogl[None, None, :, None]
            g = torch.diff(h, dim=2, prepend=torch.zeros_like(h[:, :, :1]))
            gmax = g.abs().amax((1, 2, 3), keepdim=True)
            g = torch.where(g.abs() > (EDGE_TOL if tol is None else tol) * gmax, g, torch.zeros_like(g))
            nnz_k = (k4 != 0).sum((1, 2, 3))
            nnz_g = (g != 0).sum((1, 2, 3))
            nnz_k_total += int(nnz_k.sum())
            for i in range(k4.shape[0]):
                kind, m = ("g", g[i]) if nnz_g[i] < nnz_k[i] else ("k", k4[i])
                (rows_g if kind == "g" else rows_k).append(r0 + i)
                col = torch.nonzero(m.reshape(-1))[:, 0]
                parts[kind][0].append(torch.full_like(col, count[kind]))
                parts[kind][1].append(col)
                parts[kind][2].append(m.reshape(-1)[col])
                count[kind] += 1
        self.rows_k = torch.as_tensor(rows_k, dtype=torch.long)
        self.rows_g = torch.as_tensor(rows_g, dtype=torch.long)
        self._finish(self._pair(parts["k"], count["k"], n), self._pair(parts["g"], count["g"], n), nnz_k_total)

    def _finish(self, a_k, a_g, nnz_dense_form) -> None:
        """The matrices of both forms, and what derives from them and rows_k / rows_g."""
        self.a_k, self.a_g = a_k, a_g
        order = torch.cat([self.rows_k, self.rows_g])
        self.inverse = torch.empty_like(order)
        self.inverse[order] = torch.arange(order.numel())
        self.nnz = sum(p.nnz for p in (self.a_k, self.a_g) if p is not None)
        self.nnz_dense_form = int(nnz_dense_form)

    @staticmethod
    def _pair(part, n_rows: int, n: int):
        """A and A^T (CSR) from the rows' (row, column, value) lists; None without rows."""
        import warnings

        if n_rows == 0:
            return None
        r, c, v = (torch.cat(x) for x in part)
        def csr(rows, cols, shape):  # int32 indices: 30 % faster products than int64 (measured)
            m = torch.sparse_coo_tensor(torch.stack([rows, cols]), v, shape).coalesce().to_sparse_csr()
            return torch.sparse_csr_tensor(m.crow_indices().to(torch.int32), m.col_indices().to(torch.int32),
                                           m.values(), shape)

        with warnings.catch_warnings():  # "sparse CSR support is in beta": the two products used here are tested
            warnings.simplefilter("ignore", UserWarning)
            return _CSRPair(csr(r, c, (n_rows, n)), csr(c, r, (n, n_rows)))

    #: the tensors that define a contraction (:meth:`state`, :meth:`from_state`)
    _PAIR_KEYS = ("crow", "col", "values", "t_crow", "t_col", "t_values")

    def state(self) -> dict:
        """Plain tensors that rebuild this contraction exactly (:meth:`from_state`), for the disk
        cache: the two CSR matrices and their transposes (12 bytes per nonzero each, 0.28 GB for the
        27-node default against 1.2 GB of dense kernels)."""
        d = {"shape": torch.tensor(self.shape), "dlogl": self.dlogl, "rows_k": self.rows_k, "rows_g": self.rows_g,
             "nnz_dense_form": torch.tensor(self.nnz_dense_form)}
        for kind, pair in (("k", self.a_k), ("g", self.a_g)):
            if pair is None:
                continue
            for key, m in (("", pair.a), ("t_", pair.at)):
                d[f"{kind}_{key}crow"] = m.crow_indices()
                d[f"{kind}_{key}col"] = m.col_indices()
                d[f"{kind}_{key}values"] = m.values()
                d[f"{kind}_{key}size"] = torch.tensor(list(m.shape))
        return d

    @classmethod
    def from_state(cls, d: dict) -> "NodeContraction":
        """The contraction of :meth:`state` (no re-differencing, no re-thresholding)."""
        import warnings

        self = cls.__new__(cls)
        self.shape = tuple(int(x) for x in d["shape"])
        self.dlogl = d["dlogl"].to(DTYPE)
        self.rows_k, self.rows_g = d["rows_k"].long(), d["rows_g"].long()
        pairs = {}
        with warnings.catch_warnings():  # "sparse CSR support is in beta"
            warnings.simplefilter("ignore", UserWarning)
            for kind in ("k", "g"):
                if f"{kind}_crow" not in d:
                    pairs[kind] = None
                    continue
                mats = [torch.sparse_csr_tensor(d[f"{kind}_{key}crow"], d[f"{kind}_{key}col"], d[f"{kind}_{key}values"],
                                                tuple(int(x) for x in d[f"{kind}_{key}size"])) for key in ("", "t_")]
                pairs[kind] = _CSRPair(*mats)
        self._finish(pairs["k"], pairs["g"], d["nnz_dense_form"])
        return self

    @property
    def n_rows(self) -> int:
        return int(self.inverse.numel())

    def __call__(self, phi_red: torch.Tensor) -> torch.Tensor:
        """Every row contracted with reduced cubes phi_red [B, nz, nL, 6]: [B, rows]."""
        b = phi_red.shape[0]
        parts = []
        if self.a_k is not None:
            parts.append(_SparseLinear.apply(phi_red.reshape(b, -1), self.a_k))
        if self.a_g is not None:
            c = _TailSum.apply(phi_red, self.dlogl)  # C[j] = sum_{l >= j} phi_l dlogL_l
            parts.append(_SparseLinear.apply(c.reshape(b, -1), self.a_g))
        if not parts:  # no rows (a model without counts or CT terms)
            return phi_red.new_zeros(b, 0)
        return torch.cat(parts, -1)[:, self.inverse]
