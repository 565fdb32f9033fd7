"""Writing benchmark results: JSON and figures are written to a temporary file and renamed into place."""

from __future__ import annotations

import os
import platform
from pathlib import Path

import torch


def write_json_atomic(path: str | Path, data) -> Path:
    """Write ``data`` as indented JSON to ``path`` atomically (torch/numpy values converted)."""
    from dpvr.io import write_json_atomic as _write

    return _write(path, data, sort_keys=False, default=_jsonable)


def save_figure_atomic(fig, path: str | Path, **kwargs) -> Path:
    """``fig.savefig`` to memory, then written beside ``path`` and renamed (the file gets the usual mode)."""
    import io

    from dpvr.io import write_bytes_atomic

    buf = io.BytesIO()
    kwargs.setdefault("format", Path(path).suffix.lstrip(".") or "png")
    fig.savefig(buf, **kwargs)
    return write_bytes_atomic(path, buf.getvalue())


def machine_info(device: torch.device | str = "cpu") -> dict:
    """What ran the benchmark: enough to tell two runs' machines apart."""
    device = torch.device(device)
    info = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "device": str(device),
    }
    try:
        import transformers

        info["transformers"] = transformers.__version__
    except ImportError:  # pragma: no cover
        pass
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    else:
        try:
            for line in Path("/proc/cpuinfo").read_text().splitlines():
                if line.startswith("model name"):
                    info["cpu_model"] = line.split(":", 1)[1].strip()
                    break
        except OSError:  # pragma: no cover
            pass
    return info


def _jsonable(obj):
    if isinstance(obj, (torch.dtype, torch.device, Path)):
        return str(obj)
    if hasattr(obj, "item"):
        return obj.item()
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")
