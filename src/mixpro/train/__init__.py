"""``mixpro train`` and ``mixpro compare``: the training app built on the mixpro core.

* :mod:`.config` — recipes (YAML) + CLI overrides, validation, the method registry.
* :mod:`.engine` — one training epoch and one evaluation pass.
* :mod:`.checkpoint` — atomic checkpoints and resume.
* :mod:`.distributed` — torchrun / DDP set-up (NCCL on GPUs, gloo on CPU).
* :mod:`.run` — the train entry point; :mod:`.compare` — methods × seeds sweeps.
"""

from .config import ConfigError, Recipe, TrainError, load_recipe

__all__ = ["ConfigError", "Recipe", "TrainError", "load_recipe"]
