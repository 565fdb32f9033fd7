"""Generate the offline training set and benchmarks (``dpvr data generate``).

Layout of the output folder (all paths in the JSON files are relative to it)::

    train.json            LLaVA conversation records: id, image, conversations (<image> in turn 1)
    captions.jsonl        image-caption pairs for every training image (+ metadata), including
                          "twins" (one attribute changed) as hard negatives for CLIP pretraining
    images/train/*.png    training images (64x64 RGB)
    images/test/<family>/*.png
    <family>.jsonl        one benchmark per family: id, image, question, answer, family,
                          category (+ options for mc)
    manifest.json         seed, counts, generator version, sha256 of every other file

Same seed -> byte-identical files. Test images never appear in training (checked by sha256).

    from dpvr.data import generate_dataset
    generate_dataset("data/", seed=0, num_train=20000, num_test_per_family=300)
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import random
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

from tqdm.auto import tqdm

from dpvr.data import questions as Q
from dpvr.data.scenes import (BACKGROUNDS, COLORS, digit_split, digit_twin, render_digit, render_scene, sample_digit,
                              sample_scene, scene_twin)

GENERATOR_VERSION = "6"
IMAGE_TOKEN = "<image>"


@dataclass(frozen=True)
class DataConfig:
    """What ``generate_dataset`` draws. Fractions are of the training records."""

    seed: int = 0
    num_train: int = 20000
    num_test_per_family: int = 300
    text_only_fraction: float = 0.02
    digit_fraction: float = 0.35
    caption_fraction: float = 0.12
    multi_turn_fraction: float = 0.75
    max_turns: int = 6
    twin_fraction: float = 0.5  # images that get a one-attribute-changed twin in captions.jsonl
    #: scene records that show two objects and open with a spatial question, as the spatial
    #: benchmark does (version 4 asked relations only in passing, mostly in 3- and 4-object
    #: scenes, and the tiny model stayed at chance on the two-object benchmark)
    spatial_pair_fraction: float = 0.45
    #: the benchmark files' wording (``questions.WORDINGS``): ``llava`` = the stock lmms-eval tasks' suffixes
    test_wording: str = "llava"

    def __post_init__(self):
        if self.num_train < 1:
            raise ValueError(f"num_train must be >= 1, got {self.num_train}")
        if self.num_test_per_family < 6:
            raise ValueError(f"num_test_per_family must be >= 6 (POPE needs 3 categories x yes/no), "
                             f"got {self.num_test_per_family}")
        for name in ("text_only_fraction", "digit_fraction", "caption_fraction", "multi_turn_fraction",
                     "twin_fraction", "spatial_pair_fraction"):
            v = getattr(self, name)
            if not 0.0 <= v <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {v}")
        if self.text_only_fraction + self.digit_fraction > 1.0:
            raise ValueError("text_only_fraction + digit_fraction must be <= 1")
        if self.max_turns < 2:
            raise ValueError(f"max_turns must be >= 2, got {self.max_turns}")
        if self.test_wording not in Q.WORDINGS:
            raise ValueError(f"test_wording must be one of {', '.join(Q.WORDINGS)}, got {self.test_wording!r}")


def _png_bytes(img) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG", optimize=False)
    return buf.getvalue()


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _rng(seed: int, *parts) -> random.Random:
    # String seeds are hashed with SHA-512 by ``random``: stable across runs and platforms.
    return random.Random("/".join(str(p) for p in (seed, *parts)))


def _turns(qas: list[Q.QA], with_image: bool, style: random.Random | None = None) -> list[dict]:
    """LLaVA turns; with ``style`` (its own random stream, so the content of a record does not
    depend on it), each question in one of the training wordings (:func:`questions.restyle`)."""
    conv = []
    for k, qa in enumerate(qas):
        qa = Q.restyle(style, qa) if style is not None else qa
        text = f"{IMAGE_TOKEN}\n{qa.question}" if (k == 0 and with_image) else qa.question
        conv += [{"from": "human", "value": text}, {"from": "gpt", "value": qa.answer}]
    return conv


_SCENE_ASKERS = (
    lambda rng, sc: Q.ask_pope(rng, sc),
    lambda rng, sc: Q.ask_count(rng, sc),
    lambda rng, sc: Q.ask_color(rng, sc),
    lambda rng, sc: Q.ask_spatial(rng, sc),
    lambda rng, sc: Q.ask_mc(rng, sc),
)
# How often each family is asked in training: the ones a small model learns last (binding,
# relations, option letters) more often than counting and colour, which it reads early.
_ASKER_WEIGHTS = (2.5, 0.6, 1.0, 2.0, 1.5)


def _scene_questions(rng: random.Random, scene, k: int) -> list[Q.QA]:
    out: list[Q.QA] = []
    seen: set[str] = set()
    for _ in range(8 * k + 24):
        if len(out) == k:
            break
        qa = rng.choices(_SCENE_ASKERS, weights=_ASKER_WEIGHTS)[0](rng, scene)
        if qa is not None and qa.question not in seen:
            seen.add(qa.question)
            out.append(qa)
    return out or [Q.ask_count(rng, scene)]  # never an empty conversation


def _train_record(cfg: DataConfig, i: int, digit_pool: list[int]):
    """One training record and its image (or None for text-only)."""
    rng = _rng(cfg.seed, "train", i)
    style = _rng(cfg.seed, "style", i)
    rid = f"train-{i:06d}"
    multi = rng.random() < cfg.multi_turn_fraction
    k = rng.randint(2, cfg.max_turns) if multi else 1
    # text-only records sit at fixed positions (every 1/fraction-th), image records draw the rest
    every = round(1 / cfg.text_only_fraction) if cfg.text_only_fraction > 0 else 0
    r = cfg.text_only_fraction + rng.random() * (1 - cfg.text_only_fraction)
    if every and (i + 1) % every == 0:
        qas = [Q.text_only(rng) for _ in range(min(k, 2))]
        return {"id": rid, "conversations": _turns(qas, False, style)}, None, "text", None
    bg = rng.choice(BACKGROUNDS)
    if r < cfg.text_only_fraction + cfg.digit_fraction:
        color = rng.choice(list(COLORS))
        digit = sample_digit(rng, rng.choice(digit_pool), color)
        img, label = render_digit(digit, bg), digit.label
        if rng.random() < cfg.caption_fraction:
            qas = [Q.QA(rng.choice(Q.CAPTION_PROMPTS), Q.caption_digit(label, color), "caption", "digit")]
            kind = "caption"
        else:
            qas = [Q.ask_digit(label)] + ([Q.ask_digit_color(color)] if multi else [])
            rng.shuffle(qas)
            kind = "digit"
        return {"id": rid, "conversations": _turns(qas, True, style)}, img, kind, (digit, bg)
    if rng.random() < cfg.spatial_pair_fraction:
        scene, qa = Q.sample_spatial(rng, first=rng.random() < 0.5)
        more = _scene_questions(rng, scene, k - 1) if multi else []
        qas = [qa] + [q for q in more if q.question != qa.question]
        return {"id": rid, "conversations": _turns(qas, True, style)}, render_scene(scene, bg), "spatial_pair", (scene, bg)
    scene = sample_scene(rng, rng.randint(1, Q.MAX_OBJECTS))
    img = render_scene(scene, bg)
    if rng.random() < cfg.caption_fraction:
        qas = [Q.QA(rng.choice(Q.CAPTION_PROMPTS), Q.caption_scene(scene), "caption", "scene")]
        if multi:
            qas += _scene_questions(rng, scene, k - 1)
        kind = "caption"
    else:
        qas = _scene_questions(rng, scene, k)
        kind = "multi_turn" if len(qas) > 1 else "single_turn"
    return {"id": rid, "conversations": _turns(qas, True, style)}, img, kind, (scene, bg)


def _describe(content, bg) -> dict:
    """Caption and metadata of an image (for captions.jsonl)."""
    if isinstance(content, list):
        return {"caption": Q.caption_scene(content), "background": list(bg),
                "objects": [{"color": s.color, "shape": s.shape, "x": s.x, "y": s.y, "size": s.size}
                            for s in content]}
    d = content
    return {"caption": Q.caption_digit(d.label, d.color), "background": list(bg),
            "digit": {"label": d.label, "color": d.color, "x": d.x, "y": d.y, "size": d.size, "source": d.index}}


def _twin(cfg: DataConfig, i: int, content, bg, digit_pool: list[int]):
    rng = _rng(cfg.seed, "twin", i)
    if rng.random() >= cfg.twin_fraction:
        return None, None
    if isinstance(content, list):
        twin = scene_twin(rng, content)
        return twin, render_scene(twin, bg)
    twin = digit_twin(rng, content, digit_pool)
    return twin, render_digit(twin, bg)


def _test_item(cfg: DataConfig, family: str, j: int, digit_pool: list[int], attempt: int):
    """(image, QA) for benchmark item ``j`` of ``family``; balanced by construction."""
    rng = _rng(cfg.seed, "test", family, j, attempt)
    bg = rng.choice(BACKGROUNDS)
    n = cfg.num_test_per_family
    if family == "digit":
        color = rng.choice(list(COLORS))
        idx = digit_pool[j % len(digit_pool)] if n <= len(digit_pool) else rng.choice(digit_pool)
        digit = sample_digit(rng, idx, color)
        return render_digit(digit, bg), Q.ask_digit(digit.label)
    if family == "pope":
        cat = Q.POPE_CATEGORIES[j % 3]
        scene, qa = Q.sample_pope(rng, cat, answer=(j // 3) % 2 == 0)
    elif family == "count":
        scene, qa = Q.sample_count(rng, 1 + j % Q.MAX_OBJECTS)
    elif family == "color":
        scene, qa = Q.sample_color(rng)
    elif family == "spatial":
        scene, qa = Q.sample_spatial(rng, first=j % 2 == 0)
    elif family == "mc":
        scene, qa = Q.sample_mc(rng, ("shape", "color")[j % 2])
    else:
        raise ValueError(f"unknown family {family!r}; expected one of {Q.FAMILIES}")
    return render_scene(scene, bg), qa


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _write_tree(cfg: DataConfig, root: Path, progress: bool) -> dict:
    files: dict[str, str] = {}

    def put(rel: str, data: bytes) -> None:
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
        files[rel] = _sha256(data)

    train_digits = digit_split("train")
    test_digits = random.Random(cfg.seed).sample(digit_split("test"), len(digit_split("test")))
    records, captions, train_hashes = [], [], set()
    counts: dict[str, int] = {}
    for i in tqdm(range(cfg.num_train), desc="train records", disable=not progress):
        rec, img, kind, meta = _train_record(cfg, i, train_digits)
        counts[kind] = counts.get(kind, 0) + 1
        if img is not None:
            rel = f"images/train/{i:06d}.png"
            put(rel, _png_bytes(img))
            train_hashes.add(files[rel])
            rec = {"id": rec["id"], "image": rel, "conversations": rec["conversations"]}
            captions.append({"image": rel, **_describe(*meta)})
            twin, twin_img = _twin(cfg, i, *meta, train_digits)
            if twin is not None:
                trel = f"images/train/{i:06d}_twin.png"
                put(trel, _png_bytes(twin_img))
                train_hashes.add(files[trel])
                captions.append({"image": trel, "twin_of": rel, **_describe(twin, meta[1])})
        records.append(rec)
    put("train.json", ("[\n" + ",\n".join(json.dumps(r, ensure_ascii=False) for r in records) + "\n]\n").encode())
    put("captions.jsonl", "".join(json.dumps(c, ensure_ascii=False) + "\n" for c in captions).encode())
    counts["caption_pairs"] = len(captions)

    bench_counts = {}
    for fam in Q.FAMILIES:
        lines, seen = [], set()
        for j in tqdm(range(cfg.num_test_per_family), desc=f"test {fam}", disable=not progress):
            for attempt in range(100):
                img, qa = _test_item(cfg, fam, j, test_digits, attempt)
                data = _png_bytes(img)
                h = _sha256(data)
                if h not in train_hashes and h not in seen:
                    break
            else:  # pragma: no cover - astronomically unlikely
                raise RuntimeError(f"could not draw a test image for {fam} #{j} unseen in training")
            seen.add(h)
            rel = f"images/test/{fam}/{j:06d}.png"
            put(rel, data)
            rec = Q.reword({"id": f"{fam}-{j:06d}", "image": rel, "question": qa.question, "answer": qa.answer,
                            "family": fam, "category": qa.category}, cfg.test_wording)
            if qa.options is not None:
                rec["options"] = qa.options
            lines.append(json.dumps(rec, ensure_ascii=False))
        put(f"{fam}.jsonl", ("\n".join(lines) + "\n").encode())
        bench_counts[fam] = len(lines)

    manifest = {
        "generator": "dpvr.data.generate", "generator_version": GENERATOR_VERSION,
        "config": asdict(cfg), "seed": cfg.seed,
        "counts": {"train": dict(sorted(counts.items())), "train_total": cfg.num_train, "test": bench_counts},
        "files": dict(sorted(files.items())),
    }
    (root / "manifest.json").write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")
    return manifest


def generate_dataset(out: str | os.PathLike, seed: int = 0, num_train: int = 20000,
                     num_test_per_family: int = 300, overwrite: bool = False, progress: bool = True,
                     **kwargs) -> dict:
    """Write the training set and benchmarks to ``out`` (atomically) and return the manifest.

    Extra keyword arguments go to :class:`DataConfig`. Raises ``FileExistsError`` if ``out``
    exists and is not empty, unless ``overwrite``.
    """
    from dpvr.io import make_temp_dir, recover, swap_in
    from dpvr.outlock import output_lock

    cfg = DataConfig(seed=seed, num_train=num_train, num_test_per_family=num_test_per_family, **kwargs)
    out = Path(out)
    with output_lock(out):  # the lock sits beside ``out``, so it survives the swap below
        recover(out)  # leftovers of an interrupted run
        if out.exists() and any(out.iterdir()) and not overwrite:
            raise FileExistsError(f"{out} exists and is not empty; choose another --out or pass --overwrite")
        tmp = make_temp_dir(out.parent, f".{out.name}.tmp-")
        try:
            manifest = _write_tree(cfg, tmp, progress)
            swap_in(tmp, out)  # one atomic exchange: ``out`` is the complete old or the complete new dataset
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return manifest


def verify_dataset(root: str | os.PathLike, prefixes: tuple[str, ...] | None = None) -> dict:
    """Check the files listed in ``root/manifest.json`` against their sha256; return the manifest.

    ``prefixes`` limits the check to paths starting with one of them (e.g. the benchmark files).
    """
    root = Path(root)
    mpath = root / "manifest.json"
    if not mpath.exists():
        raise FileNotFoundError(f"{mpath} not found: not a dataset written by `dpvr data generate`")
    manifest = json.loads(mpath.read_text())
    bad = [rel for rel, h in manifest["files"].items()
           if (prefixes is None or rel.startswith(prefixes))
           and (not (root / rel).exists() or _sha256((root / rel).read_bytes()) != h)]
    if bad:
        raise ValueError(f"{len(bad)} file(s) in {root} do not match manifest.json (e.g. {bad[0]}); "
                         "regenerate the dataset")
    return manifest


def load_benchmark(root: str | os.PathLike, family: str) -> list[dict]:
    """Records of ``root/<family>.jsonl``."""
    path = Path(root) / f"{family}.jsonl"
    if not path.exists():
        raise FileNotFoundError(f"{path} not found; families are {', '.join(Q.FAMILIES)}")
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
