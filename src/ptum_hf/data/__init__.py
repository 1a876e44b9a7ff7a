"""
Data side of ptum-hf: reading behavior logs (`read_behavior_log`, `stream_behavior_log`), built-in sources
(`load_behavior_dataset`, or `load_behavior_data` for a name or a log path), tokenizers (`train_behavior_tokenizer`,
`load_tokenizer`, `BehaviorTokenCache`), seeded user splits (`ptum_hf.data.splits`) and the collators that make PTUM
batches (`UserCollator`, `PretrainingCollator`, `DemographicsCollator`, `CTRCollator`; `SeededCollator`).
"""

from .collators import CTRCollator, DemographicsCollator, PretrainingCollator, UserCollator
from .ctr import split_by_time
from .dataset import BehaviorDataset, UserSequences
from .errors import BehaviorLogError
from .ingest import read_behavior_log
from .mind import load_mind
from .movielens import load_movielens
from .negatives import NegativeSampler
from .report import IngestReport
from .seeding import SeededCollator, UserRows
from .sources import load_behavior_data, load_behavior_dataset
from .streaming import stream_behavior_log
from .synthetic import SyntheticConfig, load_synthetic
from .tokenization import BehaviorTokenCache, load_tokenizer, train_behavior_tokenizer

__all__ = [
    "BehaviorDataset",
    "BehaviorLogError",
    "BehaviorTokenCache",
    "CTRCollator",
    "DemographicsCollator",
    "IngestReport",
    "NegativeSampler",
    "PretrainingCollator",
    "SeededCollator",
    "SyntheticConfig",
    "UserCollator",
    "UserRows",
    "UserSequences",
    "load_behavior_data",
    "load_behavior_dataset",
    "load_mind",
    "load_movielens",
    "load_synthetic",
    "read_behavior_log",
    "split_by_time",
    "stream_behavior_log",
    "load_tokenizer",
    "train_behavior_tokenizer",
]
