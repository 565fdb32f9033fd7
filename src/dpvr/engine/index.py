"""Where the image and text positions of each sample are, derived from ``input_ids`` alone.

Every sample of a batch may have a different number of image tokens (0, 1 or several images)
and any padding side. The engine works on two *views* of the sequence:

- the **full view** (length L): every position, as the backbone sees it;
- the **text view** (length Lt = max text count in the batch): the non-image positions of each
  sample, in their original order, right-padded with invalid slots.

`RoutingIndex` holds the gather indices between them. Invalid slots point at a real position
of the same sample (never used as keys: masked out), so no row of an attention mask is empty.

The same split serves pruning (FastV): built from ``is_image = ~keep``, the "text view" is what a
sample keeps (text and kept image positions, in order) and the "image view" what it drops. Built
over such a kept view with ``valid`` (its real slots), invalid slots join neither view.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class RoutingIndex:
    text_idx: torch.Tensor  # (B, Lt) full-view position of each text slot
    text_valid: torch.Tensor  # (B, Lt) bool
    image_idx: torch.Tensor  # (B, Li) full-view position of each image slot
    image_valid: torch.Tensor  # (B, Li) bool
    merge_idx: torch.Tensor  # (B, L) slot in cat([text view, image view]) that fills each full position
    prefix_len: int  # positions up to and including the last image token of any sample (0 without images)
    # (start, Li) when every sample's image positions are the same run start..start+Li-1 and no slot is
    # invalid (one image, same prompt layout, no padding): merging is then a concatenation, not a gather
    image_block: tuple[int, int] | None = None

    @property
    def max_image_tokens(self) -> int:
        return self.image_idx.shape[1]

    @property
    def has_images(self) -> bool:
        return self.image_idx.shape[1] > 0

    @classmethod
    def from_input_ids(cls, input_ids: torch.Tensor, image_token_id: int) -> "RoutingIndex":
        return cls.from_mask(input_ids == image_token_id)

    @classmethod
    def from_mask(cls, is_image: torch.Tensor, valid: torch.Tensor | None = None) -> "RoutingIndex":
        """Views of a (B, L) sequence whose image positions are ``is_image``.

        ``valid`` (B, L) bool marks the real positions; the others (padding slots of a pruned view)
        go into neither view, and ``merge_idx`` fills them from text slot 0 (their output is unused).
        """
        bsz, length = is_image.shape
        device = is_image.device
        if valid is not None:
            is_image = is_image & valid
        # category: 0 text, 1 image, 2 invalid
        category = is_image.to(torch.int8) if valid is None else torch.where(valid, is_image.to(torch.int8), 2)
        n_image = is_image.sum(1)  # (B,)
        n_text = (category == 0).sum(1)
        # one device -> host read for the three sizes (each read waits for the queued kernels, and such waits
        # add up in a launch-bound GPU prefill)
        no_text, max_text, max_image = torch.stack([(n_text == 0).any().long(), n_text.max(), n_image.max()]).tolist()
        if no_text:
            raise ValueError("a sample consists of image tokens only; DPVR needs at least one text position per sample")
        # A stable sort puts the text positions first (in order), then the image positions (in order).
        order = torch.argsort(category, dim=1, stable=True)  # (B, L)
        slots_t = torch.arange(max_text, device=device)
        text_valid = slots_t[None, :] < n_text[:, None]
        last_text = order.gather(1, (n_text - 1)[:, None])  # (B, 1)
        text_idx = torch.where(text_valid, order[:, :max_text], last_text)
        slots_i = torch.arange(max_image, device=device)
        image_valid = slots_i[None, :] < n_image[:, None]
        # image positions sit at the end of `order`: shift each sample's run to the front of the slots
        image_idx = order.gather(1, (n_text[:, None] + slots_i[None, :]).clamp(max=length - 1))
        # samples without images point their (unused) slots at position 0, inside any side-branch prefix
        first_image = torch.where(n_image[:, None] > 0, image_idx[:, :1], 0) if max_image else image_idx
        image_idx = torch.where(image_valid, image_idx, first_image)
        # merge_idx: full position -> slot in cat([text slots, image slots]); invalid slots write to a dropped column
        slot_pos = torch.cat([text_idx, image_idx], dim=1)
        slot_ok = torch.cat([text_valid, image_valid], dim=1)
        target = torch.where(slot_ok, slot_pos, torch.full_like(slot_pos, length))
        merge_idx = torch.zeros(bsz, length + 1, dtype=torch.long, device=device)
        merge_idx.scatter_(1, target, torch.arange(slot_pos.shape[1], device=device).expand(bsz, -1).contiguous())
        merge_idx = merge_idx[:, :length]
        prefix_len, block = 0, None
        if max_image:  # the second and last host read: the prefix end and whether the images are one shared run
            last_image = torch.where(is_image, torch.arange(length, device=device), -1).max()
            start = image_idx[0, 0]
            shared_run = image_valid.all() & text_valid.all() & (image_idx == start + slots_i[None, :]).all()
            last_image, start, shared_run = torch.stack([last_image, start, shared_run.long()]).tolist()
            prefix_len = last_image + 1
            if shared_run and max_text + max_image == length:
                block = (start, max_image)
        return cls(text_idx, text_valid, image_idx, image_valid, merge_idx, prefix_len, block)

    def merge(self, text: torch.Tensor, image: torch.Tensor, dim: int) -> torch.Tensor:
        """Text-view and image-view slots back into full-view order along ``dim`` (the sequence axis).

        text (..., Lt, ...) and image (..., Li, ...) -> (..., L, ...). One concatenation when the image
        positions are a shared run (`image_block`), else a gather through ``merge_idx``.
        """
        if self.image_block is not None:
            start, _ = self.image_block
            return torch.cat([text.narrow(dim, 0, start), image, text.narrow(dim, start, text.shape[dim] - start)], dim)
        both = torch.cat([text, image], dim=dim)  # (..., Lt + Li, ...)
        shape = [1] * both.dim()
        shape[0], shape[dim] = self.merge_idx.shape
        idx = self.merge_idx.reshape(shape).expand(*both.shape[:dim], self.merge_idx.shape[1], *both.shape[dim + 1:])
        return both.gather(dim, idx)


def gather_positions(x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """x (B|1, L, ...) gathered at idx (B, K) along dim 1 -> (B, K, ...)."""
    if x.shape[0] != idx.shape[0]:
        x = x.expand(idx.shape[0], *x.shape[1:])
    shape = idx.shape + x.shape[2:]
    view = idx.reshape(*idx.shape, *([1] * (x.dim() - 2))).expand(shape)
    return x.gather(1, view)


def merge_views(text: torch.Tensor, image: torch.Tensor, index: RoutingIndex) -> torch.Tensor:
    """text (B, Lt, d) and image (B, Li, d) back into the full view (B, L, d)."""
    return index.merge(text, image, dim=1)
