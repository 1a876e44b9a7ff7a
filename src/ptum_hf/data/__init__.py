"""Data side of ptum-hf: reading behavior logs, built-in sources, tokenizers and collators."""

from .dataset import BehaviorDataset, UserSequences
from .errors import BehaviorLogError
from .ingest import read_behavior_log
from .report import IngestReport
