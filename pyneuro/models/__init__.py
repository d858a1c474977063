"""The MNIST models, one file each, behind one registry (see registry.py)."""
from . import registry
from .registry import MODELS, ModelSpec, get, names

# Importing a model file registers it; the order here is the order of main.py's menu.
from . import cnn, ann, recurrent, mtrnn, transformer, mamba, vae, s4d, pvrnn  # noqa: E402,F401

__all__ = ["MODELS", "ModelSpec", "get", "names", "registry"]
