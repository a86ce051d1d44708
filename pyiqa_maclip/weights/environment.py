"""The package's environment variables, read and checked in one place.

A value a variable cannot take raises :class:`EnvironmentValueError` naming the
variable and the values it accepts; nothing is silently read as something else.
"""
from __future__ import annotations

import math
import os
import urllib.parse
from pathlib import Path

__all__ = ['WEIGHTS_DIR_ENV', 'OFFLINE_ENV', 'MIRROR_ENV', 'DEADLINE_ENV', 'DOWNLOAD_DEADLINE',
           'EnvironmentValueError', 'env_flag', 'mirror_base', 'weights_dir', 'download_deadline', 'offline',
           'check_environment']

WEIGHTS_DIR_ENV = 'PYIQA_MACLIP_WEIGHTS_DIR'
OFFLINE_ENV = 'PYIQA_MACLIP_OFFLINE'
MIRROR_ENV = 'PYIQA_MACLIP_MIRROR'
DEADLINE_ENV = 'PYIQA_MACLIP_DOWNLOAD_DEADLINE'
DOWNLOAD_DEADLINE = 300.0  # seconds a whole download may take, unless $PYIQA_MACLIP_DOWNLOAD_DEADLINE says otherwise


class EnvironmentValueError(ValueError):
    """An environment variable of this package holds a value it cannot use."""


_TRUE_WORDS = ('1', 'true', 'yes', 'on')
_FALSE_WORDS = ('0', 'false', 'no', 'off')


def env_flag(name: str, default: bool = False) -> bool:
    """The boolean environment variable ``name``: 1/true/yes/on or 0/false/no/off (any case);
    unset or empty gives ``default``; anything else raises :class:`EnvironmentValueError`."""
    raw = os.environ.get(name, '')
    word = raw.strip().lower()
    if not word:
        return default
    if word in _TRUE_WORDS:
        return True
    if word in _FALSE_WORDS:
        return False
    raise EnvironmentValueError(
        f'{name}={raw!r} is not a yes/no value: expected one of {", ".join(_TRUE_WORDS)} '
        f'or {", ".join(_FALSE_WORDS)}'
    )


def _env_seconds(name: str, default: float) -> float:
    raw = os.environ.get(name, '')
    if not raw.strip():
        return default
    try:
        seconds = float(raw)
    except ValueError:
        seconds = math.nan
    if not (math.isfinite(seconds) and seconds > 0):
        raise EnvironmentValueError(f'{name}={raw!r} is not a number of seconds: expected a positive number such as 600')
    return seconds


def mirror_base() -> str | None:
    """The validated base URL of ``$PYIQA_MACLIP_MIRROR``, or None when unset."""
    raw = os.environ.get(MIRROR_ENV, '')
    if not raw.strip():
        return None
    parts = urllib.parse.urlsplit(raw.strip())
    if not ((parts.scheme in ('http', 'https') and parts.netloc) or (parts.scheme == 'file' and parts.path)):
        raise EnvironmentValueError(
            f'{MIRROR_ENV}={raw!r} is not a mirror URL: expected http://HOST/PATH, https://HOST/PATH or '
            'file:///PATH, the folder holding <sha256>/<file name> as OpenAI\'s server does'
        )
    return raw.strip().rstrip('/')


def weights_dir() -> Path | None:
    raw = os.environ.get(WEIGHTS_DIR_ENV, '')
    if not raw.strip():
        return None
    path = Path(raw).expanduser()
    if path.exists() and not path.is_dir():
        raise EnvironmentValueError(f'{WEIGHTS_DIR_ENV}={raw!r} is not a folder: expected the folder for CLIP weights')
    return path


def download_deadline() -> float:
    """Seconds a whole download may take: ``$PYIQA_MACLIP_DOWNLOAD_DEADLINE``, default 300."""
    return _env_seconds(DEADLINE_ENV, DOWNLOAD_DEADLINE)


def offline() -> bool:
    return env_flag(OFFLINE_ENV)


def check_environment() -> None:
    """Raise :class:`EnvironmentValueError` for the first unusable ``PYIQA_MACLIP_*`` variable,
    so that a command can refuse it before doing any work."""
    offline()
    mirror_base()
    weights_dir()
    download_deadline()
