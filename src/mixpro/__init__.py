"""mixpro: MixPro (MaskMix + Progressive Attention Labeling), TransMix, Mixup and CutMix.

The core (masks, labels, mixers, attention probe, loss) never imports the apps.
"""

from ._kernels import set_single_thread_loops
from .attention import AttentionOrigin, ClsAttention, NoClsAttentionError, attention_origin
from .attentive import AttentiveCutMix
from .fmix import FMix
from .gridmix import GridMix
from .gridmixup import GridMixup
from .heads import (
    ClassAttentionClassifier,
    check_mask_geometry,
    needs_class_attention,
    with_class_attention,
)
from .labels import (
    ALPHA_STRATEGIES,
    ConstantAlpha,
    CosineAlpha,
    LearnableAlpha,
    LinearAlpha,
    ParabolicAlpha,
    attention_lambda,
    combine_lambda,
    cosine_alpha,
    mix_targets,
    smooth_one_hot,
)
from .loss import (
    binary_cross_entropy,
    lambda_weighted_cross_entropy,
    soft_target_cross_entropy,
)
from .masks import BlockMasks, BoxMasks, GridMasks, ShuffleMasks
from .mixers import (
    CutMix,
    MaskMix,
    MixedBatch,
    Mixer,
    MixPro,
    Mixup,
    NoMix,
    RandomChoice,
    TransMix,
    paper_recipe,
)
from .pixels import CellMask, ShuffledMask
from .puzzlemix import PuzzleMix
from .resizemix import ResizeMix
from .saliencymix import SaliencyMix
from .strategies import MASK_STRATEGIES, make_mask_strategy
from .tokenmix import TokenMix

__version__ = "0.1.0"

__all__ = [
    "ALPHA_STRATEGIES",
    "AttentionOrigin",
    "BlockMasks",
    "BoxMasks",
    "CellMask",
    "ClassAttentionClassifier",
    "ClsAttention",
    "ConstantAlpha",
    "CosineAlpha",
    "CutMix",
    "FMix",
    "AttentiveCutMix",
    "GridMix",
    "GridMixup",
    "GridMasks",
    "LearnableAlpha",
    "LinearAlpha",
    "MASK_STRATEGIES",
    "MaskMix",
    "MixPro",
    "MixedBatch",
    "Mixer",
    "Mixup",
    "NoClsAttentionError",
    "NoMix",
    "ParabolicAlpha",
    "RandomChoice",
    "ResizeMix",
    "PuzzleMix",
    "SaliencyMix",
    "TokenMix",
    "ShuffleMasks",
    "ShuffledMask",
    "TransMix",
    "attention_lambda",
    "attention_origin",
    "binary_cross_entropy",
    "check_mask_geometry",
    "combine_lambda",
    "cosine_alpha",
    "lambda_weighted_cross_entropy",
    "make_mask_strategy",
    "mix_targets",
    "needs_class_attention",
    "paper_recipe",
    "set_single_thread_loops",
    "smooth_one_hot",
    "soft_target_cross_entropy",
    "with_class_attention",
]
