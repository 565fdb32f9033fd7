"""The embedded default: a tiny LLaVA trained by ``dpvr tiny build`` and shipped in the package.

It is a stock checkpoint (CLIP vision tower + Llama LM, ``LlavaForConditionalGeneration``) that
loads with ``transformers`` alone; this module only gives its path and convenient loaders::

    from dpvr import embedded
    model, processor = embedded.load_model(), embedded.load_processor()
    bench = embedded.benchmark_dir()      # generated once into a cache folder, verified

``build.json`` beside the weights records the exact command, seed, versions, stage settings,
per-family accuracy (with image, blind, chance) and the sha256 of every shipped file.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from pathlib import Path

PATH = Path(__file__).resolve().parent / "checkpoint"


def checkpoint_path() -> Path:
    """Folder of the shipped checkpoint (pass it to ``from_pretrained``)."""
    if not (PATH / "config.json").exists():
        raise FileNotFoundError(f"the embedded checkpoint is missing from {PATH}; reinstall dpvr or rebuild it "
                                "with `dpvr tiny build --out DIR` and copy DIR's files there")
    return PATH


def build_info() -> dict:
    """Contents of the shipped ``build.json``."""
    return json.loads((checkpoint_path() / "build.json").read_text())


def verify() -> None:
    """Check the shipped files against the sha256 recorded in ``build.json`` (ValueError if not)."""
    files = build_info()["files"]
    bad = [n for n, h in files.items()
           if not (PATH / n).exists() or hashlib.sha256((PATH / n).read_bytes()).hexdigest() != h]
    if bad:
        raise ValueError(f"embedded checkpoint files do not match build.json: {', '.join(bad)}")


def load_model(**kwargs):
    """``LlavaForConditionalGeneration.from_pretrained`` on the shipped checkpoint (eval mode, fp32)."""
    import torch
    from transformers import LlavaForConditionalGeneration

    kwargs.setdefault("dtype", torch.float32)
    return LlavaForConditionalGeneration.from_pretrained(checkpoint_path(), **kwargs).eval()


def load_processor(**kwargs):
    """``AutoProcessor.from_pretrained`` on the shipped checkpoint (a ``LlavaProcessor``)."""
    from transformers import AutoProcessor

    return AutoProcessor.from_pretrained(checkpoint_path(), **kwargs)


def cache_root() -> Path:
    """Where generated data is cached: ``$DPVR_CACHE`` or ``~/.cache/dpvr``."""
    env = os.environ.get("DPVR_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "dpvr"


def benchmark_dir(cache_dir: str | os.PathLike | None = None, progress: bool = True) -> Path:
    """The default benchmark (the data the shipped checkpoint was built and evaluated on).

    Generated once with the build's data settings into ``cache_dir`` (default
    ``cache_root()/data-<seed>-<manifest hash>``); every call checks the benchmark files against
    the manifest, and the manifest against the one recorded in ``build.json``.
    """
    from dpvr.data.generate import DataConfig, generate_dataset, verify_dataset

    info = build_info()
    want = info["data"]["manifest_sha256"]
    cfg = DataConfig(**info["config"]["data"])
    root = Path(cache_dir) if cache_dir else cache_root() / f"data-{cfg.seed}-{want[:12]}"
    manifest = root / "manifest.json"
    if not manifest.exists():
        # several processes (sweep shards) wait here; generate_dataset's own lock is ``.<name>.lock``
        with _exclusive(root.parent / f".{root.name}.generate-lock"):
            if not manifest.exists():
                generate_dataset(root, overwrite=True, progress=progress, **info["config"]["data"])
    got = hashlib.sha256(manifest.read_bytes()).hexdigest()
    if got != want:
        raise ValueError(f"benchmark in {root} does not match the one the checkpoint was evaluated on "
                         f"(manifest sha256 {got[:12]} != {want[:12]}); delete {root} and retry, or check that "
                         "numpy/Pillow/scikit-learn render the same images as recorded in build.json")
    verify_dataset(root, prefixes=("images/test/",) + tuple(f"{f}.jsonl" for f in _families()))
    return root


@contextlib.contextmanager
def _exclusive(lock_path: Path):
    """Hold an exclusive advisory lock on ``lock_path`` (no-op where fcntl is missing)."""
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "w") as fh:
        try:
            import fcntl
        except ImportError:  # pragma: no cover - Windows
            yield
            return
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _families() -> tuple[str, ...]:
    from dpvr.data.questions import FAMILIES

    return FAMILIES
