"""The build's steps as small functions (called in order by :func:`dpvr.tiny.build.build`)."""

from __future__ import annotations

import os
from pathlib import Path

import torch
from transformers import AutoProcessor, LlavaForConditionalGeneration, LlavaProcessor

from dpvr.tiny.clip_stage import pretrain_clip, tokenize_captions
from dpvr.tiny.common import load_pixels
from dpvr.tiny.lm_stage import build_examples, cache_features, train_lm
from dpvr.tiny.model import build_clip, build_llava
from dpvr.tiny.tokenizer import make_processor, train_tokenizer, training_texts


def make_tokenizer_and_processor(records: list[dict], captions: list[dict], arch) -> LlavaProcessor:
    tok = train_tokenizer(training_texts(records, [c["caption"] for c in captions]))
    return make_processor(tok, arch.image_size, arch.patch_size)


def load_all_pixels(data_dir: Path, captions: list[dict]) -> tuple[torch.Tensor, dict[str, int]]:
    """Pixels of every training image (captions.jsonl lists them all, twins included)."""
    rels = [c["image"] for c in captions]
    return load_pixels(data_dir, rels), {r: i for i, r in enumerate(rels)}


def caption_groups(captions: list[dict]) -> list[list[int]]:
    """Indices grouped so that an image and its twin share a CLIP batch."""
    groups: list[list[int]] = []
    where: dict[str, int] = {}
    for i, c in enumerate(captions):
        if "twin_of" in c and c["twin_of"] in where:
            groups[where[c["twin_of"]]].append(i)
        else:
            where[c["image"]] = len(groups)
            groups.append([i])
    return groups


def run_clip(cfg, tokenizer, pixels, captions, log_path, progress):
    clip = build_clip(cfg.arch, len(tokenizer), cfg.seed)
    ids, mask = tokenize_captions(tokenizer, [c["caption"] for c in captions])
    s = cfg.clip
    rows = pretrain_clip(clip, pixels, ids, mask, caption_groups(captions), steps=s.steps, batch_size=s.batch,
                         lr=s.lr, seed=cfg.seed, warmup=s.warmup, weight_decay=s.weight_decay,
                         log_path=log_path, progress=progress)
    return clip, rows


def new_llava(cfg, vocab_size: int, clip=None) -> LlavaForConditionalGeneration:
    model = build_llava(cfg.arch, vocab_size, cfg.seed + 1)
    if clip is not None:
        model.model.vision_tower.load_state_dict(clip.vision_model.state_dict())
    return model


def cache(model, pixels, progress) -> torch.Tensor:
    return cache_features(model.model.vision_tower, pixels, model.config.vision_feature_layer, progress=progress)


def run_lm(model, features, records, row, tokenizer, cfg, stage: str, stage_cfg, log_path, progress, eval_fn=None,
           eval_every: int = 0, stop_when=None):
    """Train ``model`` on ``records`` for one LM stage with the settings ``stage_cfg`` (a StageConfig)."""
    examples = build_examples(records, tokenizer, cfg.arch.num_image_tokens, row)
    return train_lm(model, features, examples, stage=stage, steps=stage_cfg.steps, batch_tokens=stage_cfg.batch,
                    lr=stage_cfg.lr, seed=cfg.seed, warmup=stage_cfg.warmup, weight_decay=stage_cfg.weight_decay,
                    log_path=log_path, progress=progress, pad_id=tokenizer.pad_token_id, eval_fn=eval_fn,
                    eval_every=eval_every, vision_lr_scale=stage_cfg.vision_lr_scale, stop_when=stop_when)


def reload(path: str | os.PathLike):
    """The saved checkpoint through the stock loaders (what users get)."""
    model = LlavaForConditionalGeneration.from_pretrained(path, dtype=torch.float32).eval()
    return model, AutoProcessor.from_pretrained(path)


def evaluate_both(model, processor, data_dir, limit, progress, predictions: list | None = None,
                  blind_limit: int | None = None) -> dict:
    """Accuracy per family with the image and with a blank image ("blind", first ``blind_limit`` items),
    scored by ``dpvr eval``'s code (:func:`dpvr.evaluation.accuracy_report`, its default answer budget)."""
    from dpvr.data.questions import FAMILIES
    from dpvr.evaluation import accuracy_report

    kw = dict(batch_size=50, max_new_tokens=16, progress=progress)
    with_image = accuracy_report(model, processor, data_dir, list(FAMILIES), limit=limit, predictions=predictions, **kw)
    blind_limit = limit if blind_limit is None else (blind_limit if limit is None else min(limit, blind_limit))
    blind = accuracy_report(model, processor, data_dir, list(FAMILIES), limit=blind_limit, blind=True, **kw)
    return {fam: {**with_image[fam], "blind": blind[fam]["accuracy"], "blind_n": blind[fam]["n"],
                  "blind_yes_ratio": blind[fam].get("yes_ratio"),
                  "above_blind": round(with_image[fam]["accuracy"] - blind[fam]["accuracy"], 2)}
            for fam in with_image}


def write_examples(out: Path, data_dir: Path, predictions: list[dict], per_family: int = 2) -> None:
    """Copy a few benchmark items the checkpoint answers correctly into ``out/examples``.

    They are fixed questions for a smoke test of the shipped checkpoint (chosen after the
    evaluation, so they say nothing about accuracy: ``build.json`` does).
    """
    import json
    import shutil

    from dpvr.data.generate import load_benchmark

    ex_dir = out / "examples"
    ex_dir.mkdir(parents=True, exist_ok=True)
    ok = {p["id"] for p in predictions if p["correct"]}
    lines = []
    for fam in dict.fromkeys(p["family"] for p in predictions):
        chosen = [r for r in load_benchmark(data_dir, fam) if r["id"] in ok][:per_family]
        for r in chosen:
            name = f"{r['id']}.png"
            shutil.copyfile(data_dir / r["image"], ex_dir / name)
            lines.append(json.dumps({**r, "image": name}))
    (ex_dir / "examples.jsonl").write_text("".join(x + "\n" for x in lines))
