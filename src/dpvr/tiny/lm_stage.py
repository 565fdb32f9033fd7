"""Stages (b) and (c): train the projector and language model on cached vision features.

The vision tower is frozen after stage (a), so its LLaVA features (hidden state -2, CLS dropped)
are computed once per image and cached; each step then runs only projector + Llama, with the
projected features put at the ``<image>`` positions exactly as ``LlavaModel`` does.

Stage (b) "align": caption conversations ("Describe the image." -> every object).
Stage (c) "instruct": the LLaVA conversations of ``train.json`` (multi-turn QA, captions,
text-only), tokenised by :func:`dpvr.data.llava_format.tokenize_conversation`.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm
from transformers import LlavaForConditionalGeneration

from dpvr.data.llava_format import IGNORE_INDEX, tokenize_conversation
from dpvr.tiny.common import LossLog, lr_at, set_lr


@dataclass
class Example:
    input_ids: list[int]
    labels: list[int]
    image: int  # row of the feature cache, -1 for text-only


def build_examples(records: list[dict], tokenizer, num_image_tokens: int, image_row: dict[str, int],
                   max_length: int = 320) -> list[Example]:
    out = []
    for rec in records:
        ex = tokenize_conversation(rec, tokenizer, num_image_tokens, max_length=max_length)
        out.append(Example(ex["input_ids"], ex["labels"], image_row[rec["image"]] if "image" in rec else -1))
    return out


@torch.no_grad()
def cache_features(vision_tower, pixels: torch.Tensor, layer: int = -2, batch_size: int = 256,
                   progress: bool = True) -> torch.Tensor:
    """(N, 3, H, W) -> (N, num_patches, vision_hidden) LLaVA features ("default": CLS dropped)."""
    from dpvr.tiny.model import vision_features

    vision_tower.eval()
    chunks = []
    for i in tqdm(range(0, len(pixels), batch_size), desc="caching vision features", disable=not progress):
        chunks.append(vision_features(vision_tower, pixels[i:i + batch_size], layer))
    return torch.cat(chunks)


def length_batches(examples: list[Example], batch_tokens: int, rng: random.Random) -> list[list[int]]:
    """Batches of similar length (less padding) holding at most ~``batch_tokens`` tokens; shuffled."""
    order = list(range(len(examples)))
    rng.shuffle(order)
    # sort within chunks of 50 batches' worth, so batches stay random but lengths match
    chunk = 4096
    batches = []
    for c in range(0, len(order), chunk):
        part = sorted(order[c:c + chunk], key=lambda i: len(examples[i].input_ids))
        cur: list[int] = []
        for i in part:
            n = len(examples[i].input_ids)
            if cur and (len(cur) + 1) * max(n, len(examples[cur[-1]].input_ids)) > batch_tokens:
                batches.append(cur)
                cur = []
            cur.append(i)
        if cur:
            batches.append(cur)
    rng.shuffle(batches)
    return batches


def collate(examples: list[Example], pad_id: int):
    n = max(len(e.input_ids) for e in examples)
    ids = torch.full((len(examples), n), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), n), IGNORE_INDEX, dtype=torch.long)
    mask = torch.zeros((len(examples), n), dtype=torch.long)
    for i, e in enumerate(examples):
        ids[i, : len(e.input_ids)] = torch.tensor(e.input_ids)
        labels[i, : len(e.labels)] = torch.tensor(e.labels)
        mask[i, : len(e.input_ids)] = 1
    return ids, labels, mask


def lm_loss(model: LlavaForConditionalGeneration, features: torch.Tensor, ids: torch.Tensor,
            labels: torch.Tensor, mask: torch.Tensor, images: torch.Tensor, from_pixels: bool = False) -> torch.Tensor:
    """Next-token loss of LLaVA given the batch's images.

    features: (N_cache, P, d_v) cached vision features, or (N, 3, H, W) pixels when ``from_pixels``
    (then the vision tower runs, with gradients); ids/labels/mask: (B, T); images: (B,) rows (-1: none)
    """
    from dpvr.tiny.model import vision_features

    image_id = model.config.image_token_id
    embeds = model.get_input_embeddings()(ids)  # (B, T, d)
    has = images >= 0
    if has.any():
        feats = features[images[has]]
        if from_pixels:
            feats = vision_features(model.model.vision_tower, feats, model.config.vision_feature_layer)
        proj = model.model.multi_modal_projector(feats)  # (B_img, P, d)
        slots = (ids == image_id) & has[:, None]
        embeds = embeds.masked_scatter(slots[..., None].expand_as(embeds), proj.to(embeds.dtype))
    hidden = model.model.language_model(inputs_embeds=embeds, attention_mask=mask).last_hidden_state
    # predict token t+1 from position t, only where the target is supervised
    tgt = labels[:, 1:]
    keep = tgt != IGNORE_INDEX
    logits = model.lm_head(hidden[:, :-1][keep])  # (n_sup, V)
    return F.cross_entropy(logits.float(), tgt[keep])


def train_lm(model: LlavaForConditionalGeneration, features: torch.Tensor, examples: list[Example], *,
             stage: str, steps: int, batch_tokens: int, lr: float, seed: int, warmup: int = 50,
             weight_decay: float = 0.0, train_lm_params: bool = True, log_path=None, progress: bool = True,
             max_seconds: float | None = None, pad_id: int = 1, eval_fn=None, eval_every: int = 0,
             vision_lr_scale: float = 0.0, stop_when=None) -> list[dict]:
    """Train projector (+ language model) in place on ``examples``; returns the loss log.

    ``eval_fn(model) -> dict`` runs every ``eval_every`` steps (its dict joins that step's log row);
    ``stop_when(row) -> bool`` ends the stage after a row for which it is true (a cleared gate).

    With ``vision_lr_scale > 0``, ``features`` must be pixel values: the vision tower then runs
    in every step and trains too, at ``vision_lr_scale`` times the learning rate.
    """
    params = list(model.model.multi_modal_projector.parameters())
    if train_lm_params:
        params += list(model.model.language_model.parameters()) + list(model.lm_head.parameters())
    vision = list(model.model.vision_tower.parameters()) if vision_lr_scale > 0 else []
    for p in model.parameters():
        p.requires_grad_(False)
    for p in params + vision:
        p.requires_grad_(True)
    groups = [{"params": params}] + ([{"params": vision, "lr_scale": vision_lr_scale}] if vision else [])
    opt = torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.95), weight_decay=weight_decay)
    params = params + vision
    rng = random.Random(f"{seed}/{stage}")
    log = LossLog(log_path, stage)
    model.train()
    batches: list[list[int]] = []
    bar = tqdm(range(steps), desc=f"stage {stage}", disable=not progress)
    t0 = time.time()
    ema = None
    for step in bar:
        if not batches:
            batches = length_batches(examples, batch_tokens, rng)
        batch = [examples[i] for i in batches.pop()]
        ids, labels, mask = collate(batch, pad_id)
        images = torch.tensor([e.image for e in batch])
        set_lr(opt, lr_at(step, steps, lr, warmup))
        loss = lm_loss(model, features, ids, labels, mask, images, from_pixels=bool(vision))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        ema = loss.item() if ema is None else 0.95 * ema + 0.05 * loss.item()
        row = {"step": step, "loss": loss.item(), "lr": opt.param_groups[0]["lr"], "t": time.time() - t0}
        if eval_fn is not None and eval_every and (step + 1) % eval_every == 0:
            model.eval()
            row.update(eval_fn(model))
            model.train()
            if progress:
                bar.write(f"[{stage} step {step + 1}] {row}")
        log.log(**row)
        bar.set_postfix(loss=f"{ema:.3f}")
        if max_seconds is not None and time.time() - t0 > max_seconds:
            break
        if stop_when is not None and stop_when(row):
            if progress:
                bar.write(f"[{stage}] stopped at step {step + 1} of {steps}: validation gate cleared")
            break
    for p in model.parameters():
        p.requires_grad_(True)
    model.eval()
    return log.rows
