"""Training loop, metrics, checkpoints and the config schema."""
from .config import TRAIN_DEFAULTS, ConfigError, read_config_file, resolve, validate_config
from .loop import evaluate, evaluate_run, train

__all__ = ["TRAIN_DEFAULTS", "ConfigError", "read_config_file", "resolve", "validate_config",
           "evaluate", "evaluate_run", "train"]
