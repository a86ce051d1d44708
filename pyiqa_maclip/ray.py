"""pyiqa-maclip on Ray Data: :class:`Scorer`, any pyiqa no-reference metric as a ``map_batches`` stage.

    import ray
    from pyiqa_maclip.ray import Scorer

    ds = ray.data.read_webdataset('shards/', decoder=None)
    scored = ds.map_batches(Scorer, fn_constructor_kwargs={'metric': 'maclip', 'image_column': 'jpg'},
                            batch_format='pandas', batch_size=16,
                            compute=ray.data.ActorPoolStrategy(size=2), num_gpus=1)

A thin public face: the stage lives in :mod:`pyiqa_maclip.app.ray_stage` (see docs/ray.md).
"""
from __future__ import annotations

from .app.ray_stage import ERROR_COLUMN, Scorer

__all__ = ['Scorer', 'ERROR_COLUMN']
