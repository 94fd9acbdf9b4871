"""Vectorised photon transport: the Monte Carlo loop behind the Green's function tables.

All photons of a run advance together as torch tensors (CPU or CUDA); each loop iteration is
one flight plus one interaction for every photon still alive, and photons that finish are
replaced from a queue (streaming), so the vectors stay long until the queue is empty. Float64
throughout (positions near cone surfaces and weights of 1e-8 need it; on CPU the loop is
bound by the number of torch calls, not by the arithmetic). Physics:

* Opacity: total cross section per H atom sigma_tot(E) = sigma_photo(E) + 1.21 sigma_KN(E)
  (:mod:`popsynth.physics.crosssections`: Elam et al. 2002 photoabsorption for neutral gas of
  Anders & Grevesse 1989 abundances; Klein-Nishina on free electrons at rest). Compton
  scattering on bound electrons (binding, Doppler broadening, Rayleigh scattering) is left
  out: it matters below ~1 keV and in the fine shape of the Fe K alpha Compton shoulder only.
  Cross sections are tabulated once (:func:`tabulate_medium`) on a uniform grid in ln E with
  ~4000 points per decade and interpolated linearly on the photons' device.
* Interaction choice: Compton with probability sigma_C / sigma_tot; otherwise photoabsorption,
  which yields fluorescence line l with probability (sigma_K,el(E) / sigma_photo(E)) x yield_l
  (K-shell share of the element x fluorescence yield x branching; :mod:`popsynth.physics.atomic`,
  lines of Fe and Ni), emitted isotropically at the line energy. Else the photon is absorbed.
* Compton scattering: cos(theta) from the Klein-Nishina distribution
  (``crosssections.sample_kn_mu``), recoil E' = E / (1 + (E / m_e c^2)(1 - cos theta)),
  azimuth uniform; the direction is rotated with a branch-free orthonormal basis (Duff et al.
  2017, JCGT 6, 1), which is stable for directions along any axis.
* Termination: escape; absorption; energy below the floor (default 1 keV, counted as
  "dropped"); in the weighted mode, Russian roulette of low-weight photons.

Two estimators, both unbiased:

``forced=False`` (analog): every photon has weight 1; the free path is drawn from the total
    opacity; a photon escapes when the path exceeds the matter along its ray (re-entry into
    the torus after crossing the empty cone is exact, :mod:`popsynth.mc.geometry`); absorption
    kills it. Tallies are integer counts, so escaped + absorbed + dropped + lost = injected
    exactly ("lost": left through the bottom of a finite slab, or over ``max_interactions``).
``forced=True`` (weighted; used for the tables): at every flight the photon's weight splits
    into the part that escapes along the current ray, w exp(-tau_esc) (tallied at once), and
    the part that interacts, whose path is drawn from the exponential truncated at tau_esc
    (forced collision); at the interaction the absorbed share is tallied and the photon carries
    on as a scattered or fluorescence photon with weight w (P_C + P_fl) (implicit capture).
    Photons whose weight falls below ``w_min`` times their weight after the first interaction
    play Russian roulette (survive with ``roulette_survival``, weight divided by it). This reaches Compton-thin columns (tau ~ 1e-4) and the tails of
    Compton-thick ones with far less noise than the analog game. Weight is conserved
    exactly except for roulette, whose net effect (killed minus created) is tallied, so
    escaped + absorbed + dropped + lost + roulette = injected to rounding.

The result of a run is a :class:`TransportResult` of float64 tallies binned by escape
inclination, outgoing energy (or fluorescence line, or "unscattered") and input energy bin.
:mod:`popsynth.mc.simulate` turns these into normalised Green's functions (:mod:`popsynth.mc.table`).
"""

from __future__ import annotations

import hashlib
import math
import time
from dataclasses import dataclass, field

import numpy as np
import torch

from ..errors import PopsynthError
from .geometry import advance_along

MC_TRANSPORT_VERSION = "1"
"""Bumped whenever the transport physics or estimators change (enters the tables' version key)."""

_TWO_PI = 2.0 * math.pi


# ------------------------------------------------------------------------------------------
# Interaction physics, tabulated
# ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Medium:
    """Interaction physics of the gas, tabulated on a uniform grid in ln E.

    rows: [2 + L, n] float64; row 0 = ln sigma_tot (sigma_tot in cm^2 per H atom), row 1 =
    P_C = Compton share of interactions, rows 2.. = P_l = probability per interaction of
    emitting fluorescence line l. Grid: ln E_j = ln_e0 + j * dln (E in keV).
    line_energies_keV: [L]; line_names: names of the lines ("Fe Ka", ...).
    scattering: "klein-nishina" (real physics) or "isotropic-elastic" (test media: isotropic
    phase function, no recoil).
    source: how :func:`tabulate_medium` made the tables (empty for test media): the tabulation
    arguments ``e_min_keV``, ``e_max_keV`` (keV), ``points_per_decade``, ``abund``,
    ``elements`` (list), and per line ``line_yields`` (line photons per K-shell ionisation),
    ``line_edges_keV`` (K edge of the line's element, keV) and ``line_jump_ratios`` (K jump
    ratio of that element), lists of length L. Provenance only: not part of
    :meth:`fingerprint`; the Green's tables store it to judge later whether they are current
    (:func:`popsynth.mc.currency.check_table`).
    """

    ln_e0: float
    dln: float
    rows: torch.Tensor
    line_energies_keV: torch.Tensor
    line_names: tuple[str, ...]
    scattering: str = "klein-nishina"
    description: str = ""
    source: dict = field(default_factory=dict, compare=False, hash=False)

    @property
    def n_lines(self) -> int:
        return int(self.line_energies_keV.numel())

    @property
    def e_range_keV(self) -> tuple[float, float]:
        return math.exp(self.ln_e0), math.exp(self.ln_e0 + self.dln * (self.rows.shape[1] - 1))

    def to(self, device: torch.device | str) -> "Medium":
        """Copy of the medium with its tables on ``device``."""
        return Medium(
            self.ln_e0, self.dln, self.rows.to(device), self.line_energies_keV.to(device),
            self.line_names, self.scattering, self.description, dict(self.source),
        )

    def lookup(self, energy_keV: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Interpolate the tables at ``energy_keV`` [N] (keV, on the medium's device).

        Returns (sigma_tot [N] in cm^2 per H atom, probs [N, 1 + L] = (P_C, P_1 .. P_L)).
        Linear in ln E for every row (log-log for sigma_tot); energies outside the table are
        clamped to its ends (the transport keeps them inside).
        """
        n = self.rows.shape[1]
        x = (torch.log(energy_keV) - self.ln_e0) / self.dln
        i = torch.floor(x).clamp(0, n - 2)
        f = (x - i).clamp(0.0, 1.0)
        i = i.long()
        r0 = self.rows[:, i]
        r1 = self.rows[:, i + 1]
        v = r0 + f * (r1 - r0)
        return torch.exp(v[0]), v[1:].T

    def fingerprint(self) -> str:
        """sha256 (16 hex digits) of the tables, line data and scattering law."""
        h = hashlib.sha256()
        h.update(np.ascontiguousarray(self.rows.detach().cpu().numpy()).tobytes())
        h.update(np.ascontiguousarray(self.line_energies_keV.detach().cpu().numpy()).tobytes())
        h.update(repr((self.ln_e0, self.dln, self.line_names, self.scattering)).encode())
        return h.hexdigest()[:16]


MEDIUM_ROW_NAMES = ("ln_sigma_tot", "P_compton")
"""Names of the first two rows of :attr:`Medium.rows`; row 2 + l is "P_<line name>"."""


def medium_grid(
    e_min_keV: float = 0.5, e_max_keV: float = 1100.0, points_per_decade: int = 4000
) -> tuple[float, float, int]:
    """Energy grid of :func:`tabulate_medium`: (ln_e0, dln, n) with nodes
    E_j = exp(ln_e0 + j dln) keV, j = 0 .. n - 1, from e_min_keV to e_max_keV (keV) with
    ``points_per_decade`` nodes per decade of E (n = ceil(log10(e_max/e_min) ppd) + 1)."""
    if not (0.1 <= e_min_keV < e_max_keV):
        raise PopsynthError(
            f"bad medium energy range {e_min_keV}-{e_max_keV} keV", "use 0.1 <= e_min < e_max (keV)"
        )
    n = int(math.ceil(math.log10(e_max_keV / e_min_keV) * points_per_decade)) + 1
    ln_e0 = math.log(e_min_keV)
    dln = (math.log(e_max_keV) - ln_e0) / (n - 1)
    return ln_e0, dln, n


def medium_physics(
    energy_keV: np.ndarray, abund: str = "angr", elements: tuple[str, ...] = ("Fe", "Ni")
) -> tuple[np.ndarray, list]:
    """The interaction physics of :func:`tabulate_medium` at arbitrary energies.

    energy_keV: float64 [m] (keV, >= 0.1). Returns (rows, lines): rows float64 [2 + L, m] in
    the layout of :attr:`Medium.rows` (ln sigma_tot per H atom in cm^2, P_C, P_l), lines the
    :class:`popsynth.physics.atomic.FluorescenceLine` list of ``elements`` (length L). Every
    column depends on its own energy only, so the rows at a subset of the grid nodes equal
    the full tabulation there (to rounding): :func:`popsynth.mc.currency.check_table` uses this
    to re-evaluate today's physics at a sample of a table's nodes cheaply.
    """
    from ..physics import crosssections as xs
    from ..physics.atomic import fluorescence_lines

    energy = np.ascontiguousarray(energy_keV, dtype=np.float64)
    sig_ph = xs.sigma_photo(energy, abund=abund).numpy()
    sig_c = (xs.ELECTRONS_PER_H * xs.sigma_kn(torch.as_tensor(energy))).numpy()
    sig_tot = sig_ph + sig_c
    lines = fluorescence_lines(elements)
    rows = [np.log(sig_tot), sig_c / sig_tot]
    for ln in lines:
        sk = xs.sigma_photo_kshell(ln.element, energy, abund=abund).numpy()
        rows.append(sk * ln.yield_ / sig_tot)
    return np.stack(rows), lines


def line_source(lines: list) -> dict:
    """Per-line atomic data of ``lines`` (FluorescenceLine list) for :attr:`Medium.source`:
    line_yields, line_edges_keV, line_jump_ratios (lists of float, see :class:`Medium`)."""
    from ..physics.atomic import k_edge

    return {
        "line_yields": [float(ln.yield_) for ln in lines],
        "line_edges_keV": [float(ln.edge_keV) for ln in lines],
        "line_jump_ratios": [float(k_edge(ln.element).jump_ratio) for ln in lines],
    }


def tabulate_medium(
    e_min_keV: float = 0.5,
    e_max_keV: float = 1100.0,
    points_per_decade: int = 4000,
    abund: str = "angr",
    elements: tuple[str, ...] = ("Fe", "Ni"),
    device: torch.device | str = "cpu",
) -> Medium:
    """Tabulate neutral-gas interaction physics for the Monte Carlo (built once, on CPU).

    e_min_keV, e_max_keV: table range (keV); points_per_decade: grid density in log10 E
    (4000 puts table nodes 0.06 % apart, so K edges are sharp to ~4 eV at 7 keV);
    abund: abundance table name ("angr" = Anders & Grevesse 1989, as pexrav/pexmon);
    elements: elements whose K-shell fluorescence lines are followed
    (:func:`popsynth.physics.atomic.fluorescence_lines`). Returns a :class:`Medium` on
    ``device`` (grid :func:`medium_grid`, rows :func:`medium_physics`, provenance in
    ``Medium.source``). Cross sections from :mod:`popsynth.physics.crosssections`.
    """
    from ..physics import crosssections as xs

    ln_e0, dln, n = medium_grid(e_min_keV, e_max_keV, points_per_decade)
    energy = np.exp(ln_e0 + dln * np.arange(n))
    rows, lines = medium_physics(energy, abund=abund, elements=tuple(elements))
    source = {
        "e_min_keV": float(e_min_keV), "e_max_keV": float(e_max_keV),
        "points_per_decade": int(points_per_decade), "abund": str(abund),
        "elements": [str(e) for e in elements], **line_source(lines),
    }
    return Medium(
        ln_e0=ln_e0,
        dln=dln,
        rows=torch.as_tensor(rows, dtype=torch.float64),
        line_energies_keV=torch.as_tensor([ln.energy_keV for ln in lines], dtype=torch.float64),
        line_names=tuple(ln.name for ln in lines),
        scattering="klein-nishina",
        description=(
            f"neutral gas, abund={abund}, sigma_photo Elam+2002 (xraydb), Klein-Nishina x "
            f"{xs.ELECTRONS_PER_H} e/H, K lines of {','.join(elements)}"
        ),
        source=source,
    ).to(device)


def grey_medium(
    albedo: float,
    sigma_cm2: float = 1.0e-24,
    e_min_keV: float = 0.5,
    e_max_keV: float = 1100.0,
    device: torch.device | str = "cpu",
) -> Medium:
    """Energy-independent test medium: sigma_tot = ``sigma_cm2`` per H, single-scattering
    albedo ``albedo`` (P_C), isotropic elastic scattering, no lines.

    Used to check the transport against exact radiative-transfer results (Chandrasekhar 1960:
    the albedo of a semi-infinite isotropically scattering atmosphere).
    """
    if not (0.0 <= albedo <= 1.0):
        raise PopsynthError(f"albedo {albedo} outside [0, 1]", "pass a probability")
    n = 2
    ln_e0 = math.log(e_min_keV)
    dln = math.log(e_max_keV) - ln_e0
    rows = torch.tensor([[math.log(sigma_cm2)] * n, [albedo] * n], dtype=torch.float64)
    return Medium(
        ln_e0, dln, rows, torch.zeros(0, dtype=torch.float64), (), "isotropic-elastic",
        f"grey test medium, albedo={albedo}, sigma={sigma_cm2} cm^2/H",
    ).to(device)


# ------------------------------------------------------------------------------------------
# Directions
# ------------------------------------------------------------------------------------------
def isotropic_directions(u1: torch.Tensor, u2: torch.Tensor) -> torch.Tensor:
    """Unit vectors [N, 3] uniform on the sphere from two uniform variates [N] in [0, 1)."""
    mu = 2.0 * u1 - 1.0
    sin = torch.sqrt((1.0 - mu * mu).clamp_min(0.0))
    phi = _TWO_PI * u2
    return torch.stack((sin * torch.cos(phi), sin * torch.sin(phi), mu), dim=1)


def rotate_directions(direction: torch.Tensor, mu: torch.Tensor, phi: torch.Tensor) -> torch.Tensor:
    """New unit vectors after scattering by polar angle acos(mu) and azimuth phi.

    direction [N, 3] unit vectors, mu [N] in [-1, 1], phi [N] in radians. Uses the branch-free
    orthonormal basis of Duff et al. 2017 (JCGT 6(1)) around ``direction``, exact for
    directions along the axes (no division by sqrt(1 - d_z^2)); the result is renormalised so
    rounding does not accumulate over many scatterings.
    """
    nx, ny, nz = direction.unbind(-1)
    sign = torch.where(nz >= 0.0, torch.ones_like(nz), -torch.ones_like(nz))
    a = -1.0 / (sign + nz)
    b = nx * ny * a
    b1 = torch.stack((1.0 + sign * nx * nx * a, sign * b, -sign * nx), dim=1)
    b2 = torch.stack((b, sign + ny * ny * a, -ny), dim=1)
    sin = torch.sqrt((1.0 - mu * mu).clamp_min(0.0))
    out = (
        mu.unsqueeze(1) * direction
        + (sin * torch.cos(phi)).unsqueeze(1) * b1
        + (sin * torch.sin(phi)).unsqueeze(1) * b2
    )
    return out / torch.linalg.vector_norm(out, dim=1, keepdim=True)


# ------------------------------------------------------------------------------------------
# Tally grid and result
# ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class TallyGrid:
    """Binning of escaping photons.

    e_in_edges [n_in + 1], e_out_edges [n_out + 1]: increasing energy bin edges in keV;
    cos_edges [n_inc + 1]: increasing edges in cos(i), within [0, 1] (i = angle between the
    escape direction and the slab normal / torus axis; the torus is folded, cos i = |d_z|).
    """

    e_in_edges: torch.Tensor
    e_out_edges: torch.Tensor
    cos_edges: torch.Tensor

    @property
    def n_in(self) -> int:
        return self.e_in_edges.numel() - 1

    @property
    def n_out(self) -> int:
        return self.e_out_edges.numel() - 1

    @property
    def n_inc(self) -> int:
        return self.cos_edges.numel() - 1


@dataclass
class TransportResult:
    """Float64 tallies of one Monte Carlo run (summed photon weights; counts when analog).

    escaped [(n_batches,) n_inc, n_out + L + 1, n_in]: weight escaping into inclination bin i, channel c,
    from input bin j. Channels: 0..n_out-1 = output energy bins (scattered continuum and
    Compton-scattered line photons); n_out + l = fluorescence line l escaping unscattered;
    n_out + L = photons escaping without any interaction (transmitted beam).
    absorbed, dropped, lost, roulette, injected: [n_in]. dropped = fell below the energy floor;
    lost = left through the lower face of a finite slab, or still alive after ``max_steps``;
    roulette = net weight removed by Russian roulette (zero on average).
    """

    escaped: torch.Tensor
    absorbed: torch.Tensor
    dropped: torch.Tensor
    lost: torch.Tensor
    roulette: torch.Tensor
    injected: torch.Tensor
    n_steps: int = 0
    n_interactions: int = 0
    wall_s: float = 0.0
    forced: bool = True
    line_names: tuple[str, ...] = field(default_factory=tuple)

    def balance(self) -> torch.Tensor:
        """[n_in]: injected - (escaped + absorbed + dropped + lost + roulette); 0 to rounding."""
        esc = self.escaped.reshape(-1, self.escaped.shape[-1]).sum(dim=0)
        return self.injected - (esc + self.absorbed + self.dropped + self.lost + self.roulette)


# ------------------------------------------------------------------------------------------
# The photon loop
# ------------------------------------------------------------------------------------------
def _source_directions(geometry, u1, u2) -> torch.Tensor:
    d = isotropic_directions(u1, u2)
    if getattr(geometry, "fold_inclination", True):
        return d  # torus: isotropic over 4 pi
    # slab: the downward half of an isotropic source (mu = cos from the normal uniform in (0, 1])
    return torch.cat((d[:, :2], -d[:, 2:].abs()), dim=1)


def run_photons(
    geometry,
    medium: Medium,
    grid: TallyGrid,
    n_per_bin: int,
    generator: torch.Generator,
    *,
    forced: bool = True,
    n_batches: int = 1,
    max_active: int = 1 << 17,
    e_floor_keV: float | None = None,
    w_min: float = 1.0e-3,
    roulette_survival: float = 0.1,
    max_interactions: int = 100_000,
    compact_fraction: float = 0.85,
    source_gamma: float | None = None,
) -> TransportResult:
    """Inject ``n_per_bin`` photons in every input energy bin and follow them to the end.

    geometry: :class:`~popsynth.mc.geometry.SlabGeometry` or
    :class:`~popsynth.mc.geometry.SphereBiconeGeometry`. medium: :class:`Medium`. grid:
    :class:`TallyGrid`. Photons of input bin j get energies uniform in ln E across the bin and
    directions from the geometry's source (isotropic over 4 pi for the torus; the downward
    hemisphere of an isotropic source for the slab). generator: seeded torch.Generator; its
    device is the device of the run (CPU or CUDA). forced: weighted estimator (True) or analog
    game (False), see the module docstring.

    The photons are streamed: at most ``max_active`` are followed at once, and photons that
    finish are replaced by new ones from the queue, so the vector length stays large until the
    queue is empty (no long tail of half-empty iterations). Photon k of the queue belongs to
    input bin k mod n_in and to batch (k // n_in) mod n_batches; ``n_per_bin`` is rounded up
    to a multiple of ``n_batches``. Tallies are kept per batch (independent sub-samples, used
    for Monte Carlo errors). e_floor_keV: photons scattered below it are dropped (default: the
    lowest output edge). max_interactions: a photon still alive after this many interactions
    is counted as lost. source_gamma: if given, photon energies are instead drawn from a power
    law N(E) ~ E^-source_gamma over the whole input range (n_in * n_per_bin photons in all;
    each is tallied in the input bin its energy falls in): a direct simulation of a power-law
    source, used to check the Green's function tables. Returns a :class:`TransportResult`
    whose ``escaped`` has a leading batch axis when ``n_batches > 1``.
    """
    t0 = time.perf_counter()
    dev = generator.device
    f64 = torch.float64
    med = medium.to(dev)
    e_in = grid.e_in_edges.to(dev, f64)
    e_out = grid.e_out_edges.to(dev, f64)
    cos_e = grid.cos_edges.to(dev, f64)
    n_in, n_out, n_inc, n_l = grid.n_in, grid.n_out, grid.n_inc, med.n_lines
    n_ch = n_out + n_l + 1
    e_floor = float(e_out[0]) if e_floor_keV is None else float(e_floor_keV)
    lo_med, hi_med = med.e_range_keV
    if float(e_in[0]) < lo_med or float(e_in[-1]) > hi_med or e_floor < lo_med:
        raise PopsynthError(
            f"tally grid {float(e_in[0]):.3g}-{float(e_in[-1]):.4g} keV (floor {e_floor:.3g}) is "
            f"outside the medium table {lo_med:.3g}-{hi_med:.4g} keV",
            "tabulate the medium over a wider energy range",
        )
    if n_per_bin < 1 or n_batches < 1 or max_active < 1:
        raise PopsynthError(
            f"n_per_bin={n_per_bin}, n_batches={n_batches}, max_active={max_active}",
            "inject at least one photon per input bin and batch",
        )
    n_per_bin = int(math.ceil(n_per_bin / n_batches)) * n_batches
    fold = bool(getattr(geometry, "fold_inclination", True))
    density = float(geometry.density)
    kn = med.scattering == "klein-nishina"
    from ..physics.crosssections import ME_C2_KEV, sample_kn_mu

    n_total = n_in * n_per_bin
    lne = torch.log(e_in)

    def inject(k0: int, m: int):
        k = torch.arange(k0, k0 + m, device=dev)
        batch = (k // n_in) % n_batches
        u = torch.rand((3, m), generator=generator, device=dev, dtype=f64)
        if source_gamma is None:
            b_in = k % n_in
            e = torch.exp(lne[b_in] + u[0] * (lne[b_in + 1] - lne[b_in]))
        else:
            if abs(source_gamma - 1.0) < 1e-12:
                e = torch.exp(lne[0] + u[0] * (lne[-1] - lne[0]))
            else:
                a = 1.0 - source_gamma
                lo_a, hi_a = e_in[0] ** a, e_in[-1] ** a
                e = (lo_a + u[0] * (hi_a - lo_a)) ** (1.0 / a)
            b_in = (torch.searchsorted(e_in, e, right=True) - 1).clamp(0, n_in - 1)
        injected.index_add_(0, b_in, torch.ones_like(e))
        return {
            "energy": e,
            "direction": _source_directions(geometry, u[1], u[2]),
            "pos": torch.zeros((m, 3), device=dev, dtype=f64),
            "weight": torch.ones(m, device=dev, dtype=f64),
            "line": torch.full((m,), -1, device=dev, dtype=torch.long),
            "order": torch.zeros(m, device=dev, dtype=torch.int32),
            "w_ref": torch.ones(m, device=dev, dtype=f64),  # roulette threshold = w_min * w_ref
            "bin_in": b_in,
            "batch": batch,
        }

    escaped = torch.zeros(n_batches * n_inc * n_ch * n_in, device=dev, dtype=f64)
    absorbed = torch.zeros(n_in, device=dev, dtype=f64)
    dropped = torch.zeros(n_in, device=dev, dtype=f64)
    lost = torch.zeros(n_in, device=dev, dtype=f64)
    roulette = torch.zeros(n_in, device=dev, dtype=f64)
    injected = torch.zeros(n_in, device=dev, dtype=f64)

    def tally_escape(w, st):
        d = st["direction"]
        c = d[:, 2].abs() if fold else d[:, 2]
        inc = torch.searchsorted(cos_e, c.contiguous(), right=True) - 1
        inc = torch.where(c >= cos_e[-1], torch.full_like(inc, n_inc - 1), inc)
        ok = (inc >= 0) & (inc < n_inc)
        ob = (torch.searchsorted(e_out, st["energy"].contiguous(), right=True) - 1).clamp(0, n_out - 1)
        ln_id = st["line"]
        ch = torch.where(
            st["order"] == 0, torch.full_like(ob, n_out + n_l), torch.where(ln_id >= 0, n_out + ln_id, ob)
        )
        flat = ((st["batch"] * n_inc + inc.clamp(0, n_inc - 1)) * n_ch + ch) * n_in + st["bin_in"]
        zero = torch.zeros_like(w)
        escaped.index_add_(0, flat, torch.where(ok, w, zero))
        lost.index_add_(0, st["bin_in"], torch.where(ok, zero, w))

    next_k = min(max_active, n_total)
    st = inject(0, next_k)
    steps = 0
    interactions = 0
    while st["energy"].numel() > 0:
        steps += 1
        energy, direction, pos, weight = st["energy"], st["direction"], st["pos"], st["weight"]
        bin_in, order = st["bin_in"], st["order"]
        m = energy.numel()
        sig, probs = med.lookup(energy)
        mu_lin = density * sig
        starts, lengths = geometry.segments(pos, direction)
        path = lengths.sum(dim=1)
        tau = mu_lin * path
        r = torch.rand((4, m), generator=generator, device=dev, dtype=f64)
        zero = torch.zeros_like(weight)
        if forced:
            p_int = -torch.expm1(-tau)
            tally_escape(weight * torch.exp(-tau), st)
            weight = weight * p_int
            s = -torch.log1p(-r[0] * p_int) / mu_lin
            s = torch.minimum(s, path * (1.0 - 1e-12))
            go = p_int > 0.0
        else:
            s = -torch.log1p(-r[0]) / mu_lin  # 1 - r in (0, 1]
            esc = s >= path
            tally_escape(torch.where(esc, weight, zero), st)
            go = ~esc
        s = torch.where(go, s, torch.zeros_like(s))
        t = advance_along_safe(starts, lengths, s, go)
        pos = pos + t.unsqueeze(1) * direction

        # interaction choice: 0 = Compton, 1..L = line, L + 1 = absorbed
        cum = torch.cumsum(probs, dim=1)
        if forced:
            keep = cum[:, -1]
            absorbed.index_add_(0, bin_in, torch.where(go, weight * (1.0 - keep), zero))
            weight = weight * keep
            x = r[1] * keep
        else:
            x = r[1]
        choice = (x.unsqueeze(1) >= cum).sum(dim=1)
        if forced:
            choice = choice.clamp_max(n_l)  # x < keep up to rounding
        is_c = go & (choice == 0)
        is_l = go & (choice >= 1) & (choice <= n_l)
        is_a = go & (choice > n_l)
        if not forced:
            absorbed.index_add_(0, bin_in, torch.where(is_a, weight, zero))
        interactions += int(go.sum())

        # Compton (or elastic test) scattering, on the photons that scatter only
        line = st["line"]
        ic = torch.nonzero(is_c).squeeze(1)
        if ic.numel() > 0:
            ec = energy[ic]
            if kn:
                mu_s = sample_kn_mu(ec, generator)
                energy[ic] = ec / (1.0 + (ec / ME_C2_KEV) * (1.0 - mu_s))
            else:
                mu_s = 2.0 * r[2, ic] - 1.0
            direction[ic] = rotate_directions(direction[ic], mu_s, _TWO_PI * r[3, ic])
            line[ic] = -1
        # fluorescence: isotropic, at the line energy
        il = torch.nonzero(is_l).squeeze(1)
        if il.numel() > 0:
            lid = choice[il] - 1
            energy[il] = med.line_energies_keV[lid]
            direction[il] = isotropic_directions(r[2, il], r[3, il])
            line[il] = lid
        # the roulette reference is the weight after the first interaction (so thin media,
        # whose photons all carry ~tau after the forced first collision, are not culled)
        w_ref = torch.where(go & (order == 0), weight, st["w_ref"])
        order = order + go.to(order.dtype)

        alive = go & ~is_a & (weight > 0.0)
        below = alive & (energy < e_floor)
        dropped.index_add_(0, bin_in, torch.where(below, weight, zero))
        alive = alive & ~below
        too_long = alive & (order >= max_interactions)
        lost.index_add_(0, bin_in, torch.where(too_long, weight, zero))
        alive = alive & ~too_long
        if forced:
            low = alive & (weight < w_min * w_ref)
            rr = torch.rand(m, generator=generator, device=dev, dtype=f64)
            survive = rr < roulette_survival
            new_w = torch.where(low, torch.where(survive, weight / roulette_survival, zero), weight)
            roulette.index_add_(0, bin_in, weight - new_w)
            weight = new_w
            alive = alive & (weight > 0.0)

        st = {
            "energy": energy, "direction": direction, "pos": pos, "weight": weight, "line": line,
            "order": order, "w_ref": w_ref, "bin_in": bin_in, "batch": st["batch"],
        }
        n_alive = int(alive.sum())
        if n_alive < compact_fraction * m:
            idx = torch.nonzero(alive).squeeze(1)
            st = {k: v[idx] for k, v in st.items()}
            n_new = min(max_active - n_alive, n_total - next_k)
            if n_new > 0:
                new = inject(next_k, n_new)
                next_k += n_new
                st = {k: torch.cat((st[k], new[k])) for k in st}
        else:
            # dead photons stay in the arrays with zero weight until the next compaction
            st["weight"] = torch.where(alive, weight, zero)

    esc = escaped.view(n_batches, n_inc, n_ch, n_in)
    return TransportResult(
        escaped=esc if n_batches > 1 else esc[0],
        absorbed=absorbed,
        dropped=dropped,
        lost=lost,
        roulette=roulette,
        injected=injected,
        n_steps=steps,
        n_interactions=interactions,
        wall_s=time.perf_counter() - t0,
        forced=forced,
        line_names=med.line_names,
    )


def advance_along_safe(starts, lengths, s, go):
    """:func:`~popsynth.mc.geometry.advance_along` with t = 0 for photons that do not move."""
    t = advance_along(starts, lengths, s)
    return torch.where(go, t, torch.zeros_like(t))
