"""Which ``create_metric`` options a pyiqa metric accepts, and the refusal of any other.

MA-CLIP metrics (``maclip`` and its named variants) are answered from
:mod:`pyiqa_maclip.option_spec` without torch; any other pyiqa metric from its arch's
``__init__`` signature (pyiqa's ``ARCH_REGISTRY``), which loads pyiqa.
"""
from __future__ import annotations

import inspect
from collections.abc import Mapping

from ..errors import UserError
from ..names import METRIC_NAME, VARIANTS
from ..option_spec import OPTION_DEFAULTS, PYIQA_WRAPPER_OPTIONS, check_options, unknown_option

__all__ = ['is_maclip_metric', 'accepted_options', 'check_option_names', 'check_metric_options']


def is_maclip_metric(metric: str) -> bool:
    """Whether ``metric`` is one of this package's MA-CLIP names (known without pyiqa)."""
    return metric == METRIC_NAME or metric in VARIANTS


def accepted_options(metric: str) -> set[str] | None:
    """Keyword options ``create_metric(metric, ...)`` accepts; None if its arch takes any (``**kwargs``)
    or cannot be found. Loads pyiqa unless ``metric`` is an MA-CLIP metric."""
    if is_maclip_metric(metric):
        return {*OPTION_DEFAULTS, *PYIQA_WRAPPER_OPTIONS}
    import torch
    import pyiqa.archs
    from pyiqa.default_model_configs import DEFAULT_CONFIGS
    from pyiqa.utils.registry import ARCH_REGISTRY

    arch = DEFAULT_CONFIGS[metric]['metric_opts']['type']
    lazy_import = getattr(pyiqa.archs, '_lazy_import_arch', None)  # private in pyiqa 0.1.16
    if arch not in ARCH_REGISTRY and lazy_import is not None:
        lazy_import(arch)
    if arch not in ARCH_REGISTRY:
        return None
    cls = ARCH_REGISTRY.get(arch)
    if cls.__init__ is torch.nn.Module.__init__:
        return set(PYIQA_WRAPPER_OPTIONS)
    parameters = inspect.signature(cls).parameters.values()
    if any(p.kind is p.VAR_KEYWORD for p in parameters):
        return None
    return set(PYIQA_WRAPPER_OPTIONS) | {p.name for p in parameters if p.kind is not p.VAR_POSITIONAL}


def check_option_names(metric: str, options: Mapping[str, object], how: str = '--option') -> None:
    """A :class:`UserError` for the first option ``metric`` does not take, naming the accepted ones,
    closest first (``how`` says how options are given, e.g. ``--option``)."""
    accepted = accepted_options(metric)
    if accepted is None:
        return
    for name in options:
        if name not in accepted:
            raise UserError(f'{how} {name}=: {unknown_option(metric, name, sorted(accepted))}')


def check_metric_options(metric: str, options: Mapping[str, object], how: str = '--option') -> None:
    """Names, and for MA-CLIP metrics values, of ``options`` checked: without torch for MA-CLIP."""
    check_option_names(metric, options, how)
    if not is_maclip_metric(metric):
        return
    for name, value in options.items():  # each alone first, so the refusal names the option given
        try:
            check_options({name: value})
        except UserError as error:
            raise UserError(f'{how} {name}={value}: {error}') from None
    try:
        check_options(options)  # then together: half and precision must agree
    except UserError as error:
        raise UserError(f'{how}: {error}') from None
