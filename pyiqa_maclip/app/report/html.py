"""An interactive report of a scored collection as ONE offline HTML file, for choosing a threshold.

The page (``templates/report.{html,css,js}``, inlined) draws the score histogram with quantile
marks and a threshold control; moving it updates the counts kept and dropped, the pictures just
either side of it and the paged galleries, and offers the two sides as CSV downloads and the
threshold as the ``pyiqa-maclip select`` command that applies it. Everything it needs is inside
the file: scores, keys and components as JSON in a ``<script type="application/json">`` tag,
pictures as ``data:`` URIs; it loads nothing and sends nothing. :func:`write_html_report` writes
the page of any table; :func:`write_table_report` that of a scored collection (``pyiqa-maclip
report -o X.html``), reading only the images it pictures.

Direction and ties: for a higher-is-better metric the rows with ``score >= t`` are kept, for a
lower-is-better one the rows with ``score <= t``; a row whose score equals the threshold is kept.
Rows without a finite score are neither kept nor dropped: the page counts them apart.

Size: every row costs its key and its numbers (about 100 bytes with MA-CLIP's four components);
pictures are bounded by :data:`MAX_THUMBNAILS` thumbnails and as many quality maps.
"""
from __future__ import annotations

import base64
import io
import json
import math
import os
import re
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np

from ...errors import UserError
from ..files import write_file
from .collection import MARKED_QUANTILES, Table  # the PNG report marks the same quantiles
from .thumbnails import quality_map_png, read_thumbnails

__all__ = ['MAX_THUMBNAILS', 'DEFAULT_THUMBNAILS', 'THUMBNAIL_PIXELS', 'Pictures', 'choose_thumbnail_rows',
           'thumbnail_jpeg', 'write_html_report', 'write_table_report']

#: The most thumbnails (and, apart, quality maps) one page holds: the file's size stays bounded.
MAX_THUMBNAILS = 240
#: Thumbnails :func:`choose_thumbnail_rows` picks unless told otherwise.
DEFAULT_THUMBNAILS = 240
#: The longer side of a thumbnail made by :func:`thumbnail_jpeg`, in pixels.
THUMBNAIL_PIXELS = 160
#: Share of the thumbnails given to each end: the worst and the best rows.
_EXTREMES_SHARE = 0.1
_JPEG = b'\xff\xd8\xff'
_PNG = b'\x89PNG\r\n\x1a\n'
_TEMPLATES = ('report.html', 'report.css', 'report.js')
_LONE_SURROGATE = re.compile('[\ud800-\udfff]')


# ---------------------------------------------------------------- which rows get a picture


def _worst_first(scores: np.ndarray, lower_better: bool) -> np.ndarray:
    """Positions of the finite scores from the worst to the best; ties keep row order."""
    finite = np.flatnonzero(np.isfinite(scores))
    goodness = -scores[finite] if lower_better else scores[finite]
    return finite[np.argsort(goodness, kind='stable')]


def _evenly(count: int, length: int) -> np.ndarray:
    """``count`` evenly spaced positions in ``range(length)``, both ends included."""
    return np.round(np.linspace(0, length - 1, count)).astype(int) if count > 0 else np.zeros(0, int)


def choose_thumbnail_rows(scores: Sequence[float] | np.ndarray, lower_better: bool,
                          count: int = DEFAULT_THUMBNAILS) -> list[int]:
    """Row positions to show as pictures, from the worst to the best (rows without a finite score
    are never chosen).

    With more finite scores than ``count`` (at most :data:`MAX_THUMBNAILS`): the worst and the best
    ``count // 10`` rows each; then, of the rest, half at evenly spaced ranks (quantiles) and half
    nearest to evenly spaced score values (the sparse tails of the range); then, if these overlap,
    more evenly spaced ranks until there are ``count``. Otherwise every finite row.
    """
    if not isinstance(count, (int, np.integer)) or not 1 <= count <= MAX_THUMBNAILS:
        raise UserError(f'the number of thumbnails must be an integer from 1 to {MAX_THUMBNAILS}, got {count!r}')
    scores = np.asarray(scores, dtype=float)
    order = _worst_first(scores, lower_better)
    n = len(order)
    if n <= count:
        return order.tolist()
    extremes = int(count * _EXTREMES_SHARE)
    spread = count - 2 * extremes
    goodness = -scores[order] if lower_better else scores[order]  # ascending
    values = np.linspace(goodness[0], goodness[-1], spread - spread // 2)
    nearest_values = np.minimum(np.searchsorted(goodness, values), n - 1)
    ranks = np.unique(np.concatenate([np.arange(extremes), np.arange(n - extremes, n),
                                      _evenly(spread // 2, n), nearest_values]))
    if len(ranks) < count:
        rest = np.setdiff1d(np.arange(n), ranks, assume_unique=True)
        ranks = np.union1d(ranks, rest[_evenly(count - len(ranks), len(rest))])
    return order[ranks].tolist()


def thumbnail_jpeg(picture, pixels: int = THUMBNAIL_PIXELS, quality: int = 80) -> bytes:
    """A PIL image as the JPEG bytes of a thumbnail whose longer side is at most ``pixels``."""
    picture = picture.convert('RGB')
    picture.thumbnail((pixels, pixels))
    buffer = io.BytesIO()
    picture.save(buffer, format='JPEG', quality=quality)
    return buffer.getvalue()


# ---------------------------------------------------------------- the page's data


def _numbers(column) -> list[float | None]:
    """Floats for JSON, as Python writes them (exact round trip); null for NaN and infinities."""
    return [float(v) if math.isfinite(v) else None for v in np.asarray(column, dtype=float).tolist()]


def _pictures(pictures: Mapping[int, bytes], rows: int, signature: bytes, kind: str, what: str) -> dict[str, str]:
    """``{row: data URI}``; a :class:`UserError` for a row out of range, bytes of another format,
    or more than :data:`MAX_THUMBNAILS` pictures."""
    if len(pictures) > MAX_THUMBNAILS:
        raise UserError(f'{len(pictures)} {what} given: a report holds at most {MAX_THUMBNAILS} (choose them with '
                        'choose_thumbnail_rows)')
    uris = {}
    for row, data in pictures.items():
        if not isinstance(row, (int, np.integer)) or not 0 <= row < rows:
            raise UserError(f'{what}: row {row!r} is not a row position of the table (0 to {rows - 1})')
        if not isinstance(data, (bytes, bytearray)) or not bytes(data[:len(signature)]) == signature:
            raise UserError(f'{what}: row {row} is not {kind.split("/")[1].upper()} bytes')
        uris[str(int(row))] = f'data:{kind};base64,{base64.b64encode(data).decode("ascii")}'
    return uris


def _page_data(table, *, metric: str, lower_better: bool, thumbnails: Mapping[int, bytes], failed, title: str,
               quality_maps: Mapping[int, bytes], scores_file: str) -> dict:
    for column in ('key', 'score'):
        if column not in table.columns:
            raise UserError(f'the table has no {column!r} column: expected columns key, score and optional '
                            f'components, got {", ".join(map(str, table.columns))}')
    for column in ('key', 'error'):
        if column not in failed.columns:
            raise UserError(f'the failed table has no {column!r} column: expected columns key, error')
    scores = np.asarray(table['score'], dtype=float)
    finite = scores[np.isfinite(scores)]
    components = [c for c in table.columns if c not in ('key', 'score', 'metric', 'lower_better')
                  and np.issubdtype(table[c].dtype, np.number)]
    return {
        'title': title, 'metric': metric, 'lowerBetter': bool(lower_better), 'scoresFile': shlex.quote(scores_file),
        'keptFile': 'kept.parquet' if scores_file.lower().endswith('.parquet') else 'kept.csv',
        'keys': [str(k) for k in table['key']], 'scores': _numbers(scores),
        'components': {str(c): _numbers(table[c]) for c in components},
        'quantiles': {f'{q:.0%}': float(np.quantile(finite, q)) for q in MARKED_QUANTILES} if len(finite) else {},
        'thumbnails': _pictures(thumbnails, len(table), _JPEG, 'image/jpeg', 'thumbnails'),
        'qualityMaps': _pictures(quality_maps, len(table), _PNG, 'image/png', 'quality maps'),
        'failed': [[str(k), str(e)] for k, e in zip(failed['key'], failed['error'])],
    }


def _script_json(data: dict) -> str:
    """JSON that is safe inside a ``<script>`` element: no ``<``, ``>`` or ``&`` (so no ``</script>``
    or ``<!--``), line separators and lone surrogates escaped, so the text is valid UTF-8."""
    text = json.dumps(data, ensure_ascii=False, allow_nan=False, separators=(',', ':'))
    text = text.replace('<', '\\u003c').replace('>', '\\u003e').replace('&', '\\u0026')
    text = text.replace('\u2028', '\\u2028').replace('\u2029', '\\u2029')
    return _LONE_SURROGATE.sub(lambda m: f'\\u{ord(m[0]):04x}', text)


def _html_text(text: str) -> str:
    return text.replace('&', '&amp;').replace('<', '&lt;').replace('>', '&gt;')


def _page(data: dict) -> str:
    template, css, script = (resources.files(__package__).joinpath('templates', name).read_text(encoding='utf-8')
                             for name in _TEMPLATES)
    # One pass, so that nothing inserted is searched for placeholders again.
    parts = {'TITLE': _html_text(' '.join(data['title'].split())), 'CSS': css, 'JS': script,
             'DATA': _script_json(data)}
    return re.sub(r'/\*@(TITLE|CSS|JS|DATA)@\*/', lambda m: parts[m[1]], template)


def write_html_report(table, output: Path, *, metric: str, lower_better: bool, thumbnails: Mapping[int, bytes],
                      failed, title: str, quality_maps: Mapping[int, bytes] = {},
                      scores_file: str = 'SCORES.csv') -> Path:
    """Write the interactive report of ``table`` (a pandas DataFrame, one row per sample: ``key`` shown
    as text, ``score``, optional numeric component columns such as ``q_sim``) to ``output``.

    ``thumbnails`` and ``quality_maps`` map row positions (0..n-1) to JPEG and PNG bytes (at most
    :data:`MAX_THUMBNAILS` each); ``failed`` is a DataFrame of ``key, error``; ``scores_file`` is the
    scores CSV named in the ``select`` command the page shows (shell-quoted there).
    The file is written whole or not at all, with the permissions the umask gives; returns ``output``.
    """
    data = _page_data(table, metric=metric, lower_better=lower_better, thumbnails=thumbnails, failed=failed,
                      title=title, quality_maps=quality_maps, scores_file=scores_file)
    with write_file(Path(output), 'w', encoding='utf-8', newline='\n') as file:
        file.write(_page(data))
    return Path(output)


# ---------------------------------------------------------------- a scored collection's page


@dataclass(frozen=True)
class Pictures:
    """What :func:`write_table_report` put in the page."""

    thumbnails: int  # rows pictured
    unreadable: int  # rows chosen whose image could not be read: shown without a picture
    quality_maps: int
    maps_left_out: int  # explain pictures found beyond MAX_THUMBNAILS


def _thumbnails(table: Table, count: int) -> tuple[dict[int, bytes], int]:
    """JPEG thumbnails of the rows :func:`choose_thumbnail_rows` picks (only those images are read), and how
    many of them could not be read."""
    rows = choose_thumbnail_rows(table.rows['score'].to_numpy(dtype=float), table.lower_better, count)
    pictures = dict(zip(rows, read_thumbnails([table.image(row) for row in rows], THUMBNAIL_PIXELS)))
    readable = {row: thumbnail_jpeg(picture) for row, picture in pictures.items() if picture is not None}
    return readable, len(pictures) - len(readable)


def _quality_maps(table: Table, folder: Path, first: Sequence[int]) -> tuple[dict[int, bytes], int]:
    """The ``explain`` pictures in ``folder`` of the table's rows (named as ``explain`` names them, see
    :func:`~..explain.output_names`), those of the rows ``first`` first, at most :data:`MAX_THUMBNAILS`; and
    how many more there were."""
    from ..explain import output_names

    present = set(os.listdir(folder))
    names = output_names([table.file_of(row) for row in range(len(table.rows))], folder)
    found = [row for row in dict.fromkeys([*first, *range(len(names))]) if names[row].name in present]
    maps = {}
    for row in found[:MAX_THUMBNAILS]:
        if (picture := quality_map_png(names[row])) is not None:
            maps[row] = picture
    return maps, max(0, len(found) - MAX_THUMBNAILS)


def write_table_report(table: Table, output: Path, *, title: str, scores_file: str,
                       thumbnails: int = DEFAULT_THUMBNAILS, explained: Path | None = None) -> Pictures:
    """The page of a scored collection (:func:`~.collection.read_table`): every row, ``thumbnails`` pictures
    chosen by :func:`choose_thumbnail_rows`, and the quality maps ``explain`` wrote into ``explained``."""
    pictures, unreadable = _thumbnails(table, thumbnails)
    maps, left_out = _quality_maps(table, explained, list(pictures)) if explained is not None else ({}, 0)
    write_html_report(table.rows, output, metric=table.metric, lower_better=table.lower_better, thumbnails=pictures,
                      failed=table.failed, title=title, quality_maps=maps, scores_file=scores_file)
    return Pictures(len(pictures), unreadable, len(maps), left_out)
