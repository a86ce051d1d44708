"""``pyiqa-maclip score PATH [PATH ...] -o scores.csv [options]``: a collection into a CSV (or Parquet), resumably.

PATH: image files, folders, path lists, WebDataset shards (``.tar``, ``.tar.gz``, ``.tgz``; brace patterns
too), Parquet files, or a ``datasets`` folder (saved with ``save_to_disk``, or of Parquet/Arrow files as
the Hub keeps them; :mod:`..sources`).

Everything that can be checked without torch is checked first (paths, the backbone name,
options, the output, environment variables): a mistake costs a fraction of a second.
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from ...errors import UserError
from ...names import COMPONENTS, LIST_SUFFIXES, VARIANTS
from ...option_spec import OPTION_DEFAULTS
from ..metric_options import check_metric_options, is_maclip_metric
from ..options import (add_device, add_loading, add_precision, add_source_options, check_device, integer_at_least,
                       parse_options, source_options)
from ..ray_options import add_ray_options, check_ray_args
from ..sources import SHARD_SUFFIXES

__all__ = ['add_parser', 'run']


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        'score', help='score image files, folders, path lists, WebDataset shards, Parquet files or datasets into a '
                      'CSV or Parquet file (resumable, shardable)',
        description=f'Score images into a CSV: path,{",".join(COMPONENTS)} with MA-CLIP (the default), or path,score '
                    'with any other pyiqa no-reference metric (--metric); samples of shards, Parquet files and '
                    'datasets are named by key,shard instead of path. -o NAME.parquet writes Parquet. Images that '
                    'cannot be scored are listed in <stem>.errors.csv. Running the same command again resumes; under '
                    '`accelerate launch` the inputs are split across processes (shards whole).',
        epilog='exit status: 0 every image scored, 1 some failed (see the errors file), '
               '2 bad arguments or the run could not start, 130 interrupted (run again to resume)')
    parser.add_argument('inputs', nargs='+', metavar='PATH',
                        help=f'image file, folder (recursive), text file listing paths ({", ".join(LIST_SUFFIXES)}), '
                             f'WebDataset shard ({", ".join(SHARD_SUFFIXES)}; or a pattern such as '
                             'data-{000..099}.tar), .parquet file, or a datasets folder (saved by save_to_disk, or of '
                             'Parquet/Arrow files as on the Hub)')
    parser.add_argument('-o', '--output', required=True, type=Path,
                        help='the file to write: scores.csv, or scores.parquet for Parquet')
    parser.add_argument('--metric', default='maclip',
                        help='a pyiqa no-reference metric, e.g. maclip (default), maclip_vitB32, clipiqa, musiq, piqe')
    parser.add_argument('--option', action='append', default=[], metavar='KEY=VALUE',
                        help='a create_metric option of the metric, e.g. box_lam=0.3 (repeatable)')
    parser.add_argument('--backbone', default=None,
                        help="MA-CLIP's CLIP name or checkpoint path (default: the metric's, RN50 for maclip)")
    add_device(parser, "accelerate's device for the process, else cpu")
    add_loading(parser)
    parser.add_argument('--chunk-size', type=integer_at_least(1), default=None,
                        help="MA-CLIP: most views sent through the image encoder at once (default: 16)")
    add_precision(parser, ' (MA-CLIP)')
    parser.add_argument('--half', action='store_true', help='the same as --precision fp16 (kept for earlier scripts)')
    add_source_options(parser)
    parser.add_argument('--embeddings', action='store_true',
                        help="MA-CLIP, Parquet output: add each image's L2-normalised CLIP embedding of its global "
                             'view (computed for the score anyway) as a float32 list column')
    parser.add_argument('--overwrite', action='store_true',
                        help='discard an earlier run on --output and start afresh (replacing --output, never a link, '
                             'device, FIFO or folder)')
    parser.add_argument('--retry-failed', action='store_true', help='score again the files an earlier run failed on')
    parser.add_argument('--rank-timeout', type=float, default=3600.0, metavar='SECONDS',
                        help='under accelerate: how long the main process waits for the others once its share is '
                             'done (default: 3600)')
    parser.add_argument('--no-progress', dest='progress', action='store_false', help='no progress bar')
    add_ray_options(parser)
    return parser


def _metric_options(args: argparse.Namespace) -> dict:
    """create_metric options from --option and the MA-CLIP flags, checked as far as can be without pyiqa."""
    from ... import weights

    options = parse_options(args.option)
    precision = args.precision or ('fp16' if args.half else None)
    if args.half and precision != 'fp16':
        raise UserError(f'--half means --precision fp16 and contradicts --precision {args.precision}; pass one of them')
    for flag, key, value in (('--backbone', 'backbone', args.backbone), ('--chunk-size', 'chunk_size', args.chunk_size),
                             ('--precision', 'precision', precision)):
        if value is not None:
            if key in options:
                raise UserError(f'{flag} and --option {key}= both given; pass one of them')
            options[key] = value
    if 'backbone' in options:
        try:
            weights.check_backbone(options['backbone'])
        except UserError as error:
            raise UserError(f'--backbone {options["backbone"]}: {error}') from None
    if is_maclip_metric(args.metric):
        check_metric_options(args.metric, options)
        if 'backbone' not in options:  # the metric's own weights: offline, they must be here already
            weights.check_backbone(VARIANTS.get(args.metric, OPTION_DEFAULTS['backbone']))
    return options


def run(args: argparse.Namespace) -> int:
    from ... import weights
    from ..files import WorkFiles, shown
    from ..outputs import PARQUET_SUFFIX, check_output_kind
    from ..sources import collect_samples, files_read, image_choice
    from ..sources.parquet import import_pyarrow

    weights.check_environment()
    check_ray_args(args)
    options = _metric_options(args)
    if args.engine == 'ray':
        from ..ray_run import run_ray

        return run_ray(args, options)
    check_device(args.device)
    if args.rank_timeout <= 0:
        raise UserError(f'--rank-timeout {args.rank_timeout:g}: expected a positive number of seconds')
    # Every process checks alike (under accelerate, one that stopped here would leave the others waiting);
    # the main process's list is the one scored.
    if args.embeddings and not is_maclip_metric(args.metric):
        raise UserError(f'--embeddings: {args.metric} computes no CLIP image embedding; MA-CLIP metrics do')
    check_output_kind(args.output, args.embeddings)
    if args.output.suffix.lower() == PARQUET_SUFFIX:
        import_pyarrow()
    samples = collect_samples(args.inputs, reading := source_options(args))
    if not samples:
        raise UserError(f'no images found in {", ".join(map(shown, args.inputs))}: expected image files, or '
                        'shards, Parquet files or datasets holding at least one sample')
    WorkFiles(args.output.absolute()).check(files_read(samples), args.overwrite)

    # Now torch and pyiqa.
    from ..engine import score_collection
    from ..scorers import Recipe

    recipe = Recipe(args.metric, options, embeddings=args.embeddings, images=image_choice(samples, reading))
    if not recipe.is_maclip and {'backbone', 'chunk_size', 'precision'} & set(options):
        raise UserError(f'--backbone, --chunk-size, --precision and --half are options of MA-CLIP metrics, not of '
                        f'{args.metric}; give its own options with --option KEY=VALUE')
    if not is_maclip_metric(args.metric):  # MA-CLIP's were checked above, without torch
        check_metric_options(args.metric, options)
    log = logging.getLogger('pyiqa_maclip')
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter('%(message)s'))
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    try:
        summary = score_collection(
            samples, args.output, recipe, device=args.device, batch_size=args.batch_size, num_workers=args.num_workers,
            pixel_budget=args.pixel_budget * 1_000_000, overwrite=args.overwrite, retry_failed=args.retry_failed,
            progress=args.progress, rank_timeout=args.rank_timeout)
    except KeyboardInterrupt:
        print('interrupted: every finished batch is kept; run the same command again to resume', file=sys.stderr)
        return 130
    finally:
        log.removeHandler(handler)
    if summary is None:  # another process than the main one: its share is in its journal
        return 0
    print(summary)
    return 0 if summary.complete else 1
