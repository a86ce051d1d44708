"""Folders of a Hugging Face dataset's Parquet/Arrow files, as the Hub keeps them (issue 29, point 4):
the split's files as ``datasets`` finds them, keyed by the row index across the split, ``--split``.

Datasets are made here with ``datasets`` (``to_parquet``, ``save_to_disk``) or written with pyarrow.
"""
from __future__ import annotations

import shutil
import sys

import pytest

from pyiqa_maclip.app.sources import SourceOptions, collect_samples, kind_of_input, sample_input
from pyiqa_maclip.errors import UserError

from test_sources import encoded, read_csv, score

datasets = pytest.importorskip('datasets')
pa = pytest.importorskip('pyarrow')
import pyarrow.parquet as pq  # noqa: E402

IMAGES = [encoded(k, 'PNG' if k % 2 else 'JPEG', size=(40 + 4 * k, 48)) for k in range(5)]


def dataset(rows: range):
    features = datasets.Features({'picture': datasets.Image(), 'name': datasets.Value('string')})
    return datasets.Dataset.from_dict({'picture': [{'bytes': IMAGES[k], 'path': None} for k in rows],
                                       'name': [f'n{k}' for k in rows]}, features=features)


@pytest.fixture(scope='module')
def hub(tmp_path_factory):
    """``hub/``: train in two Parquet shards (rows 0-2, 3-4) and test in one (rows 3-4), as push_to_hub
    lays them out, with the download's hidden cache folder; ``images/``: the same bytes as files."""
    root = tmp_path_factory.mktemp('hub')
    (root / 'hub' / 'data').mkdir(parents=True)
    for name, rows in (('train-00000-of-00002', range(3)), ('train-00001-of-00002', range(3, 5)),
                       ('test-00000-of-00001', range(3, 5))):
        dataset(rows).to_parquet(str(root / 'hub' / 'data' / f'{name}.parquet'))
    (root / 'hub' / 'README.md').write_text('---\nlicense: mit\n---\n# pictures\n')
    (root / 'hub' / '.cache' / 'huggingface').mkdir(parents=True)
    (root / 'hub' / '.cache' / 'huggingface' / 'x.parquet.metadata').write_text('')
    (root / 'images').mkdir()
    for k, data in enumerate(IMAGES):
        (root / 'images' / f'{k}.{"png" if k % 2 else "jpg"}').write_bytes(data)
    return root


def test_the_split_of_a_hub_folder_is_keyed_by_row_index_across_its_shards(hub):
    assert kind_of_input(str(hub / 'hub')) == 'hf'
    samples = collect_samples([hub / 'hub'])  # train: the default
    assert [s.key for s in samples] == ['0', '1', '2', '3', '4']
    shards = [str(hub / 'hub' / 'data' / f'train-0000{k}-of-00002.parquet') for k in (0, 0, 0, 1, 1)]
    assert [s.source for s in samples] == shards
    assert [sample_input(s).getvalue() for s in samples] == IMAGES
    test = collect_samples([hub / 'hub'], SourceOptions(split='test'))
    assert [s.key for s in test] == ['0', '1'] and [sample_input(s).getvalue() for s in test] == IMAGES[3:]
    by_name = collect_samples([hub / 'hub'], SourceOptions(key_column='name', split='test'))
    assert [s.key for s in by_name] == ['n3', 'n4']
    with pytest.raises(UserError, match=r"--split valid: the dataset .* has no such split \(its splits: train, test\)"):
        collect_samples([hub / 'hub'], SourceOptions(split='valid'))
    with pytest.raises(UserError, match="has no column 'id'"):
        collect_samples([hub / 'hub'], SourceOptions(key_column='id'))


def test_several_splits_without_train_need_split(tmp_path):
    for split in ('validation', 'test'):
        (tmp_path / 'd' / split).mkdir(parents=True)
        dataset(range(2)).to_parquet(str(tmp_path / 'd' / split / '0.parquet'))
    with pytest.raises(UserError, match=r'has several splits \(validation, test\): choose one with --split NAME'):
        collect_samples([tmp_path / 'd'])
    assert len(collect_samples([tmp_path / 'd'], SourceOptions(split='test'))) == 2


def test_arrow_files_stream_and_file_format(tmp_path):
    """Arrow data files as datasets writes them (the IPC stream format) and in the IPC file format."""
    dataset(range(3)).save_to_disk(str(tmp_path / 'saved'))
    (tmp_path / 'd' / 'train').mkdir(parents=True)
    shutil.copy(next((tmp_path / 'saved').glob('*.arrow')), tmp_path / 'd' / 'train' / 'a-00000.arrow')
    table = dataset(range(3, 5)).data.table
    with pa.ipc.new_file(str(tmp_path / 'd' / 'train' / 'a-00001.arrow'), table.schema) as writer:
        writer.write_table(table)
    samples = collect_samples([tmp_path / 'd'])
    assert [s.key for s in samples] == ['0', '1', '2', '3', '4']
    assert [sample_input(s).getvalue() for s in samples] == IMAGES


def test_a_folder_without_image_feature_names_the_option(tmp_path):
    (tmp_path / 'd' / 'data').mkdir(parents=True)
    pq.write_table(pa.table({'jpg': IMAGES[:2], 'id': [1, 2]}), tmp_path / 'd' / 'data' / 'train-0.parquet')
    with pytest.raises(UserError, match=r'has no Image feature \(columns: unknown\); name the column holding the '
                                        'images with --image-column'):
        collect_samples([tmp_path / 'd'])
    samples = collect_samples([tmp_path / 'd'], SourceOptions(image_column='jpg'))
    assert [sample_input(s).getvalue() for s in samples] == IMAGES[:2]
    with pytest.raises(UserError, match="the column 'id' .* cannot hold images: it is int64"):
        collect_samples([tmp_path / 'd'], SourceOptions(image_column='id'))


def test_a_row_without_key_is_refused_in_datasets_too(tmp_path):
    """The row named by its index in the split (the second file's first row is row 2)."""
    (tmp_path / 'd' / 'data').mkdir(parents=True)
    for number, names in enumerate((['a', 'b'], [None, 'd'])):
        pq.write_table(pa.table({'jpg': IMAGES[:2], 'id': names}), tmp_path / 'd' / 'data' / f'train-{number}.parquet')
    with pytest.raises(UserError, match="train-1.parquet: the key column 'id' has no value in row 2; every row"):
        collect_samples([tmp_path / 'd'], SourceOptions(image_column='jpg', key_column='id'))
    saved = datasets.Dataset.from_dict({'picture': [{'bytes': b, 'path': None} for b in IMAGES[:2]],
                                        'name': ['x', None]}, features=dataset(range(0)).features)
    saved.save_to_disk(str(tmp_path / 'saved'))
    with pytest.raises(UserError, match=r"data-00000-of-00001\.arrow: the key column 'name' has no value in row 1"):
        collect_samples([tmp_path / 'saved'], SourceOptions(key_column='name'))


def test_saved_dataset_dict_splits(tmp_path):
    datasets.DatasetDict({'train': dataset(range(3)), 'test': dataset(range(3, 5))}).save_to_disk(str(tmp_path / 'dd'))
    test = collect_samples([tmp_path / 'dd'], SourceOptions(split='test'))
    assert [s.key for s in test] == ['0', '1'] and {s.source for s in test} == {str(tmp_path / 'dd' / 'test')}
    assert [sample_input(s).getvalue() for s in test] == IMAGES[3:]
    dataset(range(2)).save_to_disk(str(tmp_path / 'one'))
    with pytest.raises(UserError, match='--split test: .* is one dataset saved by save_to_disk, without splits'):
        collect_samples([tmp_path / 'one'], SourceOptions(split='test'))


def test_which_folders_are_datasets(tmp_path):
    """Image folders stay image folders, even holding a Parquet file; Parquet/Arrow files up to two
    folders down, or a README listing configs, make a dataset folder."""
    (tmp_path / 'photos' / 'cats').mkdir(parents=True)
    (tmp_path / 'photos' / 'cats' / 'a.png').write_bytes(IMAGES[1])
    (tmp_path / 'photos' / 'index.parquet').write_bytes(b'')
    (tmp_path / 'deep' / 'default' / 'train').mkdir(parents=True)
    (tmp_path / 'deep' / 'default' / 'train' / '0000.parquet').write_bytes(b'')
    (tmp_path / 'carded').mkdir()
    (tmp_path / 'carded' / 'README.md').write_text('---\nconfigs:\n- config_name: default\n'
                                                   '  data_files: x/*/*/*.parquet\n---\n')
    (tmp_path / 'hidden' / '.cache').mkdir(parents=True)
    (tmp_path / 'hidden' / '.cache' / 'a.arrow').write_bytes(b'')
    kinds = {name: kind_of_input(str(tmp_path / name)) for name in ('photos', 'deep', 'carded', 'hidden')}
    assert kinds == {'photos': 'files', 'deep': 'hf', 'carded': 'hf', 'hidden': 'files'}


def test_several_configs_and_other_formats_are_refused_in_one_line(tmp_path):
    (tmp_path / 'cfg' / 'a').mkdir(parents=True)
    dataset(range(2)).to_parquet(str(tmp_path / 'cfg' / 'a' / 'x.parquet'))
    (tmp_path / 'cfg' / 'README.md').write_text('---\nconfigs:\n- config_name: first\n  data_files: a/*.parquet\n'
                                                 '- config_name: second\n  data_files: a/*.parquet\n---\n')
    with pytest.raises(UserError, match=r'several configs in its README.md \(first, second\) and no default'):
        collect_samples([tmp_path / 'cfg'])
    (tmp_path / 'csv' / 'data').mkdir(parents=True)
    (tmp_path / 'csv' / 'data' / 'train.csv').write_text('a,b\n1,2\n')
    (tmp_path / 'csv' / 'README.md').write_text('---\ndataset_info:\n  features: []\n---\n')
    with pytest.raises(UserError, match=r"holds csv data files \(datasets' csv builder\); expected Parquet or Arrow"):
        collect_samples([tmp_path / 'csv'])
    (tmp_path / 'bad' / 'data').mkdir(parents=True)
    (tmp_path / 'bad' / 'data' / 'train-00000-of-00001.parquet').write_bytes(b'PAR1 not really')
    with pytest.raises(UserError, match='cannot be read'):
        collect_samples([tmp_path / 'bad'])


def test_without_the_datasets_package_a_data_file_folder_names_the_extra(hub, monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, 'datasets', None)  # import datasets -> ImportError
    monkeypatch.setitem(sys.modules, 'datasets.load', None)
    monkeypatch.setitem(sys.modules, 'datasets.data_files', None)
    with pytest.raises(UserError, match=r"needs the datasets package: pip install 'pyiqa-maclip\[hf\]'"):
        collect_samples([hub / 'hub'])


def test_a_hub_folder_scores_bitwise_as_the_same_files(hub, tiny_rn, tmp_path):
    common = ['--backbone', tiny_rn, '--batch-size', 5, '--num-workers', 0]
    assert score(hub / 'images', '-o', tmp_path / 'files.csv', *common)[0] == 0
    status, stdout, _ = score(hub / 'hub', '-o', tmp_path / 'hub.csv', *common)
    assert status == 0 and 'scored 5 images' in stdout
    files, rows = read_csv(tmp_path / 'files.csv'), read_csv(tmp_path / 'hub.csv')
    assert [r['key'] for r in rows] == ['0', '1', '2', '3', '4']
    assert [r['score'] for r in rows] == [r['score'] for r in files]  # the same bytes, the same batch: bit for bit
    status, _, stderr = score(hub / 'hub', '--split', 'nope', '-o', tmp_path / 'x.csv', *common)
    assert status == 2 and '--split nope: the dataset' in stderr and len(stderr.strip().splitlines()) == 1
    status, _, stderr = score(hub / 'images', '--split', 'test', '-o', tmp_path / 'y.csv', *common)
    assert status == 2 and '--split applies to datasets folders, and these inputs are image files and folders' in stderr


def test_odd_names_links_and_damaged_files(hub, tmp_path):
    """A name that is not UTF-8 (pyarrow opens only UTF-8 names: Python opens the files); a line break,
    which datasets' patterns miss, and a damaged save_to_disk folder: one line each; a folder given
    through a link: its name kept in the sources."""
    odd = tmp_path / b'odd\xff'.decode('utf-8', 'surrogateescape')
    shutil.copytree(hub / 'hub', odd)
    samples = collect_samples([odd])
    assert [sample_input(s).getvalue() for s in samples] == IMAGES
    assert samples[0].source == str(odd / 'data' / 'train-00000-of-00002.parquet')
    plain = odd / 'data' / 'train-00001-of-00002.parquet'
    assert [sample_input(s).getvalue() for s in collect_samples([plain], SourceOptions(image_column='picture'))] \
        == IMAGES[3:]
    shutil.copytree(hub / 'hub', tmp_path / 'line\nbreak')
    with pytest.raises(UserError, match=r'datasets finds no parquet file of the split train in .*line\\nbreak; '
                                        'a line break .* defeats its file patterns: rename the folder'):
        collect_samples([tmp_path / 'line\nbreak'])
    (tmp_path / 'link').symlink_to(hub / 'hub')
    linked = collect_samples([tmp_path / 'link'])[0].source
    assert linked == str(tmp_path / 'link' / 'data' / 'train-00000-of-00002.parquet')
    dataset(range(2)).save_to_disk(str(tmp_path / 'saved'))
    (tmp_path / 'saved' / 'state.json').write_text('{not json')
    with pytest.raises(UserError, match=r'state.json cannot be read \(.*\); expected the file save_to_disk writes'):
        collect_samples([tmp_path / 'saved'])
