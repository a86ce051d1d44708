"""Image files, folders and path lists (:mod:`..inputs`) as a source: the key is the absolute path."""
from __future__ import annotations

from collections.abc import Iterable, Sequence

from . import Sample

__all__ = ['collect', 'samples_of']


def samples_of(paths: Sequence[str]) -> list[Sample]:
    """Samples of image files (source ``''``, key = the path as given)."""
    return [Sample('', path) for path in paths]


def collect(inputs: Iterable[str], extensions: Iterable[str] | None = None) -> list[Sample]:
    from ..inputs import collect_paths

    return samples_of(collect_paths(inputs, extensions))
