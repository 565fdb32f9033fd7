"""Stage (a): contrastive pretraining of the vision tower with ``CLIPModel``, as CLIP is trained.

Image-caption pairs come from ``captions.jsonl`` (every training image, with captions naming
every object's colour, shape and coarse position, or the digit and its colour). Each image's
"twin" (one attribute changed) is put in the same batch, so the in-batch contrast includes
hard negatives that need colour-shape binding to be told apart.
"""

from __future__ import annotations

import time

import torch
from tqdm.auto import tqdm
from transformers import CLIPModel, PreTrainedTokenizerFast

from dpvr.tiny.common import LossLog, lr_at, set_lr


def tokenize_captions(tokenizer: PreTrainedTokenizerFast, captions: list[str], max_len: int = 64):
    """(ids, mask): captions + ``</s>`` (CLIP pools at the first EOS), right-padded."""
    rows = [tokenizer(c, add_special_tokens=False)["input_ids"][: max_len - 1] + [tokenizer.eos_token_id]
            for c in captions]
    n = max(len(r) for r in rows)
    ids = torch.full((len(rows), n), tokenizer.pad_token_id, dtype=torch.long)
    mask = torch.zeros((len(rows), n), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = torch.tensor(r)
        mask[i, : len(r)] = 1
    return ids, mask


def pair_batches(groups: list[list[int]], batch_size: int, gen: torch.Generator):
    """Endless stream of index batches; a group (image + its twin) is never split."""
    while True:
        order = torch.randperm(len(groups), generator=gen).tolist()
        batch: list[int] = []
        for g in order:
            if len(batch) + len(groups[g]) > batch_size:
                yield batch
                batch = []
            batch.extend(groups[g])


def pretrain_clip(clip: CLIPModel, pixels: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor,
                  groups: list[list[int]], *, steps: int, batch_size: int, lr: float, seed: int,
                  warmup: int = 50, weight_decay: float = 0.1, log_path=None, progress: bool = True,
                  max_seconds: float | None = None) -> list[dict]:
    """Train ``clip`` in place with its own ``return_loss=True`` loss; returns the loss log."""
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(clip.parameters(), lr=lr, betas=(0.9, 0.98), eps=1e-6, weight_decay=weight_decay)
    log = LossLog(log_path, "clip")
    clip.train()
    batches = pair_batches(groups, batch_size, gen)
    bar = tqdm(range(steps), desc="stage a: CLIP", disable=not progress)
    t0 = time.time()
    for step in bar:
        idx = torch.tensor(next(batches))
        set_lr(opt, lr_at(step, steps, lr, warmup))
        out = clip(input_ids=ids[idx], attention_mask=mask[idx], pixel_values=pixels[idx], return_loss=True)
        opt.zero_grad(set_to_none=True)
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(clip.parameters(), 1.0)
        opt.step()
        with torch.no_grad():
            acc = (out.logits_per_image.argmax(-1) == torch.arange(len(idx))).float().mean().item()
        log.log(step=step, loss=out.loss.item(), acc=acc, lr=opt.param_groups[0]["lr"], t=time.time() - t0)
        bar.set_postfix(loss=f"{out.loss.item():.3f}", acc=f"{acc:.2f}")
        if max_seconds is not None and time.time() - t0 > max_seconds:
            break
    clip.eval()
    return log.rows
