"""RoutingIndex: the views of a sequence, and merging them back — by concatenation when the image
positions of every sample are one shared run, by gather otherwise; both give the same full view."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from dpvr.engine.index import RoutingIndex, gather_positions, merge_views


def _mask(rows: list[str]) -> torch.Tensor:
    """'ttiiit' per sample -> (B, L) bool, i = image position."""
    return torch.tensor([[c == "i" for c in r] for r in rows])


@pytest.mark.parametrize("rows, block", [
    (["ttiiitt"], (2, 3)),  # one image, batch 1
    (["tiiittt", "tiiittt"], (1, 3)),  # same layout across the batch
    (["iiittt"], (0, 3)),  # image first
    (["tttiii"], (3, 3)),  # image last
    (["ttiiitt", "tiiittt"], None),  # runs start at different positions
    (["tiitit"], None),  # two runs in one sample
    (["tiiitt", "ttiitt"], None),  # different image counts: a sample has an invalid image slot
    (["tttttt"], None),  # no image
])
def test_image_block_is_found_exactly_when_every_sample_shares_one_run(rows, block):
    index = RoutingIndex.from_mask(_mask(rows))
    assert index.image_block == block


def test_no_block_inside_a_view_with_invalid_slots():
    is_image = _mask(["ttiiitt"])
    valid = torch.tensor([[True, True, True, True, True, True, False]])
    assert RoutingIndex.from_mask(is_image, valid).image_block is None


@pytest.mark.parametrize("rows", [["ttiiitt"], ["tiiittt", "tiiittt"], ["iiittt"], ["tttiii"]])
def test_concatenating_merge_equals_the_gather(rows):
    index = RoutingIndex.from_mask(_mask(rows))
    assert index.image_block is not None
    gather_only = replace(index, image_block=None)
    g = torch.Generator().manual_seed(0)
    full = torch.randn(len(rows), len(rows[0]), 5, generator=g)  # (B, L, d)
    text, image = gather_positions(full, index.text_idx), gather_positions(full, index.image_idx)
    # hidden states (B, L, d), merged along dim 1: both paths rebuild the full view exactly
    assert torch.equal(merge_views(text, image, index), full)
    assert torch.equal(merge_views(text, image, gather_only), full)
    # keys/values (B, H, L, hd), merged along dim 2, as the kv layers do
    heads = full.reshape(len(rows), len(rows[0]), 1, 5).transpose(1, 2).expand(-1, 3, -1, -1) * torch.arange(1, 4.)[
        None, :, None, None]  # (B, 3, L, 5)
    t, i = heads[:, :, index.text_idx[0]], heads[:, :, index.image_idx[0]]
    assert torch.equal(index.merge(t, i, dim=2), heads)
    assert torch.equal(gather_only.merge(t, i, dim=2), heads)


def test_gather_merge_rebuilds_a_padded_multi_image_batch():
    is_image = _mask(["tiitiit", "ttiiiit", "ttttttt"])
    index = RoutingIndex.from_mask(is_image)
    assert index.image_block is None
    full = torch.arange(3 * 7, dtype=torch.float32).reshape(3, 7, 1)
    text, image = gather_positions(full, index.text_idx), gather_positions(full, index.image_idx)
    assert torch.equal(merge_views(text, image, index), full)


@pytest.mark.parametrize("rows, prefix_len", [
    (["ttiiitt"], 5),  # up to and including the last image token
    (["tiiitt", "ttiitt"], 4),  # the latest last image token of any sample
    (["iiittt"], 3),
    (["tttttt"], 0),  # no image: no side-branch prefix
])
def test_prefix_len_ends_at_the_last_image_token_of_any_sample(rows, prefix_len):
    assert RoutingIndex.from_mask(_mask(rows)).prefix_len == prefix_len


def test_a_sample_of_image_tokens_only_is_refused():
    with pytest.raises(ValueError, match="image tokens only"):
        RoutingIndex.from_mask(_mask(["tiit", "iiii"]))
