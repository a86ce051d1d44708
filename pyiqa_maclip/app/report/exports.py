"""A run's exports read without its journal: ``scores.csv`` or ``scores.parquet`` and ``scores.errors.csv``.

Rows are named by a ``path`` column (image files) or by ``key`` and ``shard`` columns (samples of
shards, Parquet files and datasets), as :func:`~..journal.display_path` writes names. A CSV is read
as text (in chunks where a million rows would cost memory), a Parquet file with pyarrow, imported
only for it. A WebDataset sample's image is found again by listing its shard (:class:`Shards`) when
the sample holds a single image member, so that no ``--image-member`` could have chosen another.
Other rows are shown without a picture: samples holding several images, samples of Parquet files
and datasets (the exports do not record the image column, nor where a data file's rows start in
its split), and shards moved or deleted since.
"""
from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from ...errors import UserError, one_line
from ..files import shown
from ..sources import Sample

if TYPE_CHECKING:
    import pandas as pd

__all__ = ['NAMES', 'ERRORS_WRITTEN_BY', 'is_parquet', 'header', 'read', 'read_arrow', 'pyarrow_parquet', 'chunks',
           'names_in', 'identity', 'rows_at', 'Shards']

#: The columns naming a row: an image file's path, or a sample's key and shard.
NAMES = (('path',), ('key', 'shard'))
_CHUNK = 100_000
_WRITTEN_BY = 'the scores written by pyiqa-maclip score (CSV or Parquet)'
ERRORS_WRITTEN_BY = 'the errors file written by pyiqa-maclip score'


def is_parquet(file: Path) -> bool:
    from ..outputs import PARQUET_SUFFIX

    return file.suffix.lower() == PARQUET_SUFFIX


@contextlib.contextmanager
def _reading(file: Path, expected: str) -> Iterator[None]:
    """Whatever stops a scores or errors file being read, as a :class:`UserError` naming it."""
    kind = 'Parquet file' if is_parquet(file) else 'CSV'
    arrow = sys.modules.get('pyarrow')  # imported only if a Parquet file is read
    try:
        yield
    except (OSError, ValueError, *((arrow.ArrowException,) if arrow else ())) as error:
        raise UserError(f'{shown(file)} is not a readable {kind} ({one_line(error)}): expected {expected}') from None


def _parquet(file: Path):
    from ..sources.parquet import import_pyarrow, mapped

    return import_pyarrow().parquet.ParquetFile(mapped(os.fspath(file)))


def _flat_columns(parquet) -> list[str]:
    """The columns a report reads: all but nested ones (the embedding list)."""
    return [field.name for field in parquet.schema_arrow if not field.type.num_fields]


def _frame(batch) -> pd.DataFrame:
    """A pyarrow batch as pandas, text columns' nulls as ''."""
    frame = batch.to_pandas()
    for column in frame.columns:
        if frame[column].dtype == object:
            frame[column] = frame[column].fillna('')
    return frame


def header(file: Path, expected: str = _WRITTEN_BY) -> list[str]:
    """The column names of a scores file (a Parquet file's nested columns left out); ``expected`` ends the
    message of a file that cannot be read."""
    import pandas as pd

    with _reading(file, expected):
        return _flat_columns(_parquet(file)) if is_parquet(file) else list(pd.read_csv(file, nrows=0).columns)


def read(file: Path, columns: Sequence[str] | None = None, expected: str = _WRITTEN_BY) -> pd.DataFrame:
    """The ``columns`` of a scores file whole (default: every column of :func:`header`): a CSV's as text,
    a Parquet file's with their types."""
    import pandas as pd

    with _reading(file, expected):
        if not is_parquet(file):
            return pd.read_csv(file, usecols=columns, dtype=str, keep_default_na=False)
        parquet = _parquet(file)
        return _frame(parquet.read(columns=list(columns or _flat_columns(parquet))))


def read_arrow(file: Path, expected: str = _WRITTEN_BY):
    """A Parquet scores file whole as a pyarrow table, nested columns (the embeddings) included."""
    with _reading(file, expected):
        return _parquet(file).read()


def pyarrow_parquet():
    """pyarrow's Parquet module (one line naming the extra to install if pyarrow is missing)."""
    from ..sources.parquet import import_pyarrow

    return import_pyarrow().parquet


def chunks(file: Path, columns: Sequence[str], size: int | None = None) -> Iterator[pd.DataFrame]:
    """The ``columns`` of a scores file, ``size`` rows at a time (default 100,000), as :func:`read` gives them."""
    import pandas as pd

    with _reading(file, _WRITTEN_BY):
        if is_parquet(file):
            yield from map(_frame, _parquet(file).iter_batches(batch_size=size or _CHUNK, columns=list(columns)))
        else:
            yield from pd.read_csv(file, usecols=list(columns), dtype=str, keep_default_na=False,
                                   chunksize=size or _CHUNK)


def names_in(file: Path, columns: Sequence[str], expected: str = _WRITTEN_BY) -> tuple[str, ...]:
    """The columns naming the rows of ``file`` (one of :data:`NAMES`); a :class:`UserError` if it has neither."""
    found = next((names for names in NAMES if set(names) <= set(columns)), None)
    if found is None:
        raise UserError(f'{shown(file)} has no path column, nor key and shard columns (columns: '
                        f'{", ".join(map(str, columns))}): expected {expected}')
    return found


def _decoded(text: str) -> str:
    """The name :func:`~..journal.display_path` wrote as ``text``; the text itself if it is not in that form
    (a CSV made by hand)."""
    from ..journal import decode_path_text

    try:
        return decode_path_text(text)
    except UserError:
        return text


def identity(*names: str) -> str | Sample:
    """What a row's name columns name: the image file of a ``path`` text (the text itself if such a file
    exists: a CSV from elsewhere), or the sample of ``key, shard`` texts (without a locator)."""
    if len(names) == 1:
        return names[0] if os.path.lexists(names[0]) else _decoded(names[0])
    key, shard = names
    return Sample(shard if os.path.lexists(shard) else _decoded(shard), _decoded(key))


def rows_at(file: Path, rows: Sequence[int], columns: Sequence[str]) -> list[tuple]:
    """The ``columns`` values of the given data rows (0 = the first), in that order, read in chunks."""
    wanted, start = {int(r): None for r in rows}, 0
    for chunk in chunks(file, columns):
        for row in [r for r in wanted if start <= r < start + len(chunk)]:
            wanted[row] = tuple(chunk[c].iloc[row - start] for c in columns)
        start += len(chunk)
    return [wanted[int(r)] for r in rows]


class Shards:
    """Samples found again in their shards, each shard listed once (with the default options, no torch)
    when a picture of one of its samples is first asked for."""

    def __init__(self) -> None:
        self._listed: dict[str, tuple[dict[str, Sample], set[tuple[str, int, int]]]] = {}

    def _listing(self, shard: str) -> tuple[dict[str, Sample], set[tuple[str, int, int]]]:
        """:func:`~..sources.webdataset.listed_again` of ``shard``, once (nothing for what is not a shard)."""
        from ..sources import kind_of_input, webdataset

        if shard not in self._listed:
            self._listed[shard] = {}, set()
            # Only WebDataset shards: which column of a Parquet file held the image, or where a data file's
            # rows start in its dataset's split, is not in the exports; and any other path named there is
            # not walked.
            if os.path.isfile(shard) and kind_of_input(shard) == 'webdataset':
                try:
                    self._listed[shard] = webdataset.listed_again(shard)
                except (UserError, OSError, ValueError):  # moved, damaged, or not of this kind any more
                    pass
        return self._listed[shard]

    def _still_there(self, sample: Sample) -> bool:
        """Whether the shard member a journal's locator names is still that sample's (not rewritten since)."""
        return (sample.key, *sample.locator[2:]) in self._listing(sample.source)[1]

    def __call__(self, image: str | Sample) -> str | Sample:
        """``image`` as :func:`~.thumbnails.read_thumbnail` reads it: a sample without a locator, or whose
        locator no longer names its member (a shard rewritten), gets its shard's (it stays without one if
        its key is not found there)."""
        if isinstance(image, str) or not image.source:
            return image
        if image.locator is not None:
            if image.locator[0] != 'webdataset' or self._still_there(image):
                return image
            image = image._replace(locator=None)
        return self._listing(image.source)[0].get(image.key, image)
