"""The ARMOR optimiser: ``w_bar ≈ A · S · B`` with a 2:4 core ``S`` (docs/design.md §3).

All work happens in NoWag-normalised coordinates on the calibration-weighted proxy loss

    L = ||(A S B − w_bar) diag(γ)||² / ||w_bar diag(γ)||²,   γ_j = sqrt(h_j).

Because ``A`` and ``B`` are block diagonal, the loss splits into independent ``b x b``
tiles ``(p, q)``: ``A_p S_pq B_q``. Every step below is vectorised over all tiles, and over
a leading batch dimension ``E`` of independent same-shape problems (:func:`solve_batch`):
every tensor of the solver is ``[E, ...]``, and each problem keeps its own losses, step
size adaptation, early stopping and best iterate, so a batch gives each matrix what a solve
of its own would (same arithmetic per element; only reductions over a bigger tensor may
round differently).

One iteration (``continuous_step="exact"``, the default) is a round of block coordinate
descent in which **every step is an exact or safeguarded minimisation, so the loss never
increases**:

1. sparse-core step: for every 2:4 group the exact best support and values with the rest
   fixed (docs/design.md §3.2, the closed form over the 6 supports); several groups per tile are
   applied together, and a tile whose joint update is not at least as good as its single
   best group falls back to that group alone;
2. core values on the fixed mask: a few conjugate-gradient steps per tile;
3. ``A`` step: each block ``A_p`` solves its least-squares problem exactly (docs/design.md §3.4);
4. ``B`` step: likewise for each ``B_q`` (its columns decouple, so γ drops out).

``continuous_step="adam"`` follows the authors: one joint Adam step on (A, B, W') per
iteration, then the sparse step with one group per tile; the best iterate is kept.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from armor_export.prune import blockdiag
from armor_export.prune.masks import GROUP, SUPPORT_MASKS, SUPPORTS, mask_from_scores
from armor_export.prune.proxy import Normalized, normalize

log = logging.getLogger(__name__)


@dataclass
class SolverSettings:
    """Numerical settings of one ARMOR solve (a subset of the user-facing ArmorConfig)."""

    block_size: int = 64
    iterations: int = 200
    continuous_step: str = "exact"  # "exact" | "adam"
    lr: float = 1e-4
    cg_steps: int = 4
    groups_per_tile: int = 0  # initial number of groups per tile per step; 0 -> block_size // 4
    patience: int = 20
    tolerance: float = 1e-6
    compile: bool = False  # fuse the elementwise group maths with torch.compile
    weighting: str = "normalized"  # "normalized" (authors, docs/design.md §2.5) | "output" (§2.8)


@dataclass
class ArmorFactors:
    """Result of one solve, in original coordinates (normalisation scales folded in)."""

    a_blocks: torch.Tensor  # [d_out/b, b, b]  = diag(r) A
    core: torch.Tensor  # [d_out, d_in], zeros outside the mask
    mask: torch.Tensor  # [d_out, d_in] bool, 2:4 along d_in
    b_blocks: torch.Tensor  # [d_in/b, b, b]  = B diag(c)
    nowag_loss: float
    final_loss: float
    history: list[float] = field(default_factory=list)
    iterations: int = 0
    seconds: float = 0.0

    def dense(self) -> torch.Tensor:
        """The reconstructed dense weight ``A S B``."""
        return blockdiag.left_mul(self.a_blocks, blockdiag.right_mul(self.core, self.b_blocks))


class _Problem:
    """Fixed data of a batch of solves: targets ``[E, m, n]``, weights ``[E, n]``, tiles."""

    def __init__(self, w_bar: torch.Tensor, hdiag: torch.Tensor, block_size: int):
        self.w = w_bar
        self.e, self.m, self.n = w_bar.shape
        self.gamma = hdiag.to(w_bar.dtype).sqrt()[:, None, :]  # [E, 1, n]
        self.w_weighted = w_bar * self.gamma
        self.den = self.w_weighted.double().pow(2).sum((-1, -2))  # [E]
        self.b = block_size
        self.p, self.q = self.m // block_size, self.n // block_size
        self.gamma_blocks = self.gamma.reshape(self.e, self.q, 1, block_size)

    def error(self, a: torch.Tensor, s: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """Weighted error ``(A S B − w_bar) diag(γ)``."""
        return (blockdiag.left_mul(a, blockdiag.right_mul(s, b)) - self.w) * self.gamma

    def losses(self, err: torch.Tensor) -> torch.Tensor:
        """Proxy loss of every problem, ``[E]`` float64."""
        return err.double().pow(2).sum((-1, -2)) / self.den

    def loss(self, err: torch.Tensor) -> float:
        """The loss of a batch of one."""
        return float(self.losses(err)[0])

    def tile_losses(self, err: torch.Tensor) -> torch.Tensor:
        return blockdiag.to_tiles(err, self.b).pow(2).sum((-1, -2))  # [E, P, Q]


# ---------------------------------------------------------------------------------------
# sparse-core (mask) step


@dataclass
class _GroupProposal:
    """Per group: the best 2:4 values and mask (matrix layout) and the loss decrease."""

    values: torch.Tensor  # [E, d_out, d_in], each group's best values, zeros off-support
    mask: torch.Tensor  # [E, d_out, d_in] bool, each group's best support
    gain: torch.Tensor  # [E, P, Q, b, b/4]  >= 0 where an update helps


def group_candidates(
    u: torch.Tensor, g4: torch.Tensor, alpha: torch.Tensor, s_g: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Best support, values and gain of every group (pure elementwise maths).

    Layout ``[4, E, P, Q, b, b/4]`` (position in the group first) for ``u`` and ``s_g``;
    ``g4`` is ``[4, 4, E, 1, Q, 1, b/4]`` and ``alpha`` ``[E, P, 1, b, 1]``. Returns
    ``(values [4, ...], best support index [...], gain [...])``.
    """
    tiny = torch.finfo(u.dtype).tiny
    safe_alpha = alpha.clamp_min(tiny)
    best_cost = torch.full_like(u[0], float("inf"))
    best = torch.zeros_like(u[0], dtype=torch.long)
    sols = []
    # the 6 supports {i, j}: 2x2 ridge-regularised solves in closed form, elementwise;
    # a running minimum (argmin over a stacked axis is slow on CPU)
    for idx, (i, j) in enumerate(_PAIRS):
        gii, gjj, gij = g4[i, i], g4[j, j], g4[i, j]
        ridge = 1e-7 * (gii + gjj) + tiny
        gii, gjj = gii + ridge, gjj + ridge
        scale = (gii * gjj - gij * gij) * safe_alpha
        ui, uj = u[i], u[j]
        vi = (gij * uj - gjj * ui) / scale  # v = −G⁻¹u/α
        vj = (gij * ui - gii * uj) / scale
        cost = ui * vi + uj * vj  # = −uᵀG⁻¹u/α
        hit = cost < best_cost
        best_cost = torch.where(hit, cost, best_cost)
        best = torch.where(hit, idx, best)
        sols.append((vi, vj))
    del vi, vj, ui, uj, cost, hit, scale, best_cost
    vals = [torch.zeros_like(u[0]) for _ in range(GROUP)]
    for idx, (i, j) in enumerate(_PAIRS):
        vi, vj = sols[idx]
        sols[idx] = None  # each candidate pair is freed once merged (3 matrices in all)
        chosen = best == idx
        vals[i] = torch.where(chosen, vi, vals[i])
        vals[j] = torch.where(chosen, vj, vals[j])
        del vi, vj, chosen
    values = torch.stack(vals)
    del vals

    def gmul(x: torch.Tensor) -> torch.Tensor:  # G x for every group
        return torch.stack([sum(g4[i, j] * x[j] for j in range(GROUP)) for i in range(GROUP)])

    def quad(x: torch.Tensor) -> torch.Tensor:  # 2 uᵀx + α xᵀ G x, the group's own loss share
        return ((2 * u + alpha * gmul(x)) * x).sum(0)

    gain = quad(s_g) - quad(values)
    gain = torch.where(alpha > torch.finfo(u.dtype).eps, gain, torch.zeros_like(gain))
    return values, best, gain


_PAIRS = [tuple(p) for p in SUPPORTS.tolist()]
_COMPILED: dict[str, object] = {}


def _candidates(compiled: bool, *args: torch.Tensor):
    """``group_candidates``, fused into one loop by torch.compile when asked (~9x on CPU).

    If compilation is impossible here (no C++ compiler, unsupported platform) the eager
    function runs instead, with one warning.
    """
    if compiled and _COMPILED.get("broken") is None:
        if "fn" not in _COMPILED:
            _COMPILED["fn"] = torch.compile(group_candidates, dynamic=True)
        try:
            return _COMPILED["fn"](*args)
        except Exception as exc:  # inductor raises many types; any means "not here"
            _COMPILED["broken"] = exc
            log.warning("torch.compile unavailable (%s); ARMOR runs eager", type(exc).__name__)
    return group_candidates(*args)


def propose_groups(
    prob: _Problem,
    a: torch.Tensor,
    s: torch.Tensor,
    b: torch.Tensor,
    err: torch.Tensor,
    compiled: bool = False,
) -> _GroupProposal:
    """Exact minimiser of the tile loss over each 2:4 group, everything else fixed.

    For group g (row r, columns c) of tile (p, q), with ``a = A_p[:, r]``,
    ``Bg = (B_q diag γ_q)[c, :]`` and ``G = Bg Bgᵀ``, the tile loss as a function of the
    group's values v is ``const + 2 uᵀv + α vᵀ G v`` with ``α = ||a||²`` and
    ``u = (A_pᵀ E B̃_qᵀ)[r, c] − α G s_g`` (E the current weighted error, s_g the current
    values). Each of the 6 supports is a 2x2 least-squares problem (docs/design.md §3.2).
    """
    bs, ng, e = prob.b, prob.b // GROUP, prob.e
    bt = b * prob.gamma_blocks  # B̃_q = B_q diag(γ_q), [E, Q, b, b]
    # A_pᵀ E B̃_qᵀ for every tile, as block-diagonal products of the whole matrix
    v = blockdiag.right_mul(blockdiag.left_mul(a.transpose(-1, -2), err), bt.transpose(-1, -2))
    alpha = a.pow(2).sum(-2)[:, :, None, :, None]  # [E, P, 1, b, 1]
    gram = bt @ bt.transpose(-1, -2)  # [E, Q, b, b]
    g4 = torch.diagonal(gram.reshape(e, prob.q, ng, GROUP, ng, GROUP), dim1=2, dim2=4)
    g4 = g4.permute(2, 3, 0, 1, 4).reshape(GROUP, GROUP, e, 1, prob.q, 1, ng).contiguous()

    def grouped(x: torch.Tensor) -> torch.Tensor:  # [E, d_out, d_in] -> [4, E, P, Q, b, b/4]
        return x.view(e, prob.p, bs, prob.q, ng, GROUP).permute(5, 0, 1, 3, 2, 4).contiguous()

    s_g = grouped(s)
    # u = V − α G s_g
    gs = torch.stack([sum(g4[i, j] * s_g[j] for j in range(GROUP)) for i in range(GROUP)])
    gs.mul_(alpha)  # = alpha * gs, in place
    u = grouped(v)
    del v
    u.sub_(gs)  # = grouped(v) − α G s_g, in place: two matrices fewer alive in the step
    del gs
    values, best, gain = _candidates(compiled, u, g4, alpha, s_g)
    del u, s_g
    # back to matrix layout [E, P, b, Q, b/4, 4] -> [E, d_out, d_in]
    shape = (e, prob.m, prob.n)
    values = values.permute(1, 2, 4, 3, 5, 0).reshape(shape)
    new_mask = SUPPORT_MASKS.to(best.device)[best.permute(0, 1, 3, 2, 4)].reshape(shape)
    return _GroupProposal(values, new_mask, gain)


def _write_groups(
    s: torch.Tensor, mask: torch.Tensor, prop: _GroupProposal, select: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Copies of (s, mask) with the selected groups ([E, P, Q, b, b/4] bool) replaced."""
    sel = select.permute(0, 1, 3, 2, 4).repeat_interleave(GROUP, -1).reshape(s.shape)
    return torch.where(sel, prop.values, s), torch.where(sel, prop.mask, mask)


def sparse_step(
    prob: _Problem,
    a: torch.Tensor,
    s: torch.Tensor,
    mask: torch.Tensor,
    b: torch.Tensor,
    err: torch.Tensor,
    groups_per_tile: int | list[int],
    compiled: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, list[float]]:
    """One monotone sparse-core step. Returns (s, mask, err, per problem the fraction of
    tiles taking the multi-group update).

    In each tile the best group of each row is a candidate; the ``groups_per_tile`` rows
    with the largest gains are updated together (one count, or one per problem). Groups of
    one tile interact through ``A_pᵀA_p`` and ``B̃ B̃ᵀ``, so the joint update is checked: a
    tile keeps it only when it beats the single best group, else it takes that group alone
    (exact, never worse).
    """
    bs = prob.b
    per_problem = (
        [groups_per_tile] * prob.e if isinstance(groups_per_tile, int) else groups_per_tile
    )
    ks = [max(1, min(k, bs)) for k in per_problem]
    prop = propose_groups(prob, a, s, b, err, compiled)
    row_gain, row_group = prop.gain.max(-1)  # [E, P, Q, b]
    # the k best rows, ties to the lower row: a stable sort, so the first k of any longer
    # prefix are the same rows (topk may break ties differently for different k)
    order = torch.sort(row_gain, dim=-1, descending=True, stable=True)
    top_gain, top_rows = order.values[..., : max(ks)], order.indices[..., : max(ks)]  # [E,P,Q,k]
    if min(ks) < max(ks):  # problems moving fewer groups ignore the rest of their top k
        rank = torch.arange(max(ks), device=top_gain.device)
        within = rank < torch.tensor(ks, device=top_gain.device)[:, None, None, None]
        top_gain = torch.where(within, top_gain, torch.zeros_like(top_gain))
    ng = bs // GROUP
    one_hot_group = torch.nn.functional.one_hot(row_group, ng).bool()  # [E, P, Q, b, b/4]
    chosen_rows = torch.zeros_like(row_gain, dtype=torch.bool).scatter_(-1, top_rows, top_gain > 0)
    multi_sel = one_hot_group & chosen_rows[..., None]

    best_row = top_rows[..., :1]  # [E, P, Q, 1]
    single_rows = torch.zeros_like(chosen_rows).scatter_(-1, best_row, top_gain[..., :1] > 0)
    single_sel = one_hot_group & single_rows[..., None]
    single_gain = top_gain[..., 0].clamp_min(0)

    old_tiles = prob.tile_losses(err)
    if max(ks) > 1:
        s_multi, m_multi = _write_groups(s, mask, prop, multi_sel)
        err_multi = prob.error(a, s_multi, b)
        multi_ok = prob.tile_losses(err_multi) <= old_tiles - single_gain
        del s_multi, m_multi, err_multi
        multi_ok &= torch.tensor([k > 1 for k in ks], device=old_tiles.device)[:, None, None]
    else:
        multi_ok = torch.zeros_like(old_tiles, dtype=torch.bool)
    select = torch.where(multi_ok[..., None, None], multi_sel, single_sel)
    s_new, m_new = _write_groups(s, mask, prop, select)
    del prop, select, multi_sel, single_sel
    err_new = prob.error(a, s_new, b)
    # exact arithmetic guarantees no increase; guard against round-off in low precision
    worse = prob.tile_losses(err_new) > old_tiles
    if bool(worse.any()):
        keep = worse.repeat_interleave(bs, -2).repeat_interleave(bs, -1)
        s_new = torch.where(keep, s, s_new)
        m_new = torch.where(keep, mask, m_new)
        err_new = prob.error(a, s_new, b)
    active = (single_gain > 0).flatten(1)
    taken = (multi_ok.flatten(1) & active).sum(1).tolist()
    counts = active.sum(1).tolist()
    fracs = [t / c if c else 1.0 for t, c in zip(taken, counts, strict=True)]
    return s_new, m_new, err_new, fracs


# ---------------------------------------------------------------------------------------
# continuous steps


def values_step(
    prob: _Problem,
    a: torch.Tensor,
    s: torch.Tensor,
    mask: torch.Tensor,
    b: torch.Tensor,
    err: torch.Tensor,
    steps: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Conjugate gradient on the kept values of every tile (mask fixed); monotone.

    Works in matrix layout: the tile products ``A_pᵀA_p X G_q`` are block-diagonal
    products of the whole matrix, and per-tile scalars broadcast over a ``[P, b, Q, b]``
    view, so nothing is copied into tiles.
    """
    if steps <= 0:
        return s, err
    bt = b * prob.gamma_blocks
    ata = a.transpose(-1, -2) @ a  # [E, P, b, b]
    gram = bt @ bt.transpose(-1, -2)  # [E, Q, b, b]
    shape5 = (prob.e, prob.p, prob.b, prob.q, prob.b)

    def tile_dot(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:  # [E, P, 1, Q, 1]
        return (x * y).view(shape5).sum((2, 4), keepdim=True)

    def per_tile(scalars: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return (x.view(shape5) * scalars).view(s.shape)

    # the updates are in place (same arithmetic, fewer matrix-sized temporaries alive)
    x = s.clone()
    r = -blockdiag.right_mul(blockdiag.left_mul(a.transpose(-1, -2), err), bt.transpose(-1, -2))
    r.mul_(mask)  # a bool factor promotes to exactly 1.0 / 0.0: no float copy of the mask
    p = r.clone()
    rr = tile_dot(r, r)
    tiny = torch.finfo(s.dtype).tiny
    for _ in range(steps):
        hp = blockdiag.right_mul(blockdiag.left_mul(ata, p), gram).mul_(mask)
        php = tile_dot(p, hp)
        step = torch.where(php > tiny, rr / php.clamp_min(tiny), torch.zeros_like(php))
        x += per_tile(step, p)
        r -= per_tile(step, hp)
        rr_new = tile_dot(r, r)
        beta = torch.where(rr > tiny, rr_new / rr.clamp_min(tiny), torch.zeros_like(rr))
        p.view(shape5).mul_(beta)
        p += r  # = r + beta p
        rr = rr_new
    del r, p, hp  # the CG state: three matrices not needed for the error below
    err_new = prob.error(a, x, b)
    # CG decreases a convex quadratic monotonically; guard against round-off anyway
    worse = prob.tile_losses(err_new) > prob.tile_losses(err)
    if bool(worse.any()):
        keep = worse.repeat_interleave(prob.b, -2).repeat_interleave(prob.b, -1)
        x = torch.where(keep, s, x)
        err_new = prob.error(a, x, b)
    return x, err_new


def _ridge_solve(gram: torch.Tensor, rhs: torch.Tensor) -> torch.Tensor:
    diag_mean = torch.diagonal(gram, dim1=-2, dim2=-1).mean(-1).clamp_min(1e-30)
    eye = torch.eye(gram.shape[-1], dtype=gram.dtype, device=gram.device)
    return torch.linalg.solve(gram + 1e-7 * diag_mean[..., None, None] * eye, rhs)


def a_step(
    prob: _Problem, a: torch.Tensor, s: torch.Tensor, b: torch.Tensor, err: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact least squares for every block ``A_p`` (rows decouple); monotone per block."""
    z = blockdiag.right_mul(s, b) * prob.gamma  # S B diag(γ)
    zp = z.reshape(prob.e, prob.p, prob.b, prob.n)
    wp = prob.w_weighted.reshape(prob.e, prob.p, prob.b, prob.n)
    gram = zp @ zp.transpose(-1, -2)
    cross = wp @ zp.transpose(-1, -2)  # [E, P, b, b]
    a_new = _ridge_solve(gram, cross.transpose(-1, -2)).transpose(-1, -2)
    err_new = blockdiag.left_mul(a_new, z) - prob.w_weighted
    old = err.reshape(prob.e, prob.p, -1).pow(2).sum(-1)
    new = err_new.reshape(prob.e, prob.p, -1).pow(2).sum(-1)
    keep_new = (new <= old) & torch.isfinite(new)  # [E, P]
    a_new = torch.where(keep_new[..., None, None], a_new, a)
    rows = keep_new.repeat_interleave(prob.b, -1)[..., None]
    return a_new, torch.where(rows, err_new, err)


def b_step(
    prob: _Problem, a: torch.Tensor, s: torch.Tensor, b: torch.Tensor, err: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact least squares for every block ``B_q`` (columns decouple, γ drops out)."""
    y = blockdiag.left_mul(a, s)  # A S
    split = (prob.e, prob.m, prob.q, prob.b)
    yq = y.reshape(split).transpose(1, 2)  # [E, Q, m, b]
    wq = prob.w.reshape(split).transpose(1, 2)
    gram = yq.transpose(-1, -2) @ yq
    cross = yq.transpose(-1, -2) @ wq
    b_new = _ridge_solve(gram, cross)
    err_new = (blockdiag.right_mul(y, b_new) - prob.w) * prob.gamma
    old = err.reshape(split).pow(2).sum((1, 3))
    new = err_new.reshape(split).pow(2).sum((1, 3))
    keep_new = (new <= old) & torch.isfinite(new)  # [E, Q]
    b_new = torch.where(keep_new[..., None, None], b_new, b)
    cols = keep_new.repeat_interleave(prob.b, -1)[:, None, :]
    return b_new, torch.where(cols, err_new, err)


# ---------------------------------------------------------------------------------------
# driver


def nowag_p_mask(w_bar: torch.Tensor, hdiag: torch.Tensor) -> torch.Tensor:
    """NoWag-P: keep the top-2 of ``w_bar² · h`` in each group of 4 (docs/design.md §2.7)."""
    return mask_from_scores(w_bar.pow(2) * hdiag)


def solve(
    weight: torch.Tensor,
    hdiag: torch.Tensor,
    settings: SolverSettings,
    progress: Callable[[int, float], None] | None = None,
) -> ArmorFactors:
    """Run ARMOR on one weight matrix ``[d_out, d_in]`` with input statistics ``hdiag``."""
    tick = None if progress is None else (lambda it, losses: progress(it, losses[0]))
    return solve_batch([weight], [hdiag], settings, tick)[0]


def solve_batch(
    weights: list[torch.Tensor],
    hdiags: list[torch.Tensor],
    settings: SolverSettings,
    progress: Callable[[int, list[float]], None] | None = None,
) -> list[ArmorFactors]:
    """ARMOR on several same-shape matrices at once, as one batched problem.

    Each matrix gets the result of its own solve: its own adaptive group count, early
    stopping (a finished matrix rides along unchanged) and best iterate. On a GPU one
    batched kernel replaces one launch per small matrix; ``progress(iteration, losses)``.
    """
    if not weights or len(weights) != len(hdiags):
        raise ValueError("solve_batch needs one hdiag per weight, and at least one weight")
    if len({tuple(w.shape) for w in weights}) != 1:
        raise ValueError(
            f"solve_batch needs same-shape weights, got {[tuple(w.shape) for w in weights]}"
        )
    start = time.perf_counter()
    # one matrix: a view, not a copy (the weight is the largest input of the solve)
    weight = torch.stack(weights) if len(weights) > 1 else weights[0].unsqueeze(0)
    hdiag = torch.stack(hdiags)
    e = weight.shape[0]
    norm = normalize(weight)
    bs = settings.block_size
    mask = nowag_p_mask(norm.w_bar, hdiag[:, None, :])
    s = norm.w_bar * mask
    m, n = weight.shape[-2:]
    a = blockdiag.identity(e * (m // bs), bs, weight.dtype, weight.device).view(e, -1, bs, bs)
    b = blockdiag.identity(e * (n // bs), bs, weight.dtype, weight.device).view(e, -1, bs, bs)
    # kept only where it is scored again (it would pin the starting core for the whole run)
    nowag_state = (a, s, b) if settings.weighting == "output" else None
    if settings.weighting == "normalized":  # the authors' loss (docs/design.md §2.5)
        prob = _Problem(norm.w_bar, hdiag, bs)
    elif settings.weighting == "output":
        # The layer-output error ||(Â S B̂ − W) diag(√h)||² with Â = diag(r) A: the same
        # problem with target diag(r) w_bar, column weights c²h and A starting at diag(r).
        row, col = norm.row_scale, norm.col_scale
        prob = _Problem(norm.w_bar * row[..., None], hdiag * col**2, bs)
        a = a * row.reshape(e, -1, bs, 1)
    else:
        raise ValueError(f"unknown weighting {settings.weighting!r}")
    err = prob.error(a, s, b)
    start_losses = prob.losses(err).tolist()
    histories = [[x] for x in start_losses]
    best_loss = list(start_losses)
    best = [a, s, mask, b]
    if settings.continuous_step == "exact":
        step_fn = _ExactIteration(settings, e)
    elif settings.continuous_step == "adam":
        step_fn = _AdamIteration(settings, a, s, b)
    else:
        raise ValueError(f"unknown continuous_step {settings.continuous_step!r}")
    stale = [0] * e
    done = [False] * e
    stopped_at = [settings.iterations] * e
    for it in range(1, settings.iterations + 1):
        # the step takes the state over (this frame keeps no reference to it), so the
        # previous iterate is freed as the step replaces it, not held beside the new one
        state = [a, s, mask, b, err]
        del a, s, mask, b, err
        a, s, mask, b, err = step_fn(prob, state)
        losses = prob.losses(err).tolist()
        improved = [False] * e
        for i, loss in enumerate(losses):
            if done[i]:
                continue
            histories[i].append(loss)
            if not math.isfinite(loss):
                log.warning("non-finite proxy loss at iteration %d; keeping the best iterate", it)
                done[i], stopped_at[i] = True, it
                continue
            stale[i] = 0 if loss < best_loss[i] * (1 - settings.tolerance) else stale[i] + 1
            if loss < best_loss[i]:
                best_loss[i], improved[i] = loss, True
            if stale[i] >= settings.patience:
                done[i], stopped_at[i] = True, it
        if all(improved):  # the new iterate is the best of every problem: no copy
            best = [a, s, mask, b]
        elif any(improved):
            take = torch.tensor(improved, device=weight.device)
            best = [
                _where_problem(take, new, old)
                for new, old in zip((a, s, mask, b), best, strict=True)
            ]
        if progress is not None:
            progress(it, losses)
        if all(done):
            break
    a, s, mask, b = best
    if settings.weighting == "output":
        a = a / norm.row_scale.reshape(e, -1, bs, 1)  # back to normalised coordinates
        spec = _Problem(norm.w_bar, hdiag, bs)
        nowags = spec.losses(spec.error(*nowag_state)).tolist()
        finals = spec.losses(spec.error(a, s, b)).tolist()
    else:
        nowags, finals = start_losses, best_loss
    seconds = (time.perf_counter() - start) / e
    return [
        _fold(
            norm,
            i,
            a[i],
            s[i],
            mask[i],
            b[i],
            nowags[i],
            finals[i],
            histories[i],
            stopped_at[i],
            seconds,
        )
        for i in range(e)
    ]


def _where_problem(take: torch.Tensor, new: torch.Tensor, old: torch.Tensor) -> torch.Tensor:
    """Per problem (leading dim), ``new`` where ``take`` else ``old``."""
    return torch.where(take.view(-1, *([1] * (new.dim() - 1))), new, old)


def _fold(norm: Normalized, i, a, s, mask, b, nowag, loss, history, iters, secs) -> ArmorFactors:
    """Fold problem ``i``'s NoWag scales into its wrappers: ``(diag(r) A) S (B diag(c))``.

    ``nowag`` and ``loss`` are always the normalised proxy loss (docs/design.md §2.5);
    ``history`` is the loss actually optimised (they coincide for ``weighting="normalized"``).
    """
    bs = a.shape[-1]
    a_out = a * norm.row_scale[i].reshape(-1, bs, 1)
    b_out = b * norm.col_scale[i].reshape(-1, 1, bs)
    return ArmorFactors(a_out, s * mask, mask, b_out, nowag, loss, history, iters, secs)


class _ExactIteration:
    def __init__(self, settings: SolverSettings, problems: int):
        self.settings = settings
        self.ks = [settings.groups_per_tile or max(1, settings.block_size // GROUP)] * problems

    def __call__(self, prob, state: list[torch.Tensor]):
        a, s, mask, b, err = state
        state.clear()
        s, mask, err, fracs = sparse_step(prob, a, s, mask, b, err, self.ks, self.settings.compile)
        # adapt, per problem, how many groups per tile are moved together
        for i, frac in enumerate(fracs):
            if frac < 0.5:
                self.ks[i] = max(1, self.ks[i] // 2)
            elif frac > 0.9:
                self.ks[i] = min(prob.b, self.ks[i] * 2)
        s, err = values_step(prob, a, s, mask, b, err, self.settings.cg_steps)
        a, err = a_step(prob, a, s, b, err)
        b, err = b_step(prob, a, s, b, err)
        return a, s, mask, b, err


class _AdamIteration:
    """The authors' continuous step: one joint Adam step on (A, B, W'), then one group/tile."""

    def __init__(self, settings: SolverSettings, a, s, b):
        self.params = [t.clone().requires_grad_(True) for t in (a, s, b)]
        self.opt = torch.optim.Adam(self.params, lr=settings.lr)
        self.k = settings.groups_per_tile or 1
        self.compile = settings.compile

    def __call__(self, prob, state: list[torch.Tensor]):
        a, s, mask, b, err = state
        state.clear()
        pa, pw, pb = self.params
        self.opt.zero_grad(set_to_none=True)
        e = prob.error(pa, pw * mask, pb)
        # the problems are independent: the sum of their losses has each one's gradient
        (e.pow(2).sum((-1, -2)) / prob.den.to(e.dtype)).sum().backward()
        self.opt.step()
        with torch.no_grad():
            a, b = pa.detach().clone(), pb.detach().clone()
            s = pw.detach() * mask
            err = prob.error(a, s, b)
            s, mask, err, _ = sparse_step(prob, a, s, mask, b, err, self.k, self.compile)
            pw.copy_(torch.where(mask, s, pw))
        return a, s, mask, b, err
