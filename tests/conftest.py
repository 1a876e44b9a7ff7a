"""What several test files share: tiny model sizes (seconds per test on 2 cores)."""

from ptum_hf import PTUMConfig
from ptum_hf.reproduce.settings import SIZES

# PTUMConfig overrides for runs through the CLI or the Python API (`config_overrides`): the experiment runner's tiny
# size, with the default tokens per behavior.
TINY = {k: v for k, v in SIZES["tiny"].items() if k != "max_tokens_per_behavior"}

# A whole tiny config for models built directly (tests of the modeling code).
TINY_CONFIG = dict(TINY, vocab_size=60, max_behaviors=12, max_tokens_per_behavior=8, dropout=0.0)


def tiny_config(**overrides) -> PTUMConfig:
    return PTUMConfig(**{**TINY_CONFIG, **overrides})
