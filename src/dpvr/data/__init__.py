"""Generated data: images, LLaVA-format training conversations and per-family benchmarks."""

from dpvr.data.generate import DataConfig, generate_dataset, load_benchmark, verify_dataset
from dpvr.data.questions import CHANCE, FAMILIES, POPE_CATEGORIES

__all__ = ["CHANCE", "FAMILIES", "POPE_CATEGORIES", "DataConfig", "generate_dataset", "load_benchmark",
           "verify_dataset"]
