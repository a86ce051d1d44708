"""Make ``pyiqa.create_metric('maclip')`` build this package's :class:`~pyiqa_maclip.arch.MACLIP`.

pyiqa calls :func:`register` through the ``pyiqa.archs`` entry point the first
time it looks anything up in ``ARCH_REGISTRY``, so the plugin wins even when it
is never imported; ``import pyiqa_maclip`` calls it too. It is idempotent.
"""
from __future__ import annotations

import copy
import importlib

from pyiqa.default_model_configs import DEFAULT_CONFIGS
from pyiqa.utils.registry import ARCH_REGISTRY

from .arch import MACLIP

__all__ = ['METRIC_NAME', 'ARCH_NAME', 'METRIC_CONFIG', 'register']

METRIC_NAME = 'maclip'
ARCH_NAME = 'MACLIP'

#: The ``DEFAULT_CONFIGS`` entry. Q_sim lies in (0, 1) and Q_mag in [0, inf) (a Box-Cox of
#: non-negative values); the fused score is a convex combination of the two, so it is >= 0
#: and in practice below about 1.5 (Q_mag is near 1 for Gaussian-like features).
METRIC_CONFIG = {
    'metric_opts': {'type': ARCH_NAME},
    'metric_mode': 'NR',
    'lower_better': False,
    'score_range': '0, ~1.5',
}

# pyiqa's own CUDA-only, batch-1 implementation registers the same arch name.
_BUILTIN_MODULE = 'pyiqa.archs.maclip_arch'


def register() -> None:
    """Register MACLIP in ``ARCH_REGISTRY`` and ``DEFAULT_CONFIGS['maclip']`` (idempotent).

    pyiqa's built-in module is imported first so that its own
    ``@ARCH_REGISTRY.register()`` has already run: a later import of it is then
    a cached no-op, whatever order user code imports things in, and ours
    overrides it.
    """
    try:
        importlib.import_module(_BUILTIN_MODULE)
    except ImportError:  # a pyiqa without the built-in maclip
        pass
    except AssertionError:  # it was imported after our class took the name: keep ours
        pass
    ARCH_REGISTRY.register(MACLIP, name=ARCH_NAME, override=True)
    DEFAULT_CONFIGS[METRIC_NAME] = copy.deepcopy(METRIC_CONFIG)
