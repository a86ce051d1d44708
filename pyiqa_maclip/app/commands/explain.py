"""``pyiqa-maclip explain PATH ... -o FOLDER``: per-patch quality maps of images, as pictures (see
:mod:`pyiqa_maclip.app.explain`). PATHs are what ``score`` takes (:mod:`..sources`); ``--key`` draws
only the named samples. Images are read, scored and drawn one at a time; one that fails is named
with its error and the others go on (exit status 1)."""
from __future__ import annotations

import argparse
import errno
import gc
import os
import sys
from pathlib import Path

from ...errors import UserError, error_text, one_line
from ...names import LIST_SUFFIXES
from ..files import check_writable_folder, name_max, refuse_special, shown
from ..options import add_backbone, add_device, add_precision, add_source_options, check_device, source_options
from ..sources import SHARD_SUFFIXES

__all__ = ['add_parser', 'run']


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        'explain', help='per-patch quality maps of images, as pictures',
        description='Draw, per image, the photo, the fused MA-CLIP score per pixel (patches averaged), the '
                    'Q_sim and Q_mag maps and the weight of Q_mag, on fixed colour scales, into '
                    'FOLDER/<image stem>_explain.png, or FOLDER/<shard stem>_<key>_explain.png for a sample of a '
                    'shard, Parquet file or dataset. Without --key, every sample of the inputs is drawn.',
        epilog='exit status: 0 every picture written, 1 some images failed (each named on stderr), 2 bad arguments '
               'or nothing could start, 130 interrupted')
    parser.add_argument('images', nargs='+', metavar='PATH',
                        help=f'image file, folder (recursive), text file listing paths ({", ".join(LIST_SUFFIXES)}), '
                             f'WebDataset shard ({", ".join(SHARD_SUFFIXES)}; or a pattern such as '
                             'data-{000..099}.tar), .parquet file, or a datasets folder (saved by save_to_disk, or of '
                             'Parquet/Arrow files as on the Hub)')
    parser.add_argument('-o', '--output', required=True, type=Path, help='the folder to write the pictures into')
    parser.add_argument('--key', action='append', default=None, metavar='KEY',
                        help='shards, Parquet files, datasets: draw only the sample(s) of this key, as score writes '
                             'it in its key column (repeatable; default: every sample)')
    add_source_options(parser)
    add_backbone(parser)
    add_device(parser, 'cpu')
    add_precision(parser)
    parser.add_argument('--overwrite', action='store_true', help='replace pictures an earlier run wrote')
    return parser


def run(args: argparse.Namespace) -> int:
    from ... import weights

    weights.check_environment()
    try:
        weights.check_backbone(args.backbone)
    except UserError as error:
        raise UserError(f'--backbone {args.backbone}: {error}') from None
    check_device(args.device)
    samples, names = _samples_and_names(args)
    if args.output.exists() and not args.output.is_dir():
        raise UserError(f'-o {shown(args.output)} is not a folder: expected the folder to write the pictures into')
    check_writable_folder(args.output, 'the pictures')
    jobs, failed = _pictures_to_draw(samples, names, args.overwrite)
    if jobs:
        failed += _draw_all(jobs, args)
    if failed:
        print(f'pyiqa-maclip explain: {len(samples) - failed} pictures written, {failed} images failed',
              file=sys.stderr)
    return 1 if failed else 0


def _samples_and_names(args: argparse.Namespace) -> tuple[list, list[Path]]:
    """The samples to draw (those of ``--key`` if given) and their pictures' paths. Names are given over every
    sample of the inputs, as ``report --explained`` gives them over the scored collection, whatever --key picks."""
    from ..explain import output_names
    from ..sources import collect_samples

    samples = collect_samples(args.images, source_options(args))
    if not samples:
        raise UserError(f'no image files found in {", ".join(map(shown, args.images))}')
    names = output_names(samples, args.output)
    if args.key is None:
        return samples, names
    if not samples[0].source:
        raise UserError('--key applies to samples of shards, Parquet files and datasets; name image files as PATHs')
    from ..journal import display_path

    wanted = dict.fromkeys(args.key)
    # a key as score writes it (a byte that is not UTF-8 as \xNN, a backslash doubled), or as it is
    written = [display_path(os.fsencode(s.key)) for s in samples]
    keys = {*written, *(s.key for s in samples)}
    if missing := [k for k in wanted if k not in keys]:
        examples = ', '.join(shown(s.key) for s in samples[:3])
        raise UserError(f'{", ".join(f"--key {shown(k)}" for k in missing)}: no sample of the inputs has '
                        f'{"this key" if len(missing) == 1 else "these keys"} (their keys look like {examples}'
                        f'{", ..." if len(samples) > 3 else ""})')
    chosen = [i for i, s in enumerate(samples) if s.key in wanted or written[i] in wanted]
    return [samples[i] for i in chosen], [names[i] for i in chosen]


def _draw_all(jobs: list[tuple[object, Path]], args: argparse.Namespace) -> int:
    """Build the metric as ``score`` builds ``maclip`` with these options (the same numbers), then draw every
    picture; how many images failed."""
    from ..scorers import Recipe

    options = {'backbone': args.backbone, **({'precision': args.precision} if args.precision else {})}
    metric = Recipe('maclip', options).build(args.device or 'cpu').metric
    args.output.mkdir(parents=True, exist_ok=True)
    # What is loaded now stays: frozen, the collection after each picture scans only that picture's
    # objects (a full one takes 0.3 s with torch loaded).
    gc.freeze()
    try:
        return _draw_each(jobs, metric, args)
    finally:
        gc.unfreeze()


def _pictures_to_draw(samples: list, names: list[Path], overwrite: bool) -> tuple[list[tuple[object, Path]], int]:
    """(sample, picture) pairs to draw, and how many samples cannot have a picture (each named on stderr: a name
    the file system refuses, e.g. too long). A picture in the way stops the whole run, before anything loads."""
    from ..explain import sample_label

    jobs, failed, longest = [], 0, name_max(names[0].parent)
    for sample, output in zip(samples, names):
        try:
            if len(os.fsencode(output.name)) > longest:
                raise OSError(errno.ENAMETOOLONG, f'longer than the {longest} bytes the file system takes')
            refuse_special(output, 'the picture')
            exists = output.exists()
        except OSError as error:
            failed += 1
            print(f'pyiqa-maclip explain: {sample_label(sample)}: no picture can be named {shown(output.name)}: '
                  f'{one_line(error.strerror or error)}', file=sys.stderr)
            continue
        if exists and not overwrite:
            raise UserError(f'{shown(output)} exists: pass --overwrite to replace it, or choose another -o folder')
        jobs.append((sample, output))
    return jobs, failed


def _draw_each(jobs: list[tuple[object, Path]], metric, args) -> int:
    """Draw every sample's picture; how many failed."""
    import torch

    from ..explain import MAX_SIDE, draw_explanation, sample_label
    from ..images import read_image

    failed = 0
    for sample, output in jobs:
        try:
            image = read_image(sample)
            size = tuple(image.shape[-2:])
            with torch.inference_mode():
                qmap = metric.quality_maps([image])[0]
            step = max(1, round(max(image.shape[-2:]) / MAX_SIDE))
            picture = image[:, ::step, ::step].expand(3, -1, -1).permute(1, 2, 0).numpy()
            del image
            title = (f'{sample_label(sample, whole=False)}: MA-CLIP {float(qmap.score):.4f} ({qmap.boxes.shape[0]}x'
                     f'{qmap.boxes.shape[1]} patches + the whole image; {args.backbone}, {metric.precision})')
            draw_explanation(picture, qmap, size, title, output)
            gc.collect()  # the rest of the picture's objects refer to one another: freed before the next image
        except Exception as error:  # noqa: BLE001 - a file that cannot be read or drawn: name it, go on
            failed += 1
            print(f'pyiqa-maclip explain: {sample_label(sample)}: {error_text(error)}', file=sys.stderr)
            continue
        print(shown(output))
    return failed

