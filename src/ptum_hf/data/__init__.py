"""
Data side of ptum-hf: reading behavior logs (`read_behavior_log`, `stream_behavior_log`), built-in sources
(`load_behavior_dataset`), tokenizers (`train_behavior_tokenizer`, `BehaviorTokenCache`) and the collators that make
PTUM batches (`PretrainingCollator`, `DemographicsCollator`, `CTRCollator`).
"""

from .collators import IGNORE_INDEX, MASKED, PADDING, CTRCollator, DemographicsCollator, PretrainingCollator
from .ctr import split_by_time
from .dataset import BehaviorDataset, UserSequences
from .errors import BehaviorLogError
from .ingest import read_behavior_log
from .mind import load_mind
from .movielens import load_movielens
from .negatives import NegativeSampler
from .report import IngestReport
from .sources import load_behavior_dataset
from .streaming import stream_behavior_log
from .synthetic import SyntheticConfig, load_synthetic
from .tokenization import BehaviorTokenCache, train_behavior_tokenizer


__all__ = [
    "BehaviorDataset",
    "BehaviorLogError",
    "BehaviorTokenCache",
    "CTRCollator",
    "DemographicsCollator",
    "IGNORE_INDEX",
    "IngestReport",
    "MASKED",
    "NegativeSampler",
    "PADDING",
    "PretrainingCollator",
    "SyntheticConfig",
    "UserSequences",
    "load_behavior_dataset",
    "load_mind",
    "load_movielens",
    "load_synthetic",
    "read_behavior_log",
    "split_by_time",
    "stream_behavior_log",
    "train_behavior_tokenizer",
]
