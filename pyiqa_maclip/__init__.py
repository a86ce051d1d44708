"""pyiqa-maclip: MA-CLIP (Liao et al., AAAI 2026) for the pyiqa toolbox.

    import pyiqa, pyiqa_maclip
    metric = pyiqa.create_metric('maclip', device='cpu')
    scores = metric(images)                          # (B, 1) for (B, 3, H, W) in [0, 1]
    parts = metric(images, return_components=True)   # score, q_sim, q_mag, w_sim, w_mag

The metric core is :mod:`.functional` (the method's equations), :mod:`.encoder`,
:mod:`.arch` (:class:`MACLIP`), :mod:`.weights` and :mod:`.registration`; the command
line and the collection and benchmark tools around it are :mod:`pyiqa_maclip.app`.

Importing this package loads neither torch nor pyiqa: the names below are loaded when
first used (PEP 562). Imported after pyiqa, it registers the metric and its variants
(:func:`register`) at once; otherwise pyiqa's ``create_metric('maclip')`` finds it through
the ``pyiqa.archs`` entry point, and ``pyiqa_maclip.register()`` adds the variant names.
"""
from __future__ import annotations

import importlib
import sys

from .errors import UserError
from .names import OFFICIAL_CHECKPOINTS
from .version import __version__

#: Public name -> (module, attribute), imported on first use.
_LAZY = {
    'functional': ('.functional', None),
    'MACLIP': ('.arch', 'MACLIP'),
    'QualityComponents': ('.functional', 'QualityComponents'),
    'QualityMap': ('.arch', 'QualityMap'),
    'DEFAULT_PROMPTS': ('.functional', 'DEFAULT_PROMPTS'),
    'register': ('.registration', 'register'),
    'Checkpoint': ('.weights', 'Checkpoint'),
    'resolve': ('.weights', 'resolve'),
    'load_clip': ('.weights', 'load_clip'),
    'WeightsUnavailableError': ('.weights', 'WeightsUnavailableError'),
}

__all__ = ['__version__', 'OFFICIAL_CHECKPOINTS', 'UserError', *_LAZY]


def __getattr__(name: str):
    if name not in _LAZY:
        raise AttributeError(f'module {__name__!r} has no attribute {name!r}')
    module, attribute = _LAZY[name]
    value = importlib.import_module(module, __name__)
    value = value if attribute is None else getattr(value, attribute)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


if 'pyiqa' in sys.modules:  # pyiqa and torch are loaded already: registering costs little
    __getattr__('register')()
