import pytest
import torch

from armor_export.prune import masks


def test_mask_keeps_two_of_every_four_along_input_dim():
    scores = torch.randn(8, 32)
    mask = masks.mask_from_scores(scores)
    groups = mask.reshape(8, 8, 4)
    assert (groups.sum(-1) == 2).all()
    kept = torch.where(mask, scores, torch.tensor(float("-inf"))).reshape(8, 8, 4)
    dropped = torch.where(~mask, scores, torch.tensor(float("inf"))).reshape(8, 8, 4)
    assert (kept.topk(2, -1).values.min(-1).values >= dropped.min(-1).values).all()
    assert masks.is_two_four(mask)


def test_mask_ties_are_deterministic():
    mask = masks.mask_from_scores(torch.ones(2, 8))
    assert mask.tolist() == [[True, True, False, False] * 2] * 2


def test_is_two_four_rejects_wrong_counts():
    mask = masks.mask_from_scores(torch.randn(4, 16))
    mask[0, 0] = ~mask[0, 0]
    assert not masks.is_two_four(mask)


def test_pack_roundtrip_and_size():
    torch.manual_seed(0)
    w = torch.randn(16, 64)
    mask = masks.mask_from_scores(w.abs())
    values, positions = masks.pack(w * mask, mask)
    assert values.shape == (16, 32) and positions.shape == (16, 8)
    assert positions.dtype == torch.uint8
    core, mask2 = masks.unpack(values, positions)
    assert torch.equal(mask2, mask)
    assert torch.equal(core, w * mask)


def test_unpack_rejects_corrupt_positions():
    values = torch.zeros(1, 4)
    bad = torch.zeros(1, 1, dtype=torch.uint8)  # all positions 0: duplicate indices
    with pytest.raises(ValueError, match="corrupt"):
        masks.unpack(values, bad)


def test_divisibility_error_names_layer():
    from armor_export.errors import ShapeError

    with pytest.raises(ShapeError, match="my.layer"):
        masks.check_divisible(6, "my.layer")
