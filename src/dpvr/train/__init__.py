"""Side-branch training (and the LoRA / full fine-tuning baselines) on LLaVA conversation data."""

from dpvr.train.args import TrainArgs
from dpvr.train.data import DataCollator, LlavaConversationDataset, load_records
from dpvr.train.run import train

__all__ = ["DataCollator", "LlavaConversationDataset", "TrainArgs", "load_records", "train"]
