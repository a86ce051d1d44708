"""``score --engine ray``: input shards through Ray Data into one Parquet file per shard, resumably.

Plan on the driver (shards, the fingerprint, what is finished, files in the way), read the
unfinished shards as one dataset (``read_webdataset``; Parquet files and folders by tasks that give
each row its key), score with :class:`.ray_stage.Scorer` on an actor pool, and write each shard's
rows when the last of them arrives (:class:`.ray_shards.Manifest`). An interrupted run keeps every
shard written; a rerun reads only the others.

Resources (see docs/ray.md): an actor per GPU (``--num-gpus-per-worker``, fractional to share one)
with ``--cpus-per-worker`` CPUs; without GPUs, actors that leave at least one CPU to the read tasks
(an actor pool holding every CPU starves them and the run never ends).
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
from collections import defaultdict
from pathlib import Path

from ..errors import UserError
from ..names import METRIC_COLUMNS
from .files import held_lock, shown
from .ray_shards import Manifest, Shard, expected_rows, plan_shards, sample_key
from .sources import parquet, repeated_key, webdataset
from .sources.parquet import key_values

__all__ = ['run_ray', 'resources']


def _webdataset_rows(batch, shards: dict):
    """Ray's WebDataset rows (``__key__``, ``__url__``, a column per member) as key, shard, image."""
    import pandas as pd

    members = [name for name in webdataset.IMAGE_MEMBERS if name in batch.columns]  # as the local engine
    images = [next((row[m] for m in members if row[m] is not None and row[m] == row[m]), None)
              for _, row in batch[members].iterrows()] if members else [None] * len(batch)
    paths = [shards[os.path.abspath(url)].path for url in batch['__url__']]
    keys = [sample_key(shards[p], key=k) for p, k in zip(paths, batch['__key__'])]
    return pd.DataFrame({'key': keys, 'shard': paths, 'image': images})


def _encoded(cell):
    """A Parquet image cell as bytes (one type for every source, so that Ray can join them): a Hugging
    Face struct's bytes, or the file at its path; None when there is neither (the row's error says so)."""
    if not isinstance(cell, dict):
        return cell
    if cell.get('bytes') or not cell.get('path'):
        return cell.get('bytes')
    try:
        with open(cell['path'], 'rb') as file:
            return file.read()
    except OSError:
        return None


def _parquet_rows(batch, image_column: str | None, key_column: str | None):
    """Each Parquet file named in ``batch`` as key, shard, image rows, 256 at a time; read as the local
    engine reads it (``--image-column``, default ``image``; keyed by ``--key-column``, else a ``key``
    column, else the row number), with its messages for what is missing."""
    import pandas as pd
    import pyarrow.parquet as pq

    for path in batch['path']:
        image = image_column or parquet.DEFAULT_IMAGE_COLUMN
        names = parquet.check_columns(path, image, key_column)
        key = key_column or (parquet.DEFAULT_KEY_COLUMN if parquet.DEFAULT_KEY_COLUMN in names else None)
        file = pq.ParquetFile(path)
        start, shard, seen = 0, Shard('parquet', path), set()
        for part in file.iter_batches(batch_size=256, columns=[image] + ([key] if key else [])):
            values = key_values(part.column(key), shown(path), key, start) if key else [None] * part.num_rows
            keys = [sample_key(shard, key=value, row_number=start + i) for i, value in enumerate(values)]
            if len(seen.union(keys)) != len(seen) + len(keys):  # as the local engine: one key, one row
                raise repeated_key(path, next(k for i, k in enumerate(keys) if k in seen or k in keys[:i]))
            seen.update(keys)
            images = [_encoded(cell) for cell in part.column(image).to_pylist()]
            yield pd.DataFrame({'key': keys, 'shard': path, 'image': images})
            start += part.num_rows


def _file_rows(batch, folder_of: dict):
    import pandas as pd

    files = [os.path.abspath(p) for p in batch['path']]
    return pd.DataFrame({'key': files, 'shard': [folder_of[f] for f in files], 'image': list(batch['bytes'])})


def _dataset(ray, shards: list[Shard], image_column: str | None, key_column: str | None):
    """The unfinished shards as one dataset of key, shard, image rows."""
    parts = []
    by_kind = defaultdict(list)
    for shard in shards:
        by_kind[shard.kind].append(shard)
    if tars := by_kind['webdataset']:
        parts.append(ray.data.read_webdataset([s.path for s in tars], decoder=None).map_batches(
            _webdataset_rows, fn_kwargs={'shards': {s.path: s for s in tars}}, batch_format='pandas'))
    if files := by_kind['parquet']:
        parts.append(ray.data.from_items([{'path': s.path} for s in files]).map_batches(
            _parquet_rows, fn_kwargs={'image_column': image_column, 'key_column': key_column}, batch_size=1,
            batch_format='pandas'))
    if folders := [s for s in by_kind['files'] if s.files]:
        folder_of = {f: s.path for s in folders for f in s.files}
        parts.append(ray.data.read_binary_files(list(folder_of), include_paths=True).map_batches(
            _file_rows, fn_kwargs={'folder_of': folder_of}, batch_format='pandas'))
    if len(parts) < 2:  # Ray's union of one dataset fails in its planner
        return parts[0] if parts else None
    return parts[0].union(*parts[1:])


def resources(cluster: dict, workers: int | None, cpus_per_worker: float, gpus_per_worker: float | None) -> dict:
    """The actor pool's size and each actor's requests, checked against ``cluster`` (``ray.cluster_resources()``).

    GPUs: one actor per ``gpus_per_worker`` of the cluster's GPUs (default 1 when it has GPUs).
    CPUs only: ``workers`` actors (default: as many as fit) that leave at least one CPU for reading."""
    cpus, gpus = cluster.get('CPU', 0), cluster.get('GPU', 0)
    gpus_per_worker = (1 if gpus else 0) if gpus_per_worker is None else gpus_per_worker
    if gpus_per_worker > gpus:
        raise UserError(f'--num-gpus-per-worker {gpus_per_worker:g}: the Ray cluster has {gpus:g} GPU(s)')
    if gpus_per_worker:
        workers = workers or max(1, int(gpus // gpus_per_worker))
    else:
        workers = workers or max(1, int((cpus - 1) // cpus_per_worker))
    if workers * cpus_per_worker > cpus - 1:
        raise UserError(f'{workers} worker(s) of {cpus_per_worker:g} CPU(s) would hold every CPU of the Ray cluster '
                        f'({cpus:g}) and leave none to read the shards; pass fewer --workers or --cpus-per-worker')
    return {'size': workers, 'num_cpus': cpus_per_worker, 'num_gpus': gpus_per_worker}


def _write(manifest: Manifest, shard: Shard, frames: list, columns, metric: str, lower_better: bool) -> int:
    """The shard's rows as its Parquet file (by key); how many failed."""
    import pandas as pd
    import pyarrow as pa

    rows = (pd.concat(frames, ignore_index=True) if frames else
            pd.DataFrame({name: [] for name in ('key', 'shard', *columns, 'error')}))
    rows = rows.sort_values('key', kind='stable', ignore_index=True)
    rows[METRIC_COLUMNS[0]], rows[METRIC_COLUMNS[1]] = metric, lower_better
    failed = int(rows['error'].notna().sum())
    schema = pa.schema([('key', pa.string()), ('shard', pa.string()), *((c, pa.float64()) for c in columns),
                        ('error', pa.string()), (METRIC_COLUMNS[0], pa.string()), (METRIC_COLUMNS[1], pa.bool_())])
    manifest.write_shard(shard, pa.Table.from_pandas(rows[schema.names], schema=schema, preserve_index=False), failed)
    return failed


def _score_shards(ray, pending: list[Shard], manifest: Manifest, recipe, options: dict, args, pool: dict) -> None:
    from .ray_stage import Scorer

    expected = {s.path: expected_rows(s) for s in pending}
    dataset = _dataset(ray, pending, args.image_column, args.key_column)
    arrived: dict[str, list] = defaultdict(list)
    counts: dict[str, int] = defaultdict(int)
    by_path = {s.path: s for s in pending}

    def write(path: str) -> None:
        _write(manifest, by_path.pop(path), arrived.pop(path, []), recipe.columns, recipe.metric, recipe.lower_better)

    if dataset is not None:
        scored = dataset.map_batches(
            Scorer, batch_format='pandas', batch_size=args.batch_size,
            fn_constructor_kwargs={'metric': recipe.metric, 'image_column': 'image', 'fingerprint': recipe.fingerprint,
                                   'pixel_budget': args.pixel_budget * 1_000_000,
                                   'device': 'cuda' if pool['num_gpus'] else 'cpu', **options},
            compute=ray.data.ActorPoolStrategy(size=pool['size']), num_cpus=pool['num_cpus'],
            num_gpus=pool['num_gpus'] or None).drop_columns(['image'])
        for batch in scored.iter_batches(batch_format='pandas', batch_size=None):
            for path, rows in batch.groupby('shard', sort=False):
                arrived[path].append(rows)
                counts[path] += len(rows)
                if counts[path] >= expected[path]:
                    write(path)
    for path in list(by_path):  # the stream has ended: every row of these has arrived (an empty shard has none)
        write(path)


def _user_error(error: BaseException) -> UserError | None:
    """The :class:`UserError` a Ray task raised (Ray wraps it, with its traceback), or None."""
    seen = set()
    while error is not None and id(error) not in seen:
        if isinstance(error, UserError):
            return error
        seen.add(id(error))
        error = getattr(error, 'cause', None) or error.__cause__
    return None


def run_ray(args: argparse.Namespace, options: dict) -> int:
    """``score --engine ray``: the exit status (0 every sample scored, 1 some failed)."""
    shards = plan_shards(args.inputs, args.extensions and args.extensions.split(','))
    folder = Path(os.path.abspath(args.output))
    if os.path.lexists(folder) and not folder.is_dir():
        raise UserError(f'-o {args.output}: with --engine ray the output is a folder (one Parquet file per shard)')
    folder.mkdir(parents=True, exist_ok=True)
    import ray

    from .scorers import Recipe

    # What chose the images, as the local engine records it: the same keys with another column are other images.
    recipe = Recipe(args.metric, options, images={'image_column': args.image_column} if args.image_column else {})
    with held_lock(folder / '_manifest.lock', f'another pyiqa-maclip run is writing into {folder}'):
        manifest = Manifest(folder, recipe.fingerprint, args.overwrite)
        pending = [s for s in shards if not manifest.finished(s)]
        manifest.check_room(pending)
        manifest.save()
        # 'local': a fresh instance, never the cluster last started here (which may be gone: ray.init() would wait)
        ray.init(address=args.ray_address or 'local', include_dashboard=False if args.ray_address is None else None,
                 logging_level='WARNING', log_to_driver=False)
        logging.getLogger('ray.data').setLevel(logging.WARNING)  # its plans and timings, at INFO
        try:
            ray.data.DataContext.get_current().enable_progress_bars = args.progress
            pool = resources(ray.cluster_resources(), args.workers, args.cpus_per_worker, args.num_gpus_per_worker)
            try:
                _score_shards(ray, pending, manifest, recipe, options, args, pool)
            except Exception as error:
                if (user_error := _user_error(error)) is None:
                    raise
                raise UserError(str(user_error.args[0] if user_error.args else user_error).splitlines()[0]) from None
        except KeyboardInterrupt:
            print('interrupted: every finished shard is kept; run the same command again to resume', file=sys.stderr)
            return 130
        finally:
            ray.shutdown()
        rows, failed = manifest.totals(shards)
    print(f'scored {rows - failed} samples, {failed} failed, in {len(shards)} shard files in {folder}; '
          f'{len(pending)} shards scored in this run, {len(shards) - len(pending)} done before')
    return 1 if failed else 0
