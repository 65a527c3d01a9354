import torch
import torch.nn.functional as F

from armor_export.prune import blockdiag
from armor_export.prune.linear import ArmorLinear
from armor_export.prune.masks import mask_from_scores


def test_blockdiag_products_match_dense():
    gen = torch.Generator().manual_seed(0)
    blocks = torch.randn(3, 4, 4, generator=gen)
    dense = blockdiag.to_dense(blocks)
    m = torch.randn(12, 5, generator=gen)
    n = torch.randn(5, 12, generator=gen)
    x = torch.randn(2, 7, 12, generator=gen)
    assert torch.allclose(blockdiag.left_mul(blocks, m), dense @ m, atol=1e-6)
    assert torch.allclose(blockdiag.right_mul(n, blocks), n @ dense, atol=1e-6)
    assert torch.allclose(blockdiag.apply_to_input(blocks, x), x @ dense.T, atol=1e-6)
    tiles = blockdiag.to_tiles(m[:8, :4].repeat(1, 2), 4)
    assert torch.equal(blockdiag.from_tiles(tiles), m[:8, :4].repeat(1, 2))


def test_armor_linear_equals_dense_reconstruction():
    gen = torch.Generator().manual_seed(1)
    d_out, d_in, b = 32, 48, 16
    core = torch.randn(d_out, d_in, generator=gen)
    mask = mask_from_scores(core.abs())
    a = torch.randn(d_out // b, b, b, generator=gen)
    bb = torch.randn(d_in // b, b, b, generator=gen)
    bias = torch.randn(d_out, generator=gen)
    mod = ArmorLinear.from_factors(a, core, mask, bb, bias)
    dense = blockdiag.to_dense(a) @ (core * mask) @ blockdiag.to_dense(bb)
    assert torch.allclose(mod.dense_weight(), dense, atol=1e-4)
    x = torch.randn(3, 5, d_in, generator=gen)
    assert torch.allclose(mod(x), F.linear(x, dense, bias), atol=1e-4, rtol=1e-5)
    assert torch.equal(mod.core, mod.core * mod.mask)
