"""pyiqa-maclip: MA-CLIP (Liao et al., AAAI 2026) for the pyiqa toolbox.

    import pyiqa, pyiqa_maclip
    metric = pyiqa.create_metric('maclip', device='cpu')
    scores = metric(images)                       # (B,) for (B, 3, H, W) in [0, 1]
    parts = metric(images, return_components=True)  # score, q_sim, q_mag, w_sim, w_mag
"""
from .version import __version__
from . import functional
from .arch import MACLIP, QualityComponents, QualityMap
from .functional import DEFAULT_PROMPTS
from .registration import register
from .weights import OFFICIAL_CHECKPOINTS, WeightsUnavailableError, load_clip

register()

__all__ = [
    '__version__',
    'functional',
    'MACLIP',
    'QualityComponents',
    'QualityMap',
    'DEFAULT_PROMPTS',
    'register',
    'OFFICIAL_CHECKPOINTS',
    'WeightsUnavailableError',
    'load_clip',
]
