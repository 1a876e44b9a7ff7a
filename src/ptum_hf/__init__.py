"""ptum-hf: PTUM user-model pre-training (Wu et al., 2020) as Hugging Face models."""

import warnings

from transformers import AutoConfig, AutoModel, AutoModelForPreTraining, AutoModelForSequenceClassification

from .auto import AutoModelForCTR
from .configuration_ptum import PRESETS, PTUMConfig
from .modeling_ptum import (
    IGNORE_INDEX,
    MASK_INDEX,
    PAD_INDEX,
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
from .processing_ptum import UserEmbeddings, UserPredictions, UserProbabilities, read_user_events

__version__ = "0.1.0"

AutoConfig.register("ptum", PTUMConfig, exist_ok=True)
AutoModel.register(PTUMConfig, PTUMModel, exist_ok=True)
AutoModelForPreTraining.register(PTUMConfig, PTUMForPretraining, exist_ok=True)
AutoModelForSequenceClassification.register(PTUMConfig, PTUMForDemographicClassification, exist_ok=True)

try:  # transformers' pipeline internals: should a release move them, the models still work without the pipelines
    from .pipeline_ptum import register_pipelines
except ImportError as error:
    warnings.warn(f"PTUM pipelines not registered ({error}); model.encode and predict still work", stacklevel=2)
else:
    register_pipelines()  # tasks user-feature-extraction and user-classification


__all__ = [
    "PRESETS",
    "PAD_INDEX",
    "MASK_INDEX",
    "IGNORE_INDEX",
    "PTUMConfig",
    "PTUMModel",
    "PTUMPreTrainedModel",
    "PTUMForPretraining",
    "PTUMForDemographicClassification",
    "PTUMForCTR",
    "AutoModelForCTR",
    "PTUMModelOutput",
    "PTUMForPretrainingOutput",
    "PTUMClassifierOutput",
    "PTUMCTROutput",
    "build_behavior_table",
    "UserEmbeddings",
    "UserPredictions",
    "UserProbabilities",
    "read_user_events",
]
