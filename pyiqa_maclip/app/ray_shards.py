"""The shards of an ``--engine ray`` run and its record, torch- and Ray-free.

An input shard is a WebDataset tar, a Parquet file or a folder of image files; each becomes one
Parquet file in the output folder, named after it (``a.tar`` -> ``a.parquet``). The output folder's
``_manifest.json`` records the run's fingerprint and, per input shard, the file written and its
size and SHA-256: a shard is finished while its file holds those bytes. A shard file is written
under a temporary name and renamed when complete, and is named in the manifest before it is
written, so a rerun may replace an unfinished one and never touches a file it did not write.
"""
from __future__ import annotations

import json
import os
import tarfile
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import UserError
from .files import Content, content, kind_of, same_content, shown, write_file
from .inputs import collect_paths
from .journal import differences
from .sources import SHARD_SUFFIXES, kind_of_input, parquet, webdataset

__all__ = ['Shard', 'plan_shards', 'expected_rows', 'Manifest', 'MANIFEST']

MANIFEST = '_manifest.json'
_FORMAT = 'pyiqa-maclip ray manifest 1'


@dataclass(frozen=True)
class Shard:
    """One input shard: ``kind`` is 'webdataset', 'parquet' or 'files'; ``path`` is absolute;
    ``files`` the images of a folder."""

    kind: str
    path: str
    files: tuple[str, ...] = field(default=(), repr=False)

    @property
    def output_name(self) -> str:
        name = Path(self.path).name
        for suffix in (*SHARD_SUFFIXES, '.parquet'):
            if name.lower().endswith(suffix):
                return name[:-len(suffix)] + '.parquet'
        return name + '.parquet'


def _shard(item: str, extensions) -> Shard:
    path = os.path.abspath(item)
    if os.path.isdir(path) and kind_of_input(path) == 'hf':
        raise UserError(f'{shown(item)} is a datasets folder: --engine ray reads WebDataset shards, Parquet files '
                        'and folders of images; score it without --engine ray')
    if os.path.isdir(path):
        return Shard('files', path, tuple(collect_paths([path], extensions)))
    if not os.path.isfile(path):
        raise UserError(f'{item!r} does not exist: expected a WebDataset tar, a Parquet file or a folder of images')
    if path.lower().endswith(SHARD_SUFFIXES):
        if not path.lower().endswith('.tar') and not webdataset.compressed(path):
            # Ray decompresses by the name (pyarrow's codec for .gz) and fails deep in a task on plain tar data
            raise UserError(f'{shown(item)} is named as gzip-compressed but holds plain tar data: --engine ray '
                            'reads it under a .tar name (rename it), or score it without --engine ray')
        return Shard('webdataset', path)
    if path.lower().endswith('.parquet'):
        return Shard('parquet', path)
    raise UserError(f'{item!r}: --engine ray reads WebDataset shards ({", ".join(SHARD_SUFFIXES)}), Parquet files '
                    '(.parquet) or folders of images')


def plan_shards(inputs, extensions=None) -> list[Shard]:
    """The input shards named by ``inputs``, each once; a :class:`UserError` if two would write one file."""
    shards = list({s.path: s for s in (_shard(item, extensions) for item in inputs)}.values())
    by_name: dict[str, str] = {}
    for shard in shards:
        if (other := by_name.setdefault(shard.output_name, shard.path)) != shard.path:
            raise UserError(f'{other} and {shard.path} would both be written to {shard.output_name}: '
                            'rename one, or score them into different output folders')
    return shards


def sample_key(shard: Shard, key=None, row_number: int | None = None, file: str | None = None) -> str:
    """A sample's key, as the local engine's sources give it: a WebDataset sample's ``__key__`` (Ray's
    reader splits member names by webdataset's rule, as :func:`.sources.webdataset.sample_key`), a
    Parquet row's key (:func:`.sources.parquet.sample_key`), a file's absolute path."""
    if shard.kind == 'webdataset':
        return str(key)
    if shard.kind == 'parquet':
        return parquet.sample_key(key, row_number)
    return os.path.abspath(file)


def expected_rows(shard: Shard) -> int:
    """How many samples the shard holds: runs of tar members sharing a key, Parquet rows, files."""
    if shard.kind == 'files':
        return len(shard.files)
    if shard.kind == 'parquet':
        import pyarrow.parquet as pq

        return pq.ParquetFile(shard.path).metadata.num_rows
    count, previous = 0, None
    with tarfile.open(shard.path, 'r:*') as archive:
        for member in archive:
            split = webdataset.sample_key(member.name) if member.isreg() else None  # Ray's key.suffix split too
            if split and split[0] != previous:
                count, previous = count + 1, split[0]
    return count


class Manifest:
    """``out/_manifest.json``: the fingerprint, and per input shard its file's name and content."""

    def __init__(self, folder: Path, fingerprint: dict, overwrite: bool = False) -> None:
        self.folder, self.file = folder, folder / MANIFEST
        fingerprint = json.loads(json.dumps(fingerprint, sort_keys=True))
        stored = self._read()
        self.owned = {entry['output'] for entry in stored.get('shards', {}).values()}  # ours to replace
        if stored.get('shards') and stored['fingerprint'] != fingerprint and not overwrite:
            raise UserError(f'{self.folder} holds shards scored with other settings: '
                            + '; '.join(differences(stored['fingerprint'], fingerprint))
                            + '; choose another output folder, or pass --overwrite to score every shard afresh')
        self.data = {'format': _FORMAT, 'fingerprint': fingerprint,
                     'shards': {} if overwrite else stored.get('shards', {})}

    def _read(self) -> dict:
        if kind := kind_of(self.file):
            raise UserError(f'{self.file} is {kind}; expected the manifest of a pyiqa-maclip ray run')
        if not self.file.exists():
            return {}
        try:
            data = json.loads(self.file.read_text(encoding='utf-8'))
        except (ValueError, UnicodeDecodeError) as error:
            raise UserError(f'{self.file} is not a manifest pyiqa-maclip can read ({error}); move it away') from None
        if not isinstance(data, dict) or data.get('format') != _FORMAT:
            raise UserError(f'{self.file} was not written by this version of pyiqa-maclip; move it away')
        return data

    def finished(self, shard: Shard) -> bool:
        entry = self.data['shards'].get(shard.path)
        return bool(entry and entry.get('content')) and same_content(self.folder / entry['output'],
                                                                     Content(*entry['content']))

    def check_room(self, shards) -> None:
        """A :class:`UserError` if a shard's file is in the way: there, and not written by a run here."""
        for shard in shards:
            target = self.folder / shard.output_name
            if os.path.lexists(target) and (shard.output_name not in self.owned or kind_of(target)):
                raise UserError(f'{target} is in the way: it was not written by a pyiqa-maclip ray run here; '
                                'move it away or choose another output folder')

    def save(self) -> None:
        with write_file(self.file, encoding='utf-8') as file:
            json.dump(self.data, file, indent=1, sort_keys=True)

    def write_shard(self, shard: Shard, table, failed: int) -> None:
        """Write ``table`` (pyarrow) as the shard's file: named in the manifest first, then written
        under a temporary name and renamed, then its content recorded."""
        import pyarrow.parquet as pq

        name = shard.output_name
        self.data['shards'][shard.path] = {'output': name, 'content': None, 'rows': table.num_rows,
                                          'failed': failed}
        self.owned.add(name)
        self.save()
        with write_file(self.folder / name, 'wb') as file:
            pq.write_table(table, file)
        self.data['shards'][shard.path]['content'] = list(content(self.folder / name))
        self.save()

    def totals(self, shards) -> tuple[int, int]:
        """Rows and failed rows of the finished ``shards``."""
        entries = [self.data['shards'][s.path] for s in shards if self.finished(s)]
        return sum(e['rows'] for e in entries), sum(e.get('failed', 0) for e in entries)
