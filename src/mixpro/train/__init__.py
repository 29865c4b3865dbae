"""``mixpro train`` and ``mixpro compare``: the training app built on the mixpro core.

* :mod:`.recipe` — recipes (YAML) + overrides and their validation.
* :mod:`.engine` — one training epoch and one evaluation pass.
* :mod:`.distributed` — torchrun / DDP set-up (NCCL on GPUs, gloo on CPU).
* :mod:`.run` — the train entry point :func:`mixpro.train.run.train`;
  :mod:`.compare` — methods × variants × seeds sweeps.

Checkpoints are :mod:`mixpro.checkpoint`'s, datasets :mod:`mixpro.data`'s, mixers
:mod:`mixpro.methods`', plots :mod:`mixpro.plots`'.
"""

from .recipe import ConfigError, Recipe, TrainError, load_recipe

__all__ = ["ConfigError", "Recipe", "TrainError", "load_recipe"]
