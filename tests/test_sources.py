"""Collections where they live (issue 29): WebDataset shards, Parquet files and ``datasets`` folders as
sources, keyed by sample; Parquet exports; the guarantees of folder scoring kept for shards.

Shards are built here with ``tarfile``, Parquet files with pyarrow, datasets with ``save_to_disk``;
every run uses the tiny random CLIP checkpoint of conftest.
"""
from __future__ import annotations

import contextlib
import csv
import gzip
import io
import os
import sqlite3
import tarfile
from pathlib import Path

import numpy as np
import torch
import pytest
from PIL import Image

from pyiqa_maclip.app import cli
from pyiqa_maclip.app.sources import (Sample, SourceOptions, collect_samples, expand_pattern, kind_of_input,
                                      split_by_source)
from pyiqa_maclip.app.sources import parquet as parquet_source
from pyiqa_maclip.app.sources import webdataset
from pyiqa_maclip.errors import UserError
from pyiqa_maclip.names import COMPONENTS
from pyiqa_maclip.testing import random_images

pa = pytest.importorskip('pyarrow')
import pyarrow.parquet as pq  # noqa: E402


def encoded(seed: int, fmt: str = 'PNG', size: tuple[int, int] = (48, 40)) -> bytes:
    image = random_images(1, size[0], size[1], 3, seed=seed)[0]
    buffer = io.BytesIO()
    Image.fromarray((image.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)).save(buffer, fmt)
    return buffer.getvalue()


def write_shard(path: Path, members: dict[str, bytes]) -> Path:
    with tarfile.open(path, 'w') as archive:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return path


def gzipped(shard: Path, name: str) -> Path:
    """A copy of ``shard`` compressed with gzip, beside it, named ``name``."""
    target = shard.with_name(name)
    target.write_bytes(gzip.compress(shard.read_bytes(), mtime=0))
    return target


def score(*args) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        status = cli.main(['score', *map(str, args), '--no-progress'])
    return status, out.getvalue(), err.getvalue()


def read_csv(file: Path) -> list[dict]:
    with open(file, newline='', encoding='utf-8') as f:
        return list(csv.DictReader(f))


# ---------------------------------------------------------------- keys and listing, no torch

@pytest.mark.parametrize('name, expected', [
    ('000123.jpg', ('000123', 'jpg')), ('a/b/000123.seg.PNG', ('a/b/000123', 'seg.png')),
    ('dir.x/k.json', ('dir.x/k', 'json')), ('noext', None), ('.hidden', None)])
def test_webdataset_keys_follow_webdatasets_rule(name, expected):
    """webdataset's base_plus_ext: the key is the name up to the first dot of its last part (folders kept)."""
    assert webdataset.sample_key(name) == expected


def test_parquet_keys_are_the_key_value_as_text_else_the_row_number():
    assert [parquet_source.sample_key(v, 7) for v in (None, 12, 'a', b'b')] == ['7', '12', 'a', 'b']


def test_brace_patterns_and_kinds(tmp_path):
    assert expand_pattern('s/data-{008..011}.tar') == [f's/data-{n:03d}.tar' for n in range(8, 12)]
    assert expand_pattern('{a,b}-{1..2}.tar') == ['a-1.tar', 'a-2.tar', 'b-1.tar', 'b-2.tar']
    for name in ('x.tar', 'y.TAR'):
        (tmp_path / name).write_bytes(b'')
    assert expand_pattern(str(tmp_path / '*.tar')) == [str(tmp_path / 'x.tar')]
    assert [kind_of_input(n) for n in ('a.tar', 'a.tar.gz', 'b.TGZ', 'a.parquet', 'a.png', 'a.gz', str(tmp_path))] == \
        ['webdataset', 'webdataset', 'webdataset', 'parquet', 'files', 'files', 'files']


def test_a_file_whose_name_looks_like_a_pattern_is_that_file(tmp_path):
    """Braces and wildcards in an existing name are characters of the name, as in a quoted shell word."""
    for name in ('x{a,b}.tar', 'y{1..2}.tar', 'z[1]*.tar', 'xa.tar'):
        (tmp_path / name).write_bytes(b'')
    for name in ('x{a,b}.tar', 'y{1..2}.tar', 'z[1]*.tar'):
        assert expand_pattern(str(tmp_path / name)) == [str(tmp_path / name)]
    assert expand_pattern(str(tmp_path / 'x{a,c}.tar')) == [str(tmp_path / 'xa.tar'), str(tmp_path / 'xc.tar')]


def test_a_shard_lists_samples_with_their_member_offsets_and_names_what_is_missing(tmp_path):
    png, jpg = encoded(1), encoded(2, 'JPEG')
    shard = write_shard(tmp_path / 'd.tar', {'s/1.png': png, 's/1.json': b'{}', 's/2.jpg': jpg, 's/2.png': png,
                                             's/3.txt': b'no image', '4.webp': encoded(3, 'WEBP')})
    samples = webdataset.shard_samples(str(shard))
    assert [s.key for s in samples] == ['s/1', 's/2', 's/3', '4']
    assert {s.source for s in samples} == {str(shard.resolve())}
    assert webdataset.read(samples[0].locator) == png and webdataset.read(samples[1].locator) == jpg  # jpg first
    with pytest.raises(ValueError, match=r'no image member \(.jpg, .jpeg, .png, .webp\); it has txt'):
        webdataset.read(samples[2].locator)
    chosen = webdataset.shard_samples(str(shard), image_member='png')
    assert webdataset.read(chosen[1].locator) == png and chosen[3].locator[2] is None


@pytest.mark.parametrize('form', [tarfile.GNU_FORMAT, tarfile.PAX_FORMAT, tarfile.USTAR_FORMAT])
def test_long_and_non_ascii_names_are_read_as_tarfile_reads_them(tmp_path, form):
    """Headers the fast scan cannot read (GNU long names, pax) are left to tarfile: the same samples."""
    names = ['d' * 60 + '/' + 'k' * 60 + '.png', 'café/ü.png', 'plain.png']
    if form == tarfile.USTAR_FORMAT:
        names = names[2:]
    with tarfile.open(tmp_path / 's.tar', 'w', format=form) as archive:
        for k, name in enumerate(names):
            info, data = tarfile.TarInfo(name), encoded(k)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    samples = webdataset.shard_samples(str(tmp_path / 's.tar'))
    assert [s.key for s in samples] == [n[:-4] for n in names]
    assert [webdataset.read(s.locator) for s in samples] == [encoded(k) for k in range(len(names))]


def test_a_truncated_shard_keeps_what_is_whole_and_names_the_sample_cut_short(tmp_path):
    whole = write_shard(tmp_path / 'w.tar', {f'{k}.png': encoded(k, size=(64, 64)) for k in range(3)})
    cut = tmp_path / 'cut.tar'
    last = webdataset.shard_samples(str(whole))[-1].locator  # (kind, shard, offset, size)
    cut.write_bytes(whole.read_bytes()[:last[2] + last[3] - 200])  # the last image cut short, no end blocks
    samples = webdataset.shard_samples(str(cut))
    assert [s.key for s in samples[:3]] == ['0', '1', '2']
    assert webdataset.read(samples[1].locator) == encoded(1, size=(64, 64))
    with pytest.raises(ValueError, match='truncated shard'):
        webdataset.read(samples[2].locator)


def test_gzip_shards_list_and_read_as_their_tar_whatever_their_name(tmp_path):
    """A .tar.gz or .tgz lists the same samples as its tar (offsets in the uncompressed tar) and reads
    the same bytes, in order or not; the content decides: a plain tar named .tar.gz, gzip named .tar."""
    members = {f'{k}.png': encoded(k) for k in range(4)} | {'3.txt': b'caption', '4.txt': b'no image'}
    plain = write_shard(tmp_path / 'p.tar', members)
    shards = [gzipped(plain, 'g.tar.gz'), gzipped(plain, 'g.TGZ'), gzipped(plain, 'gzip-named.tar'),
              tmp_path / 'plain-named.tar.gz']
    shards[3].write_bytes(plain.read_bytes())
    expected = webdataset.shard_samples(str(plain))
    for shard in shards:
        samples = collect_samples([shard])
        assert [(s.key, s.locator[2:]) for s in samples] == [(s.key, s.locator[2:]) for s in expected]
        assert webdataset.compressed(str(shard)) == (shard.name != 'plain-named.tar.gz')
        for sample in samples[3::-1] + samples[:4]:  # behind the stream's position: it starts over
            assert webdataset.read(sample.locator) == members[sample.key + '.png']
        with pytest.raises(ValueError, match='no image member'):
            webdataset.read(samples[4].locator)


def test_damaged_gzip_keeps_the_samples_before_the_damage_and_names_the_shard(tmp_path):
    """Truncated gzip data: the samples before the cut are read; the one cut short and the shard's own
    row say why. A wrong CRC (found at the end) is the shard's error row. Empty shards: one row."""
    images = {f'{k}.png': np.random.default_rng(k).bytes(3000) for k in range(4)}  # incompressible
    whole = gzipped(write_shard(tmp_path / 'w.tar', images), 'w.tgz').read_bytes()
    cut = tmp_path / 'cut.tgz'
    cut.write_bytes(whole[:len(whole) // 2])  # inside the second image's data (3.5 KB per sample)
    samples = webdataset.shard_samples(str(cut))
    assert [s.key for s in samples] == ['0', '1', '']
    assert webdataset.read(samples[0].locator) == images['0.png']
    with pytest.raises(ValueError, match=r'the shard ends inside 1\.png \(a truncated shard, or damaged gzip'):
        webdataset.read(samples[1].locator)
    with pytest.raises(ValueError, match=r'the shard cut\.tgz is damaged after its first 2 samples: EOFError: '
                                         'Compressed file ended'):
        webdataset.read(samples[2].locator)
    crc = tmp_path / 'crc.tgz'
    crc.write_bytes(whole[:-8] + bytes([whole[-8] ^ 1]) + whole[-7:])
    samples = webdataset.shard_samples(str(crc))
    assert [s.key for s in samples] == ['0', '1', '2', '3', ''] and 'CRC check failed' in samples[-1].locator[3]
    (tmp_path / 'empty.tgz').write_bytes(b'')
    (tmp_path / 'nothing.tgz').write_bytes(gzip.compress(b''))
    (tmp_path / 'no-members.tgz').write_bytes(gzip.compress(bytes(10240)))
    for name, reason in (('empty.tgz', 'the file is empty'), ('nothing.tgz', 'ReadError: empty file'),
                         ('no-members.tgz', 'the shard holds no samples')):
        assert [(s.key, reason in s.locator[3]) for s in webdataset.shard_samples(str(tmp_path / name))] == \
            [('', True)]


def test_a_damaged_gzip_stream_fails_the_reads_that_reach_the_damage_and_only_those(tmp_path):
    """The shard changed after listing (its data damaged past the first sample): the first sample is read,
    the others fail at once with the reason, and never a traceback."""
    images = {f'{k}.png': np.random.default_rng(k).bytes(3000) for k in range(3)}
    shard = gzipped(write_shard(tmp_path / 'w.tar', images), 'w.tar.gz')
    samples = webdataset.shard_samples(str(shard))
    data = shard.read_bytes()
    shard.write_bytes(data[:len(data) // 2])
    assert webdataset.read(samples[0].locator) == images['0.png']
    for sample in samples[1:]:
        with pytest.raises(ValueError, match=r'the gzip data of the shard w\.tar\.gz is damaged before this sample '
                                             'ends: EOFError'):
            webdataset.read(sample.locator)


def test_listing_and_reading_a_gzip_shard_hold_no_more_than_a_buffer(tmp_path):
    """A 64 MB member (zeros: a few KB compressed) is read through, never held: listing and reading the
    sample after it stay under 2 MB of Python memory (tracemalloc, which counts zlib's output)."""
    import tracemalloc

    with tarfile.open(tmp_path / 'big.tar.gz', 'w:gz') as archive:
        for name, data in (('0.bin', bytes(64 << 20)), ('1.png', encoded(1))):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    tracemalloc.start()
    try:
        samples = webdataset.shard_samples(str(tmp_path / 'big.tar.gz'))
        assert webdataset.read(samples[1].locator) == encoded(1)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert [s.key for s in samples] == ['0', '1'] and peak < 2 << 20, peak


def test_shards_are_split_whole_between_processes():
    pending = [Sample(f'/s{k % 3}.tar', str(k)) for k in range(9)]
    shares = [split_by_source(pending, rank, 2) for rank in range(2)]
    assert sorted(s for share in shares for s in share) == sorted(pending)
    assert [{s.source for s in share} for share in shares] == [{'/s0.tar', '/s2.tar'}, {'/s1.tar'}]


def test_a_shard_that_is_no_file_is_refused_saying_what_it_is(tmp_path):
    (tmp_path / 'folder.tar').mkdir()
    os.mkfifo(tmp_path / 'fifo.tar')
    (tmp_path / 'link.tar').symlink_to(tmp_path / 'gone.tar')
    for name, problem in (('folder.tar', 'is a folder'), ('fifo.tar', 'is a FIFO'), ('link.tar', 'does not exist')):
        with pytest.raises(UserError, match=rf'{name} {problem}: expected a WebDataset shard \(.tar, .tar.gz, .tgz\)'):
            collect_samples([tmp_path / name])


def test_options_of_another_kind_and_mixed_inputs_are_refused(tmp_path):
    shard = write_shard(tmp_path / 'a.tar', {'1.png': encoded(1)})
    with pytest.raises(UserError, match='--image-column applies to Parquet files or datasets folders, and these '
                                        'inputs are WebDataset shards'):
        collect_samples([shard], SourceOptions(image_column='img'))
    (tmp_path / 'b.png').write_bytes(encoded(2))
    with pytest.raises(UserError, match=r'several kinds \(image files and folders, WebDataset shards\)'):
        collect_samples([shard, tmp_path / 'b.png'])


# ---------------------------------------------------------------- Parquet and datasets inputs

def test_parquet_images_as_bytes_structs_or_paths_keyed_by_column_or_row(tmp_path):
    images = [encoded(k) for k in range(5)]
    (tmp_path / 'on_disk.png').write_bytes(images[4])
    table = pa.table({'key': ['a', 'b', 'c', 'd', 'e'], 'image': images,
                      'hf': [{'bytes': b, 'path': None} for b in images[:4]] + [{'bytes': None, 'path': 'on_disk.png'}],
                      'file': ['on_disk.png'] * 5, 'id': [10, 11, 12, 13, 14]})
    pq.write_table(table, tmp_path / 'd.parquet', row_group_size=2)
    samples = collect_samples([tmp_path / 'd.parquet'])
    assert [s.key for s in samples] == ['a', 'b', 'c', 'd', 'e'] and {s.locator[2] for s in samples} == {0, 1, 2}
    assert [parquet_source.read(s.locator) for s in samples] == images
    by_struct = collect_samples([tmp_path / 'd.parquet'], SourceOptions(image_column='hf', key_column='id'))
    assert [s.key for s in by_struct] == ['10', '11', '12', '13', '14']
    assert [parquet_source.read(s.locator) for s in by_struct] == images
    by_path = collect_samples([tmp_path / 'd.parquet'], SourceOptions(image_column='file'))
    assert parquet_source.read(by_path[0].locator) == images[4]
    pq.write_table(table.drop(['key']), tmp_path / 'nokey.parquet')
    assert [s.key for s in collect_samples([tmp_path / 'nokey.parquet'])] == ['0', '1', '2', '3', '4']
    with pytest.raises(UserError, match=r"the column 'id' .* cannot hold images: it is int64"):
        collect_samples([tmp_path / 'd.parquet'], SourceOptions(image_column='id'))
    with pytest.raises(UserError, match="has no column 'nope'"):
        collect_samples([tmp_path / 'd.parquet'], SourceOptions(key_column='nope'))


def test_a_row_without_key_is_refused_and_columns_are_judged_by_their_types(tmp_path):
    """A null in the key column, keyed by its row number, could take another row's key: refused in one line naming
    the row. A struct's bytes must be binary (bytes(10**12) of an int is a terabyte); dictionary-encoded bytes are
    bytes."""
    images = [encoded(k) for k in range(3)]
    pq.write_table(pa.table({'key': ['1', None, 'c'], 'image': images}), tmp_path / 'k.parquet', row_group_size=2)
    with pytest.raises(UserError, match=r"k\.parquet: the key column 'key' has no value in row 1; every row needs a "
                                        'key: name a column with a value in every row with --key-column'):
        collect_samples([tmp_path / 'k.parquet'])
    pq.write_table(pa.table({'id': ['a', 'b', None], 'image': images}), tmp_path / 'late.parquet', row_group_size=2)
    with pytest.raises(UserError, match="the key column 'id' has no value in row 2"):  # counted across row groups
        collect_samples([tmp_path / 'late.parquet'], SourceOptions(key_column='id'))
    pq.write_table(pa.table({'image': [{'bytes': 10 ** 12, 'path': 'x.png'}]}), tmp_path / 'int.parquet')
    with pytest.raises(UserError, match=r'cannot hold images: it is struct<bytes: int64, path: string>; expected'):
        collect_samples([tmp_path / 'int.parquet'])
    pq.write_table(pa.table({'image': [{'bytes': b'x', 'path': 5}]}), tmp_path / 'intpath.parquet')
    with pytest.raises(UserError, match='cannot hold images: it is struct<bytes: binary, path: int64>'):
        collect_samples([tmp_path / 'intpath.parquet'])
    pq.write_table(pa.table({'image': [{'bytes': images[0], 'path': None}]}), tmp_path / 'nullpath.parquet')
    assert [parquet_source.read(s.locator) for s in collect_samples([tmp_path / 'nullpath.parquet'])] == images[:1]
    pq.write_table(pa.table({'image': pa.array(images + images[:1]).dictionary_encode()}), tmp_path / 'dict.parquet')
    assert [parquet_source.read(s.locator) for s in collect_samples([tmp_path / 'dict.parquet'])] == images + images[:1]


def test_a_saved_dataset_is_read_by_its_image_feature(tmp_path):
    datasets = pytest.importorskip('datasets')
    images = [encoded(k) for k in range(3)]
    features = datasets.Features({'picture': datasets.Image(), 'name': datasets.Value('string')})
    dataset = datasets.Dataset.from_dict({'picture': [{'bytes': b, 'path': None} for b in images],
                                          'name': ['x', 'y', 'z']}, features=features)
    dataset.save_to_disk(str(tmp_path / 'ds'))
    assert kind_of_input(str(tmp_path / 'ds')) == 'hf'
    samples = collect_samples([tmp_path / 'ds'])
    assert [s.key for s in samples] == ['0', '1', '2']
    from pyiqa_maclip.app.sources import hf
    assert [hf.read(s.locator) for s in samples] == images
    assert [s.key for s in collect_samples([tmp_path / 'ds'], SourceOptions(key_column='name'))] == ['x', 'y', 'z']


# ---------------------------------------------------------------- scoring shards as a folder is scored

@pytest.fixture(scope='module')
def same_images(tmp_path_factory):
    """Six images as files in a folder and as samples of two shards (the same bytes), plus a shard
    with a damaged image and a sample without one."""
    root = tmp_path_factory.mktemp('same')
    images = {f'{k:02d}': encoded(k, 'PNG' if k % 2 else 'JPEG', size=(40 + 4 * k, 56)) for k in range(6)}
    names = {f'{k:02d}': f'{k:02d}.{"png" if k % 2 else "jpg"}' for k in range(6)}
    (root / 'folder').mkdir()
    for key, data in images.items():
        (root / 'folder' / names[key]).write_bytes(data)
    for shard, keys in (('data-000.tar', ['00', '01', '02']), ('data-001.tar', ['03', '04', '05'])):
        write_shard(root / shard, {names[k]: images[k] for k in keys} | {f'{k}.json': b'{}' for k in keys})
    write_shard(root / 'bad.tar', {'ok.png': images['01'], 'broken.jpg': images['00'][:300], 'text.txt': b'x'})
    return root


def test_shards_score_bitwise_as_the_same_files_into_parquet(same_images, tiny_rn, tmp_path):
    common = ['--backbone', tiny_rn, '--batch-size', 2, '--num-workers', 1]
    assert score(same_images / 'folder', '-o', tmp_path / 'files.parquet', *common)[0] == 0
    status, stdout, _ = score(same_images / 'data-{000..001}.tar', '-o', tmp_path / 'shards.parquet', *common)
    assert status == 0 and 'scored 6 images' in stdout
    files, shards = pq.read_table(tmp_path / 'files.parquet'), pq.read_table(tmp_path / 'shards.parquet')
    assert shards.column_names == ['key', 'shard', *COMPONENTS, 'metric', 'lower_better']
    assert files.column_names[0] == 'path'
    assert shards.column('key').to_pylist() == [f'{k:02d}' for k in range(6)]
    assert shards.column('shard').to_pylist() == [str(same_images / f'data-00{k // 3}.tar') for k in range(6)]
    for column in COMPONENTS:  # the same bytes in the same batches: the same float32 results, bit for bit
        assert shards.column(column).to_pylist() == files.column(column).to_pylist()
    assert set(shards.column('metric').to_pylist()) == {'maclip'} and not any(shards.column('lower_better').to_pylist())


def test_damaged_members_and_samples_without_image_go_to_the_errors_file(same_images, tiny_rn, tmp_path):
    status, stdout, _ = score(same_images / 'bad.tar', '-o', tmp_path / 's.csv', '--backbone', tiny_rn)
    assert status == 1 and 'scored 1 images, 2 failed' in stdout
    assert [(r['key'], r['shard']) for r in read_csv(tmp_path / 's.csv')] == [('ok', str(same_images / 'bad.tar'))]
    errors = {r['key']: r['error'] for r in read_csv(tmp_path / 's.errors.csv')}
    from pyiqa_maclip.app.report.collection import read_collection
    from pyiqa_maclip.app.report.thumbnails import read_thumbnail
    collection = read_collection(tmp_path / 's.csv', 4)  # the report reads the sample back through its shard
    assert [s.key for s in collection.paths] == ['ok'] and read_thumbnail(collection.paths[0], 64) is not None
    assert errors['broken'].startswith('OSError:') and 'runcated' in errors['broken']  # PIL: "Truncated File Read"
    assert errors['text'].startswith('ValueError: no image member')


def test_a_half_done_shard_resumes_within_the_shard_and_refuses_other_settings(same_images, tiny_rn, tmp_path):
    output = tmp_path / 's.csv'
    args = [same_images / 'data-000.tar', same_images / 'data-001.tar', '-o', output, '--backbone', tiny_rn,
            '--batch-size', 2]
    assert score(*args)[0] == 0
    first = output.read_bytes()
    journal = output.with_name(f'.{output.name}.pyiqa-maclip') / 'rank0.sqlite3'
    with contextlib.closing(sqlite3.connect(journal)) as db, db:  # as if killed after the first sample of each shard
        db.execute("DELETE FROM results WHERE key NOT IN (CAST('00' AS BLOB), CAST('03' AS BLOB))")
    status, stdout, _ = score(*args)
    assert status == 0 and '4 processed in this run, 2 done before' in stdout
    assert output.read_bytes() == first
    status, _, stderr = score(*args, '--option', 'box_lam=0.3')
    assert status == 2 and 'other settings' in stderr and 'box_lam was 0.5, now 0.3' in stderr


def test_another_image_member_on_resume_is_refused_as_other_settings(tiny_rn, tmp_path):
    """Samples holding a jpg and a png: a run resumed with another --image-member would mix both images in one
    output; the same member written otherwise (.PNG) resumes. An empty member is a mistake, not the default."""
    shard = write_shard(tmp_path / 'm.tar', {'0.jpg': encoded(0, 'JPEG'), '0.png': encoded(1),
                                             '1.jpg': encoded(2, 'JPEG'), '1.png': encoded(3)})
    args = [shard, '-o', tmp_path / 's.csv', '--backbone', tiny_rn]
    assert score(*args, '--image-member', 'png')[0] == 0
    status, stdout, _ = score(*args, '--image-member', '.PNG')
    assert status == 0 and '0 processed in this run, 2 done before' in stdout
    for other in (['--image-member', 'jpg'], []):
        status, _, stderr = score(*args, *other)
        assert status == 2 and stderr.count('\n') == 1 and 'other settings' in stderr and "'png'" in stderr
    for empty in ('', '.'):
        status, _, stderr = score(*args, '--image-member', empty)
        assert status == 2 and f"--image-member {empty!r}: expected the extension of the member holding" in stderr


def test_gzip_shards_score_as_their_tars_and_a_cut_one_reports_what_it_lost(same_images, tiny_rn, tmp_path):
    """data-000.tgz and data-001.tar.gz give data-000.tar and data-001.tar's scores, value for value; a
    .tgz cut mid-gzip scores the samples before the cut and lists the others' reasons (exit 1)."""
    common = ['--backbone', tiny_rn, '--batch-size', 2, '--num-workers', 1]
    tars = [same_images / 'data-000.tar', same_images / 'data-001.tar']
    compressed = [gzipped(tars[0], 'data-000.tgz'), gzipped(tars[1], 'data-001.tar.gz')]
    assert score(*tars, '-o', tmp_path / 'tar.csv', *common)[0] == 0
    status, stdout, _ = score(*compressed, '-o', tmp_path / 'gz.csv', *common)
    assert status == 0 and 'scored 6 images' in stdout
    plain, packed = read_csv(tmp_path / 'tar.csv'), read_csv(tmp_path / 'gz.csv')
    assert [r['shard'] for r in packed] == [str(compressed[k // 3]) for k in range(6)]
    assert [{**r, 'shard': ''} for r in packed] == [{**r, 'shard': ''} for r in plain]
    data = compressed[0].read_bytes()
    cut = tmp_path / 'cut.tgz'
    cut.write_bytes(data[:len(data) * 2 // 3])
    status, stdout, stderr = score(cut, '-o', tmp_path / 'cut.csv', *common)
    errors = read_csv(tmp_path / 'cut.errors.csv')
    assert status == 1 and 'Traceback' not in stderr and errors[-1]['key'] == ''
    assert 'the shard cut.tgz is damaged after its first' in errors[-1]['error']
    scored = [r['key'] for r in read_csv(tmp_path / 'cut.csv')]
    assert scored and scored == [r['key'] for r in plain[:len(scored)]] and len(scored) + len(errors) - 1 <= 3
    status, _, stderr = score(tmp_path / 'missing.tgz', '-o', tmp_path / 'm.csv', *common)
    assert status == 2 and stderr.strip().endswith('missing.tgz does not exist: expected a WebDataset shard '
                                                   '(.tar, .tar.gz, .tgz)')


@pytest.mark.slow  # kill -9 of a fresh interpreter mid-shard
def test_kill_9_inside_a_shard_resumes_with_the_missing_samples_only(tiny_rn, tiny_metric, tmp_path):
    """A real ``pyiqa-maclip score shard-000.tar shard-001.tar`` killed (SIGKILL, its decoding worker too)
    once its journal holds some but not all of the first shard's samples; a leftover of an export killed
    midway too. The rerun scores only the missing samples and ends in the uninterrupted run's CSV: keys in
    order, values equal or, where batches ran on other threads, both within float32 rounding of float64."""
    import os
    import signal
    import subprocess
    import sys
    import time

    from rounding import assert_within_rounding, rounding_bound

    from pyiqa_maclip.app.images import as_float, read_image

    # 512 x 512 JPEGs: 9 views each, some 50 ms a sample; the 30 samples of the first shard leave a wide window
    images = {f'{k:03d}': encoded(k, 'JPEG', size=(512, 512)) for k in range(36)}
    keys = list(images)
    shards = [write_shard(tmp_path / f'shard-00{n}.tar', {f'{k}.jpg': images[k] for k in part})
              for n, part in enumerate((keys[:30], keys[30:]))]
    args = [*shards, '--backbone', tiny_rn, '--batch-size', 1, '--num-workers', 1]
    assert score(*args, '-o', tmp_path / 'whole.csv')[0] == 0

    output = tmp_path / 'killed' / 'out.csv'
    output.parent.mkdir()
    journal = output.with_name(f'.{output.name}.pyiqa-maclip') / 'rank0.sqlite3'

    def committed() -> int:
        with contextlib.suppress(sqlite3.OperationalError):  # not created yet
            with contextlib.closing(sqlite3.connect(f'file:{journal}?mode=ro', uri=True, timeout=10)) as db:
                return db.execute('SELECT COUNT(*) FROM results').fetchone()[0]
        return 0

    run = subprocess.Popen([sys.executable, '-m', 'pyiqa_maclip', 'score', *map(str, args), '-o', str(output),
                            '--no-progress'], start_new_session=True, stdout=subprocess.DEVNULL,
                           stderr=subprocess.PIPE)
    deadline = time.monotonic() + 300
    while committed() < 3:
        assert run.poll() is None, run.stderr.read().decode()
        assert time.monotonic() < deadline, 'no rows were committed'
        time.sleep(0.01)
    os.killpg(run.pid, signal.SIGKILL)  # the run and its decoding worker
    run.wait()
    run.stderr.close()
    done = committed()
    assert 3 <= done < 30  # inside the first shard
    (journal.parent / 'tmpk3j2h1g0.part').write_bytes(b'half an export')  # as SIGKILL during an export leaves

    status, stdout, _ = score(*args, '-o', output)
    assert status == 0 and f'{36 - done} processed in this run, {done} done before' in stdout
    assert not list(journal.parent.glob('*.part'))
    whole, resumed = read_csv(tmp_path / 'whole.csv'), read_csv(output)
    assert [(r['key'], r['shard']) for r in resumed] == [(r['key'], r['shard']) for r in whole]
    assert [(k, str(shards[k >= '030'])) for k in keys] == [(r['key'], r['shard']) for r in whole]
    differing = [i for i, (a, b) in enumerate(zip(resumed, whole)) if a != b]
    if differing:  # other threads, other sums: each within its rounding bound of the float64 value
        rounding = rounding_bound(tiny_metric, [as_float(read_image(io.BytesIO(images[keys[i]]))) for i in differing])
        for field in COMPONENTS:
            for rows in (resumed, whole):
                assert_within_rounding([float(rows[i][field]) for i in differing], rounding, field)


def test_parquet_input_scores_as_its_files(same_images, tiny_rn, tmp_path):
    images = sorted((same_images / 'folder').iterdir())[:3]
    pq.write_table(pa.table({'image': [p.read_bytes() for p in images]}), tmp_path / 'd.parquet')
    common = ['--backbone', tiny_rn, '--batch-size', 3, '--num-workers', 0]
    assert score(*images, '-o', tmp_path / 'files.csv', *common)[0] == 0
    assert score(tmp_path / 'd.parquet', '--image-column', 'image', '-o', tmp_path / 'p.csv', *common)[0] == 0
    files, rows = read_csv(tmp_path / 'files.csv'), read_csv(tmp_path / 'p.csv')
    assert [r['key'] for r in rows] == ['0', '1', '2'] and {r['shard'] for r in rows} == {str(tmp_path / 'd.parquet')}
    assert [r['score'] for r in rows] == [r['score'] for r in files]


def test_another_image_column_on_rerun_is_refused_as_other_settings(same_images, tiny_rn, tmp_path):
    """A row's key stays its key whatever column holds its image: a rerun reading another column would count
    every row as done with the other column's scores. What chose the images is part of the fingerprint."""
    images = [p.read_bytes() for p in sorted((same_images / 'folder').iterdir())[:2]]
    pq.write_table(pa.table({'image': images, 'thumb': images[::-1]}), tmp_path / 'd.parquet')
    common = ['-o', tmp_path / 's.csv', '--backbone', tiny_rn, '--num-workers', 0]
    assert score(tmp_path / 'd.parquet', *common)[0] == 0
    status, _, stderr = score(tmp_path / 'd.parquet', '--image-column', 'thumb', *common)
    assert status == 2 and "images.image_column was 'image', now 'thumb'; start afresh with --overwrite" in stderr
    status, stdout, _ = score(tmp_path / 'd.parquet', '--image-column', 'image', *common)  # the default, named
    assert status == 0 and '0 processed in this run, 2 done before' in stdout


# ---------------------------------------------------------------- embeddings

def test_embeddings_are_the_global_views_normalised_clip_features_at_no_extra_encoder_pass(
        same_images, tiny_rn, tiny_metric, tmp_path):
    """The column holds, for each image, its global view encoded by CLIP and L2-normalised (float32);
    scoring with embeddings sends exactly the views scoring alone sends through the encoder."""
    from pyiqa_maclip import functional as MF
    from pyiqa_maclip.app.images import read_image

    output = tmp_path / 'e.parquet'
    assert score(same_images / 'data-000.tar', '-o', output, '--backbone', tiny_rn, '--embeddings')[0] == 0
    table = pq.read_table(output)
    assert table.schema.field('embedding').type == pa.list_(pa.float32(), tiny_metric.text_features.shape[1])
    embeddings = np.array(table.column('embedding').to_pylist(), dtype=np.float32)
    np.testing.assert_allclose(np.linalg.norm(embeddings, axis=1), 1, atol=1e-6)
    for row, path in zip(embeddings, sorted((same_images / 'folder').iterdir())[:3]):
        image = read_image(path).float().div(255)[None]
        expected = tiny_metric.encode_views(MF.global_view(image, tiny_metric.patch_size))[0].detach()
        np.testing.assert_allclose(row, (expected / expected.norm()).numpy(), rtol=0, atol=1e-5)

    images = [read_image(p) for p in sorted((same_images / 'folder').iterdir())[:3]]
    encoded_views, encode = [], tiny_metric.encode_views

    def counted(views):
        encoded_views.append(views.shape[0])
        return encode(views)

    tiny_metric.encode_views = counted
    try:
        scores = tiny_metric.score_images(images)
        alone = sum(encoded_views)
        both, _ = tiny_metric.score_and_embed(images)
    finally:
        del tiny_metric.encode_views
    assert sum(encoded_views) == 2 * alone and alone == sum(tiny_metric._num_views(i[None]) for i in images)
    assert torch.equal(both.score, scores.score)


@pytest.mark.parametrize('args, words', [
    (['--metric', 'piqe', '--embeddings', '-o', 'x.parquet'], '--embeddings: piqe computes no CLIP image embedding'),
    (['--embeddings', '-o', 'x.csv'], '--embeddings needs a Parquet output (-o NAME.parquet)')])
def test_embeddings_refused_in_one_line_before_torch(same_images, tmp_path, args, words):
    import subprocess
    import sys
    root = Path(__file__).resolve().parents[1]
    args = [str(tmp_path / a) if a.startswith('x.') else a for a in args]
    run = subprocess.run([sys.executable, '-X', 'importtime', '-m', 'pyiqa_maclip', 'score',
                          str(same_images / 'data-000.tar'), *args], capture_output=True, text=True, cwd=root,
                         timeout=120, check=False)
    assert run.returncode == 2 and words in run.stderr
    imported = {line.split('|')[-1].strip().split('.')[0] for line in run.stderr.splitlines() if '|' in line}
    assert not {'torch', 'pyiqa'} & imported


@pytest.mark.slow  # an accelerate launch of two processes
def test_two_processes_split_by_shard_and_give_the_single_process_output(same_images, tiny_rn, tmp_path):
    """Two processes (each scoring whole shards: test_shards_are_split_whole_between_processes) merge into
    the single process's output, value for value (the same batches: batch size 1)."""
    import os
    import subprocess
    import sys

    from test_scoring import free_port

    shards = [str(same_images / 'data-000.tar'), str(same_images / 'data-001.tar')]
    common = ['--backbone', str(tiny_rn), '--batch-size', '1', '--num-workers', '0']
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as each accelerate CPU process runs
    try:
        assert score(*shards, '-o', tmp_path / 'single.parquet', *common)[0] == 0
    finally:
        torch.set_num_threads(threads)
    launch = [Path(sys.executable).with_name('accelerate'), 'launch', '--multi_gpu', '--num_processes', 2,
              '--num_machines', 1, '--mixed_precision', 'no', '--dynamo_backend', 'no',
              '--main_process_port', free_port()]
    env = {**os.environ, 'HF_HOME': str(tmp_path / 'hf'), 'ACCELERATE_USE_CPU': 'true', 'CUDA_VISIBLE_DEVICES': '',
           'OMP_NUM_THREADS': '1'}
    run = subprocess.run([*map(str, launch), '-m', 'pyiqa_maclip', 'score', *shards, '-o',
                          str(tmp_path / 'two.parquet'), *common, '--no-progress'],
                         env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300, check=False)
    assert run.returncode == 0 and 'on 2 processes' in run.stderr, run.stderr
    assert pq.read_table(tmp_path / 'two.parquet').equals(pq.read_table(tmp_path / 'single.parquet'))


def test_reading_order_follows_each_source_forward():
    """Thumbnails of a compressed shard are read in shard order (each read goes forward through one stream)."""
    from pyiqa_maclip.app.sources import reading_order

    samples = [Sample('/b.tgz', 'x', ('webdataset', '/b.tgz', 4096, 10)), 'photo.png',
               Sample('/a.tar', 'y', ('webdataset', '/a.tar', 2048, 10)),
               Sample('/b.tgz', 'z', ('webdataset', '/b.tgz', 512, 10)),
               Sample('/b.tgz', '', ('webdataset', '/b.tgz', None, 'the shard holds no samples')),
               Sample('/p.parquet', '3', ('parquet', '/p.parquet', 1, 0, 'image')),
               Sample('/p.parquet', '1', ('parquet', '/p.parquet', 0, 1, 'image'))]
    assert reading_order(samples) == [1, 2, 4, 3, 0, 6, 5]


def test_a_key_naming_two_rows_is_refused_and_an_input_given_twice_is_read_once(tmp_path):
    """The journal knows a sample by (source, key): a key column holding one value twice would make two images one
    (the second silently dropped), so it is refused in one line; the same file named twice is listed once."""
    pa = pytest.importorskip('pyarrow')
    import pyarrow.parquet as pq

    pq.write_table(pa.table({'id': ['a', 'b', 'a'], 'image': [encoded(1), encoded(2), encoded(3)]}),
                   tmp_path / 'dup.parquet')
    with pytest.raises(UserError, match=r"dup\.parquet: the key a names two rows; keys must be unique in a file"):
        collect_samples([tmp_path / 'dup.parquet'], SourceOptions(key_column='id'))
    assert [s.key for s in collect_samples([tmp_path / 'dup.parquet'] * 2)] == ['0', '1', '2']
