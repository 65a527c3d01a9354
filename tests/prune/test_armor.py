"""ARMOR optimiser: the closed-form group step, monotonicity, and the NoWag-P guarantee."""

import itertools

import pytest
import torch

from armor_export.prune import armor, blockdiag
from armor_export.prune.masks import is_two_four
from armor_export.prune.proxy import normalize, proxy_loss

B = 8  # block size for small problems


def _random_state(m=16, n=24, seed=0, dtype=torch.float64):
    """A batch of one problem with non-trivial A, B (so groups interact) and a 2:4 core."""
    gen = torch.Generator().manual_seed(seed)
    w = torch.randn(m, n, generator=gen, dtype=dtype)
    h = torch.rand(n, generator=gen, dtype=dtype) * 3 + 0.05
    norm = normalize(w)
    prob = armor._Problem(norm.w_bar[None], h[None], B)
    a = blockdiag.identity(m // B, B, dtype) + 0.3 * torch.randn(
        m // B, B, B, generator=gen, dtype=dtype
    )
    b = blockdiag.identity(n // B, B, dtype) + 0.3 * torch.randn(
        n // B, B, B, generator=gen, dtype=dtype
    )
    mask = armor.nowag_p_mask(norm.w_bar, h)
    s = norm.w_bar * mask
    return prob, a[None], s[None], mask[None], b[None]


def _brute_force_group(prob, a, s, b, p, q, row, group):
    """Best (support, values, tile loss) for one group by least squares over all 6 supports."""
    a_p = a[0, p]
    bt = (b * prob.gamma_blocks)[0, q]
    w_t = blockdiag.to_tiles(prob.w_weighted, B)[0, p, q]
    s_t = blockdiag.to_tiles(s, B)[0, p, q].clone()
    cols = list(range(4 * group, 4 * group + 4))
    s_t[row, cols] = 0
    e0 = a_p @ s_t @ bt - w_t
    best = None
    for support in itertools.combinations(range(4), 2):
        basis = torch.stack(
            [(a_p[:, row : row + 1] @ bt[cols[i] : cols[i] + 1, :]).reshape(-1) for i in support],
            1,
        )
        sol = torch.linalg.lstsq(basis, -e0.reshape(-1, 1)).solution.reshape(-1)
        loss = float((e0.reshape(-1) + basis @ sol).pow(2).sum())
        if best is None or loss < best[2]:
            values = torch.zeros(4, dtype=s.dtype)
            values[list(support)] = sol
            best = (support, values, loss)
    return best


def test_group_step_equals_brute_force_over_all_six_supports():
    prob, a, s, mask, b = _random_state()
    err = prob.error(a, s, b)
    prop = armor.propose_groups(prob, a, s, b, err)
    tile_losses = prob.tile_losses(err)
    for p, q, row, group in [(0, 0, 0, 0), (1, 2, 5, 1), (0, 1, 7, 0), (1, 1, 3, 1)]:
        support, values, loss = _brute_force_group(prob, a, s, b, p, q, row, group)
        r, c = p * B + row, q * B + 4 * group
        got = prop.values[0, r, c : c + 4]
        assert torch.allclose(got, values, atol=1e-6, rtol=1e-5)
        assert prop.mask[0, r, c : c + 4].nonzero().flatten().tolist() == list(support)
        # predicted gain equals the true decrease of the tile loss
        assert float(prop.gain[0, p, q, row, group]) == pytest.approx(
            float(tile_losses[0, p, q]) - loss, rel=1e-6, abs=1e-9
        )


@pytest.mark.parametrize("groups_per_tile", [1, 2, 8])
def test_sparse_step_never_increases_the_loss(groups_per_tile):
    prob, a, s, mask, b = _random_state(seed=3)
    err = prob.error(a, s, b)
    losses = [prob.loss(err)]
    for _ in range(15):
        s, mask, err, _ = armor.sparse_step(prob, a, s, mask, b, err, groups_per_tile)
        assert is_two_four(mask)
        assert torch.equal(s, s * mask)
        losses.append(prob.loss(err))
    assert all(later <= earlier for earlier, later in zip(losses, losses[1:], strict=False))
    assert losses[-1] < losses[0]
    assert losses[-1] == pytest.approx(prob.loss(prob.error(a, s, b)), rel=1e-9)


def test_continuous_steps_never_increase_the_loss():
    prob, a, s, mask, b = _random_state(seed=5)
    err = prob.error(a, s, b)
    before = prob.loss(err)
    s, err = armor.values_step(prob, a, s, mask, b, err, steps=5)
    after_values = prob.loss(err)
    a, err = armor.a_step(prob, a, s, b, err)
    after_a = prob.loss(err)
    b, err = armor.b_step(prob, a, s, b, err)
    after_b = prob.loss(err)
    assert before >= after_values >= after_a >= after_b
    assert torch.equal(s, s * mask)
    assert after_b == pytest.approx(prob.loss(prob.error(a, s, b)), rel=1e-9)


def _problem(seed=0, m=64, n=96):
    gen = torch.Generator().manual_seed(seed)
    w = torch.randn(m, n, generator=gen) * (torch.rand(n, generator=gen) + 0.2)
    h = torch.rand(n, generator=gen).pow(2) * 4 + 0.01
    return w, h


@pytest.mark.parametrize("step", ["exact", "adam"])
def test_final_loss_at_or_below_nowag_p(step):
    w, h = _problem()
    settings = armor.SolverSettings(block_size=16, iterations=25, continuous_step=step)
    res = armor.solve(w, h, settings)
    assert res.final_loss <= res.nowag_loss
    assert is_two_four(res.mask)
    # the reported loss is the loss of the returned (scale-folded) factors
    norm = normalize(w)
    approx_bar = res.dense() / norm.row_scale[:, None] / norm.col_scale
    assert proxy_loss(approx_bar, norm.w_bar, h) == pytest.approx(res.final_loss, rel=1e-3)
    # starting point is exactly NoWag-P
    nowag = norm.w_bar * armor.nowag_p_mask(norm.w_bar, h)
    assert res.nowag_loss == pytest.approx(proxy_loss(nowag, norm.w_bar, h), rel=1e-5)


def test_exact_steps_improve_substantially_over_nowag():
    w, h = _problem(seed=1)
    res = armor.solve(w, h, armor.SolverSettings(block_size=16, iterations=30))
    assert res.final_loss < 0.8 * res.nowag_loss
    assert all(b <= a for a, b in zip(res.history, res.history[1:], strict=False))


def test_same_inputs_give_same_masks():
    w, h = _problem(seed=2)
    settings = armor.SolverSettings(block_size=16, iterations=10)
    r1, r2 = armor.solve(w, h, settings), armor.solve(w, h, settings)
    assert torch.equal(r1.mask, r2.mask)
    assert torch.equal(r1.core, r2.core)
    assert torch.equal(r1.a_blocks, r2.a_blocks)


def test_compiled_group_maths_match_eager():
    prob, a, s, mask, b = _random_state(seed=7, dtype=torch.float32)
    err = prob.error(a, s, b)
    eager = armor.propose_groups(prob, a, s, b, err, compiled=False)
    fused = armor.propose_groups(prob, a, s, b, err, compiled=True)
    assert torch.equal(eager.mask, fused.mask)
    assert torch.allclose(eager.values, fused.values, rtol=1e-4, atol=1e-5)
    assert torch.allclose(eager.gain, fused.gain, rtol=1e-3, atol=1e-6)


def test_output_weighting_minimises_the_layer_output_error():
    w, h = _problem(seed=4)
    w = w * (torch.rand(w.shape[0], 1, generator=torch.Generator().manual_seed(9)) + 0.3)

    def output_error(res):
        d = h.sqrt()
        return float(((res.dense() - w) * d).pow(2).sum() / (w * d).pow(2).sum())

    base = armor.SolverSettings(block_size=16, iterations=20)
    normalized = armor.solve(w, h, base)
    output = armor.solve(
        w, h, armor.SolverSettings(block_size=16, iterations=20, weighting="output")
    )
    assert output_error(output) < output_error(normalized)
    # its history is the output error it optimised, starting from the NoWag-P mask
    assert output.history[-1] == pytest.approx(output_error(output), rel=1e-3)
    assert all(b <= a for a, b in zip(output.history, output.history[1:], strict=False))
    # reported losses stay in the normalised metric (docs/design.md §2.5), same NoWag-P start
    assert output.nowag_loss == pytest.approx(normalized.nowag_loss, rel=1e-6)
    assert output.final_loss < output.nowag_loss


@pytest.mark.parametrize(
    ("step", "weighting"), [("exact", "normalized"), ("adam", "normalized"), ("exact", "output")]
)
def test_a_batch_gives_every_matrix_its_own_solve(step, weighting):
    problems = [_problem(seed=s) for s in range(4)]
    # a loose tolerance, so the matrices stop early at different iterations
    settings = armor.SolverSettings(
        block_size=16,
        iterations=60,
        continuous_step=step,
        weighting=weighting,
        patience=2,
        tolerance=0.03,
    )
    singles = [armor.solve(w, h, settings) for w, h in problems]
    batch = armor.solve_batch([w for w, _ in problems], [h for _, h in problems], settings)
    assert len(batch) == len(singles)
    for one, many in zip(singles, batch, strict=True):
        assert torch.equal(one.mask, many.mask)
        torch.testing.assert_close(many.core, one.core, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(many.a_blocks, one.a_blocks, rtol=1e-5, atol=1e-6)
        assert many.iterations == one.iterations
        assert many.history == pytest.approx(one.history, rel=1e-6)
        assert many.final_loss <= many.nowag_loss
    if step == "exact":
        assert len({r.iterations for r in batch}) > 1  # early stopping really was per matrix


def test_solve_batch_rejects_mixed_shapes():
    (w1, h1), (w2, h2) = _problem(0), _problem(1, m=32)
    settings = armor.SolverSettings(block_size=16, iterations=2)
    with pytest.raises(ValueError, match="same-shape"):
        armor.solve_batch([w1, w2], [h1, h2], settings)


def test_a_batch_matches_singles_over_a_long_run():
    """400 iterations: the problems' group counts drift apart (16 vs 8 here), so the batch
    takes the top rows of a longer prefix; ties must still pick the same rows."""
    gen = torch.Generator().manual_seed(0)
    weights, hdiags = [], []
    for _ in range(4):
        weights.append(torch.randn(32, 64, generator=gen) * (torch.rand(64, generator=gen) + 0.2))
        hdiags.append(torch.rand(64, generator=gen).pow(2) * 4 + 0.01)
    settings = armor.SolverSettings(block_size=16, iterations=400)
    batch = armor.solve_batch(weights, hdiags, settings)
    for w, h, many in zip(weights, hdiags, batch, strict=True):
        one = armor.solve(w, h, settings)
        assert torch.equal(one.mask, many.mask)
        assert torch.equal(one.core, many.core)
        assert one.history == many.history
