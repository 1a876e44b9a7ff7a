"""ptum-hf: PTUM user-model pre-training (Wu et al., 2020) as Hugging Face models."""

import os as _os
import sys as _sys

# Large CPU tensors on transparent huge pages: a fresh activation then costs far fewer page faults, and the
# elementwise passes of a CPU training step run ~2x faster (benchmarks/RESULTS.md). torch reads the variable once, at
# its import, so this only applies when ptum_hf is imported first; set THP_MEM_ALLOC_ENABLE=0 to opt out.
if _sys.platform.startswith("linux") and "torch" not in _sys.modules:
    _os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")

from transformers import AutoConfig, AutoModel, AutoModelForPreTraining, AutoModelForSequenceClassification

from .configuration_ptum import PRESETS, PTUMConfig
from .modeling_ptum import (
    PTUMClassifierOutput,
    PTUMCTROutput,
    PTUMForCTR,
    PTUMForDemographicClassification,
    PTUMForPretraining,
    PTUMForPretrainingOutput,
    PTUMModel,
    PTUMModelOutput,
    PTUMPreTrainedModel,
    build_behavior_table,
)

__version__ = "0.1.0"

AutoConfig.register("ptum", PTUMConfig, exist_ok=True)
AutoModel.register(PTUMConfig, PTUMModel, exist_ok=True)
AutoModelForPreTraining.register(PTUMConfig, PTUMForPretraining, exist_ok=True)
AutoModelForSequenceClassification.register(PTUMConfig, PTUMForDemographicClassification, exist_ok=True)

__all__ = [
    "PRESETS",
    "PTUMConfig",
    "PTUMModel",
    "PTUMPreTrainedModel",
    "PTUMForPretraining",
    "PTUMForDemographicClassification",
    "PTUMForCTR",
    "PTUMModelOutput",
    "PTUMForPretrainingOutput",
    "PTUMClassifierOutput",
    "PTUMCTROutput",
    "build_behavior_table",
]
