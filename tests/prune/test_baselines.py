import pytest
import torch

from armor_export.prune import baselines
from armor_export.prune.masks import is_two_four


@pytest.fixture
def weight():
    return torch.randn(16, 32, generator=torch.Generator().manual_seed(0))


def test_all_baselines_give_valid_two_four_masks(weight):
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(200, 32, generator=gen) * torch.linspace(0.1, 3, 32)
    gram = x.T @ x / 200
    h = torch.diagonal(gram)
    for pruned, mask in (
        baselines.magnitude(weight),
        baselines.wanda(weight, h),
        baselines.nowag_p(weight, h),
        baselines.sparsegpt(weight, gram),
    ):
        assert is_two_four(mask)
        assert torch.equal(pruned, pruned * mask)


def test_wanda_with_uniform_statistics_is_magnitude(weight):
    _, mag = baselines.magnitude(weight)
    _, wan = baselines.wanda(weight, torch.full((32,), 2.0))
    assert torch.equal(mag, wan)


def test_sparsegpt_with_identity_hessian_is_magnitude(weight):
    # H = I: saliency is w², and the Cholesky factor of H⁻¹ has no off-diagonal to spread
    # errors with, so SparseGPT reduces exactly to magnitude pruning.
    pruned, mask = baselines.sparsegpt(weight, torch.eye(32), damp=0.0)
    mag_w, mag_mask = baselines.magnitude(weight)
    assert torch.equal(mask, mag_mask)
    assert torch.allclose(pruned, mag_w, atol=1e-6)


def test_sparsegpt_beats_magnitude_on_its_objective(weight):
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(500, 32, generator=gen) @ torch.randn(32, 32, generator=gen)
    gram = x.T @ x / 500

    def out_err(w):
        d = w - weight
        return float(torch.trace(d @ gram @ d.T))

    assert out_err(baselines.sparsegpt(weight, gram)[0]) < out_err(baselines.magnitude(weight)[0])
