"""Teacher targets computed once per dataset and stored, so a sweep does not pay the teacher forward per point.

``dpvr train --distill --distill-cache DIR``: DIR holds, for every training example, what the
unrouted base gives (`dpvr.train.distill.live_targets`): its logits at the supervised positions
(top-k values and ids, or the whole vocabulary with ``top_k`` 0) and its visual states entering
each feature layer. Layout::

    DIR/manifest.json                key (base fingerprint, data sha256, image folder, top-k, dtype),
                                     example ids in row order, layers, the targets file's name
    DIR/targets-<sha>.safetensors    logit_values (S, k) float32, logit_indices (S, k) (top-k only),
                                     logit_offsets (n+1,), state_offsets (n+1,), states.<layer> (I, d)

The targets file is content-named and the manifest written after it, atomically: a kill leaves
either the old cache or the new one, never a mix. `ensure_cache` reuses a cache whose key matches
and that holds the requested examples and layers; otherwise it computes one for the dataset with
the union of the layers asked for now and those already stored (points of a sweep that fuse at
other layers then extend one cache instead of replacing each other's). A file lock beside DIR
serialises processes that share it (sweep shards, the ranks of one run).

Size: (supervised tokens × k + visual tokens × d × layers) × 4 bytes per example: kilobytes for the
embedded tiny model, ~2.4 MB per example and layer for LLaVA-1.5-7B's 576 × 4096 states (stored
in float32), so at that scale store the logits (``--distill-feature-weight 0``) or run live.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from pathlib import Path

import torch
from filelock import FileLock
from safetensors.torch import load_file, save

from dpvr.io import write_bytes_atomic, write_json_atomic
from dpvr.train.distill import BatchTargets, live_targets, supervised_mask

MANIFEST = "manifest.json"
FORMAT = 1


def example_keys(dataset) -> list[str]:
    """One key per example of ``dataset``: its id, made unique by occurrence (``id#2`` for the second ``id``)."""
    seen: Counter = Counter()
    keys = []
    for ex in dataset.examples:
        seen[ex.id] += 1
        keys.append(ex.id if seen[ex.id] == 1 else f"{ex.id}#{seen[ex.id]}")
    return keys


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


class TeacherCache:
    """Stored targets, addressed by the training dataset's example index."""

    def __init__(self, folder: Path, manifest: dict, tensors: dict[str, torch.Tensor], keys: list[str]):
        self.folder, self.manifest, self.tensors = folder, manifest, tensors
        self.top_k = manifest["key"]["top_k"]
        self.layers = manifest["layers"]
        row = {k: i for i, k in enumerate(manifest["ids"])}
        self.rows = [row[k] for k in keys]  # dataset index -> cache row

    def batch_targets(self, indices: list[int], layers: list[int], device=None) -> BatchTargets:
        t = self.tensors
        rows = [self.rows[i] for i in indices]
        lo, so = t["logit_offsets"], t["state_offsets"]
        logit_parts = [slice(int(lo[r]), int(lo[r + 1])) for r in rows]
        state_parts = [slice(int(so[r]), int(so[r + 1])) for r in rows]
        values = torch.cat([t["logit_values"][s] for s in logit_parts])  # (S, k)
        indices_t = torch.cat([t["logit_indices"][s] for s in logit_parts]) if "logit_indices" in t else None
        states = {layer: torch.cat([t[f"states.{layer}"][s] for s in state_parts]) for layer in layers}  # (I, d)
        move = (lambda x: x) if device is None else (lambda x: x.to(device))  # noqa: E731
        return BatchTargets(move(values), None if indices_t is None else move(indices_t),
                            {k: move(v) for k, v in states.items()})


def read_manifest(folder: Path) -> dict | None:
    try:
        manifest = json.loads((folder / MANIFEST).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        return None
    if not (folder / str(manifest.get("targets"))).is_file():
        return None
    return manifest


def _usable(manifest: dict | None, key: dict, keys: list[str], layers: list[int]) -> bool:
    return (manifest is not None and manifest["key"] == key and set(keys) <= set(manifest["ids"])
            and set(layers) <= set(manifest["layers"]))


def ensure_cache(folder: str | Path, model, dataset, collator, layers: list[int], key: dict, batch_size: int,
                 progress: bool = False, log=print) -> TeacherCache:
    """The cache at ``folder`` for ``dataset`` (computed now if missing, stale or lacking an example or layer).

    ``model`` is the `DPVRModel` being trained (its base is the teacher); ``key`` what the targets
    depend on besides the examples (`cache_key`).
    """
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise ValueError(f"--distill-cache {folder} is a file; pass a folder (it is created if missing)")
    keys = example_keys(dataset)
    folder.mkdir(parents=True, exist_ok=True)
    with FileLock(str(folder.parent / f".{folder.name}.cache.lock")):
        manifest = read_manifest(folder)
        if not _usable(manifest, key, keys, layers):
            wanted = sorted(set(layers) | (set(manifest["layers"]) if manifest and manifest["key"] == key else set()))
            log(f"dpvr train: computing the teacher's targets for {len(keys)} examples, layers {wanted} "
                f"into {folder} (once per dataset)")
            manifest = _build(folder, model, dataset, collator, wanted, key, keys, batch_size, progress)
        tensors = load_file(str(folder / manifest["targets"]))
    return TeacherCache(folder, manifest, tensors, keys)


def _build(folder: Path, model, dataset, collator, layers: list[int], key: dict, keys: list[str],
           batch_size: int, progress: bool) -> dict:
    from tqdm.auto import tqdm

    device = next(model.parameters()).device
    values, indices, states = [], [], {layer: [] for layer in layers}
    logit_counts, state_counts = [], []
    for start in tqdm(range(0, len(dataset), batch_size), desc="teacher targets", unit="batch", disable=not progress):
        batch = collator([dataset[i] for i in range(start, min(start + batch_size, len(dataset)))])
        batch = {k: v.to(device) for k, v in batch.items()}
        targets = live_targets(model, batch, layers, key["top_k"])
        logit_counts += supervised_mask(batch["labels"]).sum(1).tolist()
        state_counts += model.backbone.visual_mask(batch["input_ids"]).sum(1).tolist()
        values.append(targets.logit_values.cpu())
        if targets.logit_indices is not None:
            indices.append(targets.logit_indices.cpu())
        for layer in layers:
            states[layer].append(targets.states[layer].cpu())
    offsets = lambda counts: torch.tensor([0] + counts).cumsum(0)  # noqa: E731
    tensors = {"logit_values": torch.cat(values).contiguous(), "logit_offsets": offsets(logit_counts),
               "state_offsets": offsets(state_counts)}
    if indices:
        tensors["logit_indices"] = torch.cat(indices).contiguous()
    for layer in layers:
        tensors[f"states.{layer}"] = torch.cat(states[layer]).contiguous()
    data = save(tensors)
    name = f"targets-{hashlib.sha256(data).hexdigest()[:16]}.safetensors"
    write_bytes_atomic(folder / name, data)
    manifest = {"format": FORMAT, "key": key, "ids": keys, "layers": layers, "targets": name,
                "examples": len(keys), "bytes": len(data)}
    write_json_atomic(folder / MANIFEST, manifest)
    for old in folder.glob("targets-*.safetensors"):  # the manifest names the new file: older ones are unused
        if old.name != name:
            old.unlink(missing_ok=True)
    return manifest


def cache_key(base, data_path: str | Path, image_folder: str | Path, top_k: int) -> dict:
    """What the stored targets depend on besides the examples and layers."""
    from dpvr.adapter import base_fingerprint

    dtype = str(next(base.parameters()).dtype).replace("torch.", "")
    return {"base": base_fingerprint(base), "data_sha256": file_sha256(data_path),
            "image_folder": str(Path(image_folder).resolve()), "top_k": top_k, "dtype": dtype}


INDEX_KEY = "distill_index"


class IndexedDataset(torch.utils.data.Dataset):
    """``dataset``'s items with their index under ``distill_index``, so the loss can find their stored targets."""

    def __init__(self, dataset):
        self.dataset = dataset
        self.examples = dataset.examples
        self.skipped = dataset.skipped

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int) -> dict:
        return self.dataset[i] | {INDEX_KEY: i}


class IndexedCollator:
    """``collator`` over the items without their index; the indices join the batch as a (B,) tensor."""

    def __init__(self, collator):
        self.collator = collator

    def __call__(self, items: list[dict]) -> dict:
        batch = self.collator([{k: v for k, v in it.items() if k != INDEX_KEY} for it in items])
        batch[INDEX_KEY] = torch.tensor([it[INDEX_KEY] for it in items], dtype=torch.long)  # (B,)
        return batch
