"""Make ``pyiqa.create_metric('maclip')`` build this package's :class:`~pyiqa_maclip.arch.MACLIP`.

pyiqa calls :func:`register` through the ``pyiqa.archs`` entry point the first
time it looks anything up in ``ARCH_REGISTRY``, so the plugin wins even when it
is never imported; ``import pyiqa_maclip`` calls it too. It is idempotent, and it
never discards configuration: scripts such as pyiqa's ``benchmark_results.py``
write the user's options into ``DEFAULT_CONFIGS`` and may build another metric
(which loads the entry point) before building this one.
"""
from __future__ import annotations

import copy
import importlib

from pyiqa.default_model_configs import DEFAULT_CONFIGS
from pyiqa.utils.registry import ARCH_REGISTRY

from .arch import MACLIP
from .names import ARCH_NAME, METRIC_NAME, VARIANTS

__all__ = ['METRIC_CONFIG', 'register']

#: The ``DEFAULT_CONFIGS`` entry. Q_sim lies in (0, 1) and Q_mag in [0, inf) (a Box-Cox of
#: non-negative values); the fused score is a convex combination of the two, so it is >= 0
#: and in practice below about 1.5 (Q_mag is near 1 for Gaussian-like features).
METRIC_CONFIG = {
    'metric_opts': {'type': ARCH_NAME},
    'metric_mode': 'NR',
    'lower_better': False,
    'score_range': '0, ~1.5',
}

# pyiqa 0.1.15+ ships this entry; its score_range ('0, 1') does not hold for MA-CLIP.
_PYIQA_BUILTIN_ENTRY = {
    'metric_opts': {'type': ARCH_NAME, 'model_type': 'maclip'},
    'metric_mode': 'NR',
    'score_range': '0, 1',
}

# pyiqa's own CUDA-only, batch-1 implementation registers the same arch name.
_BUILTIN_MODULE = 'pyiqa.archs.maclip_arch'


def _metric_configs() -> dict[str, dict]:
    """Every ``DEFAULT_CONFIGS`` entry this package provides, by metric name."""
    configs = {METRIC_NAME: METRIC_CONFIG}
    for name, backbone in VARIANTS.items():
        configs[name] = {**METRIC_CONFIG, 'metric_opts': {**METRIC_CONFIG['metric_opts'], 'backbone': backbone}}
    return configs


def _fill_in(name: str, config: dict) -> None:
    """Add ``config`` to ``DEFAULT_CONFIGS[name]`` without replacing what is already there.

    A missing entry gets a copy of ``config``; an existing one (a user's, a script's, pyiqa's)
    gets only the keys it lacks, in place, at both levels. pyiqa's own shipped entry is the
    one exception: its score range is replaced by this metric's. Entries that are not
    mappings are left alone, for pyiqa to report.
    """
    entry = DEFAULT_CONFIGS.get(name)
    if entry is None:
        DEFAULT_CONFIGS[name] = copy.deepcopy(config)
        return
    if not isinstance(entry, dict):
        return
    if name == METRIC_NAME and entry == _PYIQA_BUILTIN_ENTRY:
        entry['score_range'] = config['score_range']
    options = entry.setdefault('metric_opts', {})
    if isinstance(options, dict):
        for key, value in config['metric_opts'].items():
            options.setdefault(key, value)
    for key, value in config.items():
        entry.setdefault(key, copy.deepcopy(value))


def register() -> None:
    """Register MACLIP in ``ARCH_REGISTRY`` and fill in its ``DEFAULT_CONFIGS`` entries (idempotent).

    pyiqa's built-in module is imported first so that its own
    ``@ARCH_REGISTRY.register()`` has already run: a later import of it is then
    a cached no-op, whatever order user code imports things in, and ours
    overrides it. Every ``DEFAULT_CONFIGS`` entry whose ``metric_opts.type`` is
    ``'MACLIP'``, whatever its name, then builds this package's class.
    """
    try:
        importlib.import_module(_BUILTIN_MODULE)
    except ImportError:  # a pyiqa without the built-in maclip
        pass
    except AssertionError:  # it was imported after our class took the name: keep ours
        pass
    ARCH_REGISTRY.register(MACLIP, name=ARCH_NAME, override=True)
    for name, config in _metric_configs().items():
        _fill_in(name, config)
