"""Geometries of the photon Monte Carlo: where the matter is along a ray.

Every geometry answers one question, vectorised over photons: along the ray
``x(t) = pos + t * dir`` (t >= 0, ``dir`` a unit vector), which intervals of t lie inside
matter? The answer is a fixed number K of intervals per photon, ``(start [N, K], length [N, K])``,
in increasing order of t, with zero length for intervals that hold no matter. From these the
transport code takes the optical depth to infinity (sum of lengths x opacity) and the point
where a sampled path length inside matter is used up (:func:`advance_along`). Rays that leave
the matter and enter it again (a photon crossing the empty polar cone of the torus) are
handled exactly: each matter interval is its own entry.

Units. Lengths are in the geometry's own unit; ``density`` (attribute of each geometry) is the
hydrogen column per unit length in cm^-2, so the optical depth of a path of length L is
``density * sigma(E) * L`` with sigma in cm^2 per H atom.

* :class:`SlabGeometry` - a plane-parallel neutral slab filling ``-depth < z < 0`` (semi-infinite
  when the column is None), lit from above by a point source at the origin on its surface:
  the pexrav / pexmon set-up (Magdziarz & Zdziarski 1995; Nandra et al. 2007). Length unit:
  1e24 cm^-2 of vertical H column (so density = 1e24 cm^-2 per unit).
* :class:`SphereBiconeGeometry` - the BNTorus geometry (Brightman & Nandra 2011): a uniform
  sphere of radius 1 and radial column ``N_H`` (density = N_H per unit length) with the two
  polar cones of half-opening angle ``theta_tor`` (measured from the symmetry axis z) removed;
  the source sits at the centre. A point at polar angle theta is matter when
  ``theta_tor < theta < 180 deg - theta_tor``, i.e. when ``z^2 < cos^2(theta_tor) r^2``.

All functions are pure torch (CPU or CUDA), work in the dtype of ``pos``, and contain no
Python branching on tensor values.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..errors import PopsynthError

SLAB_LENGTH_UNIT_CM2 = 1.0e24
"""H column (cm^-2) per unit length of :class:`SlabGeometry` coordinates."""


@dataclass(frozen=True)
class SlabGeometry:
    """Neutral slab below the plane z = 0, lit from a point source on its surface.

    column_cm2: vertical H column of the slab (cm^-2); None means semi-infinite (exact: a ray
    going down never leaves the matter). A finite slab has its lower face at
    ``z = -column / 1e24``; photons leaving through it are counted apart (not reflected).
    """

    column_cm2: float | None = None

    n_segments = 1
    density = SLAB_LENGTH_UNIT_CM2
    fold_inclination = False  # escape direction cos(i) = dir_z (upward hemisphere only)

    def __post_init__(self):
        if self.column_cm2 is not None and not (self.column_cm2 > 0.0):
            raise PopsynthError(
                f"slab column {self.column_cm2} is not positive", "pass a column in cm^-2, or None"
            )

    @property
    def depth(self) -> float:
        """Slab thickness in geometry units (inf for a semi-infinite slab)."""
        return math.inf if self.column_cm2 is None else self.column_cm2 / SLAB_LENGTH_UNIT_CM2

    def segments(self, pos: torch.Tensor, direction: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Matter intervals along rays: (start [N, 1], length [N, 1]) in geometry units.

        pos, direction: [N, 3]; pos must be inside the slab or on its upper face. A ray going
        up (dir_z > 0) leaves after ``-z / dir_z``; going down it leaves through the lower face
        after ``(z + depth) / -dir_z`` (inf if semi-infinite); horizontal rays never leave.
        """
        z = pos[:, 2]
        dz = direction[:, 2]
        inf = torch.full_like(z, math.inf)
        up = (-z).clamp_min(0.0) / dz.clamp_min(1e-300)
        down = (z + self.depth).clamp_min(0.0) / (-dz).clamp_min(1e-300)
        length = torch.where(dz > 0.0, up, torch.where(dz < 0.0, down, inf))
        return torch.zeros_like(z).unsqueeze(1), length.unsqueeze(1)


@dataclass(frozen=True)
class SphereBiconeGeometry:
    """Uniform sphere (radius 1, radial column ``nh_cm2``) minus two polar cones (BNTorus).

    theta_tor_deg: half-opening angle of the empty cones, measured from the symmetry axis
    (0 < theta_tor < 90 deg; the covering factor of the matter is cos(theta_tor)).
    nh_cm2: radial H column of the sphere in cm^-2 (= the line-of-sight column for every
    inclination through the matter, as in BNTorus).
    """

    nh_cm2: float
    theta_tor_deg: float

    n_segments = 3
    fold_inclination = True  # symmetric under z -> -z: cos(i) = |dir_z|

    def __post_init__(self):
        if not (0.0 < self.theta_tor_deg < 90.0):
            raise PopsynthError(
                f"torus half-opening angle {self.theta_tor_deg} deg is outside (0, 90)",
                "pass theta_tor in degrees, measured from the symmetry axis",
            )
        if not (self.nh_cm2 > 0.0):
            raise PopsynthError(f"torus column {self.nh_cm2} is not positive", "pass N_H in cm^-2")

    @property
    def density(self) -> float:
        """H column per unit length (cm^-2): the sphere has radius 1."""
        return float(self.nh_cm2)

    @property
    def cos_open(self) -> float:
        """cos(theta_tor): |cos(polar angle)| above which a direction lies in the empty cone."""
        return math.cos(math.radians(self.theta_tor_deg))

    def in_matter(self, pos: torch.Tensor) -> torch.Tensor:
        """Bool [N]: is the point inside the sphere and outside both cones?"""
        c2 = self.cos_open**2
        r2 = (pos * pos).sum(-1)
        return (pos[:, 2] ** 2 < c2 * r2) & (r2 < 1.0)

    def segments(self, pos: torch.Tensor, direction: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Matter intervals along rays: (start [N, 3], length [N, 3]) in units of the radius.

        pos [N, 3] inside the sphere (|pos| <= 1), direction [N, 3] unit vectors. The ray leaves
        the sphere at t_s (stable root of |pos + t dir| = 1). The double cone z^2 = c^2 |x|^2
        (c = cos theta_tor) is a quadric, so a ray crosses it at most twice, at the real roots
        of f(t) = A t^2 + 2 B t + C (A = d_z^2 - c^2, B = p_z d_z - c^2 p.d,
        C = p_z^2 - c^2 |p|^2), found with the cancellation-free form q = -(B + sign(B) sqrt(B^2
        - A C)), t = q / A and C / q. The roots that fall in (0, t_s) split [0, t_s] into three
        intervals; each is matter or cone as a whole, decided by the sign of f at its midpoint
        (robust to tangent rays, rays parallel to a cone generator, and points on the cone).
        So matter -> cone -> matter (re-entry) comes out as two matter intervals.
        """
        c2 = self.cos_open**2
        px, py, pz = pos.unbind(-1)
        dx, dy, dz = direction.unbind(-1)
        inf = torch.full_like(pz, math.inf)
        # sphere exit
        b = px * dx + py * dy + pz * dz
        cc = (px * px + py * py + pz * pz - 1.0).clamp_max(0.0)  # <= 0 inside
        sq = torch.sqrt((b * b - cc).clamp_min(0.0))
        t_s = torch.where(b > 0.0, (-cc) / (b + sq).clamp_min(1e-300), sq - b).clamp_min(0.0)
        # cone crossings
        A = dz * dz - c2
        B = pz * dz - c2 * b
        C = pz * pz - c2 * (px * px + py * py + pz * pz)
        disc = B * B - A * C
        real = disc >= 0.0
        sqc = torch.sqrt(disc.clamp_min(0.0))
        q = -(B + torch.where(B >= 0.0, sqc, -sqc))
        r1 = torch.where(A != 0.0, q / torch.where(A != 0.0, A, torch.ones_like(A)), inf)
        r2 = torch.where(q != 0.0, C / torch.where(q != 0.0, q, torch.ones_like(q)), inf)

        def clip(r):
            ok = real & (r > 0.0) & (r < t_s) & torch.isfinite(r)
            return torch.where(ok, r, t_s)

        r1, r2 = clip(r1), clip(r2)
        lo = torch.minimum(r1, r2)
        hi = torch.maximum(r1, r2)
        zero = torch.zeros_like(t_s)
        starts = torch.stack((zero, lo, hi), dim=1)
        ends = torch.stack((lo, hi, t_s), dim=1)
        mid = 0.5 * (starts + ends)  # [N, 3]
        mx = px.unsqueeze(1) + mid * dx.unsqueeze(1)
        my = py.unsqueeze(1) + mid * dy.unsqueeze(1)
        mz = pz.unsqueeze(1) + mid * dz.unsqueeze(1)
        matter = mz * mz < c2 * (mx * mx + my * my + mz * mz)
        length = torch.where(matter, ends - starts, torch.zeros_like(starts))
        return starts, length


def advance_along(starts: torch.Tensor, lengths: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """Ray parameter t at which a path length ``s`` inside matter is used up.

    starts, lengths: [N, K] matter intervals (increasing t, zero length where empty);
    s: [N] path length inside matter, 0 <= s < lengths.sum(-1). Returns t [N] with
    ``t = start_k + (s - sum of lengths before k)`` for the interval k where s falls.
    """
    cum = torch.cumsum(lengths, dim=1)
    before = torch.cat((torch.zeros_like(lengths[:, :1]), cum[:, :-1]), dim=1)  # exclusive sum
    inside = (s.unsqueeze(1) >= before) & (s.unsqueeze(1) < cum) & (lengths > 0.0)
    # the first interval that holds s; if rounding leaves none, the last non-empty one
    k = torch.argmax(inside.to(torch.int8), dim=1)
    none = ~inside.any(dim=1)
    last = (lengths.shape[1] - 1) - torch.argmax(torch.flip(lengths > 0.0, dims=(1,)).to(torch.int8), dim=1)
    k = torch.where(none, last, k)
    st = starts.gather(1, k.unsqueeze(1)).squeeze(1)
    bf = before.gather(1, k.unsqueeze(1)).squeeze(1)
    ln = lengths.gather(1, k.unsqueeze(1)).squeeze(1)
    return st + torch.minimum(s - bf, ln).clamp_min(0.0)
