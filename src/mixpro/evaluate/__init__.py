"""The evaluation app: robustness metrics, PatchDrop occlusion, ``mixpro eval`` and figures.

* :mod:`.metrics` — top-k, logit subsets, RMS calibration error, AURRA, OOD AUPRC (pure).
* :mod:`.occlusion` — random / salient / non-salient PatchDrop and the accuracy sweep.
* :mod:`.run` — ``mixpro eval``: :class:`~.run.EvalOptions`, :func:`~.run.evaluate_checkpoints`.
* :mod:`.report` — the text table.
* :mod:`.figures` — ``mixpro figures``: :func:`~.figures.make_figures`.

The commands (:mod:`.run`, :mod:`.figures`) are not imported here. The app imports the core
(``mixpro``); the core never imports the app.
"""

from .metrics import (
    MetricInputError,
    auprc,
    auroc,
    aurra,
    average_precision,
    calib_err,
    confidence,
    load_index_list,
    ood_scores,
    subset_logits,
    topk_accuracy,
)
from .occlusion import (
    ClsSaliency,
    OcclusionError,
    drop_patches,
    mass_threshold,
    occlusion_sweep,
    random_drop_counts,
    random_drop_mask,
    saliency_drop_mask,
)

__all__ = [
    "ClsSaliency",
    "MetricInputError",
    "OcclusionError",
    "auprc",
    "auroc",
    "aurra",
    "average_precision",
    "calib_err",
    "confidence",
    "drop_patches",
    "load_index_list",
    "mass_threshold",
    "occlusion_sweep",
    "ood_scores",
    "random_drop_counts",
    "random_drop_mask",
    "saliency_drop_mask",
    "subset_logits",
    "topk_accuracy",
]
