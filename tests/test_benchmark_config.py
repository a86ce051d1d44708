"""The benchmark's input side: the YAML configuration and the (image, MOS) tables it points to.

Every rejection is checked for a message that names where the problem is: the YAML
path or key and line of the configuration, or the line (CSV, TSV) or row (.xlsx) of
a MOS table. Expected line numbers are counted by hand from the literal tables
written here (the header is line 1). Nothing is scored: these tests build no metric.
The paper's per-dataset preprocessing is checked here too, down to the resized pixels.
"""
from __future__ import annotations

import math
import re
import zipfile
from pathlib import Path

import numpy as np
import openpyxl
import pandas as pd
import pytest
import torch
import yaml
from PIL import Image
from torchvision.transforms.functional import to_tensor

from pyiqa_maclip.app import cli
from pyiqa_maclip.app.benchmark.resolve import load_config, parse_config
from pyiqa_maclip.app.benchmark.schema import MAX_CONFIG_BYTES
from pyiqa_maclip.app.benchmark.specs import BenchmarkConfigError, MetricSpec, file_stem
from pyiqa_maclip.app.benchmark.datasets import Item, load_items
from pyiqa_maclip.app.images import as_float, read_image

OPTIONS = Path(__file__).resolve().parents[1] / 'options'
_DATA = {'synth': {'images': 'img', 'mos': 'mos.csv'}}
_PIQE = {'piqe': {}}


def _one_line_error(raw, read=parse_config) -> str:
    """The message of ``read(raw)``'s BenchmarkConfigError, which must be one line."""
    with pytest.raises(BenchmarkConfigError) as error:
        read(raw)
    message = str(error.value)
    assert '\n' not in message
    return message


# ---------------------------------------------------------------- configuration structure


@pytest.mark.parametrize('config, message', [
    ({'datasets': _DATA, 'metrics': _PIQE, 'extra': 1}, "the configuration: unknown key 'extra'"),
    ({'datasets': _DATA, 'metrics': {}}, 'metrics: needs at least one entry'),
    ({'datasets': _DATA}, 'metrics: needs at least one entry'),
    ({'datasets': None, 'metrics': _PIQE}, 'datasets: needs at least one entry'),
    ([1, 2], 'the configuration must be a mapping (with keys datasets: and metrics:), got [1, 2]'),
    ({'datasets': [1], 'metrics': _PIQE}, 'datasets must be a mapping'),
    ({'datasets': {'synth': {'images': 'img', 'mos': 'm.csv', 'colour': 1}}, 'metrics': _PIQE},
     "datasets.synth: unknown key 'colour'"),
    ({'datasets': {'synth': {'images': 'img'}}, 'metrics': _PIQE}, 'datasets.synth: mos: is missing'),
    ({'datasets': {'spaq': {'image_column': 'x'}}, 'metrics': _PIQE},
     "datasets.spaq: unknown key 'image_column'; expected keys: resize, resize_mode, pyiqa, root"),
    ({'datasets': {'nodata': {}}, 'metrics': _PIQE}, "datasets.nodata: 'nodata' is not a pyiqa dataset"),
    ({'datasets': {'spaq': 448}, 'metrics': _PIQE}, 'datasets.spaq must be a mapping'),
    ({'datasets': {'spaq': {'resize': [448]}}, 'metrics': _PIQE}, 'datasets.spaq.resize must be [height, width]'),
    # Strict types: YAML would hand these over as text or floats; nothing is coerced.
    ({'datasets': {'spaq': {'resize': '448'}}, 'metrics': _PIQE},
     "datasets.spaq.resize must be [height, width] in pixels (integers from 1 to 8192), one side N for N x N, "
     "or null for the native size, got '448'"),
    ({'datasets': {'spaq': {'resize': 448.0}}, 'metrics': _PIQE}, 'datasets.spaq.resize must be'),
    ({'datasets': {'spaq': {'resize': [448, True]}}, 'metrics': _PIQE}, 'datasets.spaq.resize must be'),
    ({'datasets': {'spaq': {'resize': [448, 0]}}, 'metrics': _PIQE}, 'datasets.spaq.resize must be'),
    ({'datasets': {'spaq': {'mos_lower_better': 'yes'}}, 'metrics': _PIQE},
     "datasets.spaq.mos_lower_better must be true or false, got 'yes'"),
    ({'datasets': {'spaq': {'mos_lower_better': None}}, 'metrics': _PIQE},
     'datasets.spaq.mos_lower_better must be true or false, got None'),
    ({'datasets': {'s': {'images': 'i', 'mos': 'm', 'mos_lower_better': 1}}, 'metrics': _PIQE},
     'datasets.s.mos_lower_better must be true or false, got 1'),
    ({'datasets': {'spaq': {'resize_mode': 'cubic'}}, 'metrics': _PIQE},
     "datasets.spaq.resize_mode must be one of bicubic, bilinear, lanczos, nearest, box, hamming, got 'cubic'"),
    ({'datasets': {'s': {'images': 7, 'mos': 'm'}}, 'metrics': _PIQE}, 'datasets.s.images must be non-empty text'),
    ({'datasets': {'s': {'images': ' ', 'mos': 'm'}}, 'metrics': _PIQE}, 'datasets.s.images must be non-empty text'),
    ({'datasets': {'s': {'images': 'i', 'mos': 'm', 'image_column': 'x', 'mos_column': 'x'}}, 'metrics': _PIQE},
     "datasets.s: image_column and mos_column are both 'x'"),
    ({'datasets': _DATA, 'metrics': _PIQE, 'data_root': 3}, 'data_root must be non-empty text'),
    ({'datasets': {1: {}}, 'metrics': _PIQE}, 'datasets: the name 1 must be printable text'),
    ({'datasets': {'x' * 101: {}}, 'metrics': _PIQE}, 'must be printable text of 1 to 100 characters'),
    ({'datasets': _DATA, 'metrics': {'a\nb': {'base': 'piqe'}}}, "metrics: the name 'a\\nb' must be printable text"),
    ({'datasets': {'spaq': {'resize': [448, 10 ** 20]}}, 'metrics': _PIQE},
     'datasets.spaq.resize must be [height, width] in pixels (integers from 1 to 8192)'),
    # Metrics.
    ({'datasets': _DATA, 'metrics': {'nometric': {}}}, "metrics.nometric: 'nometric' is not a pyiqa metric"),
    ({'datasets': _DATA, 'metrics': {'piqe': 5}}, 'metrics.piqe must be a mapping'),
    ({'datasets': _DATA, 'metrics': {'a': {'base': 'b'}, 'b': {'base': 'a'}}}, 'chain loops: a -> b -> a'),
    ({'datasets': _DATA, 'metrics': {'a': {'base': 'zzz'}}}, "metrics.a.base: 'zzz' is neither"),
    ({'datasets': _DATA, 'metrics': {'a': {'base': 5}}}, 'metrics.a.base must be printable text'),
    ({'datasets': _DATA, 'metrics': {'piqe': {'component': 'q_sim'}}}, 'only MA-CLIP metrics have components'),
    ({'datasets': _DATA, 'metrics': {'m': {'base': 'maclip', 'component': 'q_x'}}},
     "metrics.m.component must be one of score, q_sim, q_mag, got 'q_x'"),
    ({'datasets': _DATA, 'metrics': {'maclip': {'box_lambda': 0.3}}}, "has no option 'box_lambda'"),
    ({'datasets': _DATA, 'metrics': {'piqe': {'foo': 1}}}, "has no option 'foo'"),
    ({'datasets': _DATA, 'metrics': {'maclip': {'box_lam': math.nan}}}, 'metrics.maclip.box_lam must be'),
    ({'datasets': _DATA, 'metrics': {'maclip': {'prompts': [['a', {'b': math.inf}]]}}},
     'metrics.maclip.prompts must be'),
    ({'datasets': _DATA, 'metrics': {'maclip': {'seed': pd.Timestamp(0)}}}, 'metrics.maclip.seed must be'),
    ({'datasets': _DATA, 'metrics': {'maclip': {3: 1}}}, 'metrics.maclip: keys must be text, got 3'),
    # Names become file names.
    ({'datasets': _DATA, 'metrics': {'a/b': {'base': 'piqe'}, 'a_b': {'base': 'piqe'}}},
     "metrics: 'a/b' and 'a_b' map to the same file name"),
    ({'datasets': _DATA, 'metrics': {'Niqe': {'base': 'piqe'}, 'niqe': {}}},
     "metrics: 'Niqe' and 'niqe' map to the same file name"),
    ({'datasets': {'..': {'pyiqa': 'spaq'}, '__': {'pyiqa': 'spaq'}}, 'metrics': _PIQE},
     "datasets: '..' and '__' map to the same file name"),
])
def test_invalid_configs_name_the_key(config, message):
    assert message in _one_line_error(config)


def test_every_structural_problem_is_reported_at_once():
    message = _one_line_error({'datasets': {'spaq': {'resize': 'big', 'resize_mode': 'cubic', 'zoom': 2}},
                               'metrics': _PIQE})
    for part in ('datasets.spaq.resize must be', 'datasets.spaq.resize_mode must be', "unknown key 'zoom'"):
        assert part in message


def test_the_same_stem_is_allowed_across_metrics_and_datasets():
    """Files are laid out per metric and dataset, so a metric and a dataset may share a name."""
    config = parse_config({'datasets': {'piqe': {'images': 'i', 'mos': 'm.csv'}}, 'metrics': _PIQE})
    assert config.datasets[0].name == config.metrics[0].name == 'piqe'


@pytest.mark.parametrize('name', ['.', '..', '...', 'a/../b', 'x' * 100])
def test_file_stems_stay_inside_their_folder(name):
    stem = file_stem(name)
    assert stem.strip('.') and '/' not in stem and len(stem) == len(name)


def test_paper_preprocessing_defaults_and_overrides(tmp_path):
    """The official per-dataset preprocessing by default, overridable; the resize is PIL's bicubic."""
    config = parse_config({'datasets': {
        'spaq': {}, 'koniq10k': None, 'agiqa1k': {'images': 'a', 'mos': 'b.csv'},
        'livec': {}, 'spaq_native': {'pyiqa': 'spaq', 'resize': None}, 'square': {'pyiqa': 'spaq', 'resize': 300},
        'named': {'pyiqa': 'spaq', 'resize': 'native'},
    }, 'metrics': _PIQE})
    specs = {spec.name: spec for spec in config.datasets}
    assert specs['spaq'].resize == (448, 448) and specs['spaq'].resize_mode == 'bicubic'
    assert specs['agiqa1k'].resize == (224, 224) and specs['agiqa1k'].kind == 'custom'
    assert specs['koniq10k'].pyiqa == 'koniq10k-1024'
    assert specs['livec'].resize is None and specs['spaq_native'].resize is None and specs['named'].resize is None
    assert specs['square'].resize == (300, 300)
    path = tmp_path / 'x.png'
    pixels = np.random.default_rng(0).integers(0, 256, (96, 128, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)
    resized = as_float(read_image(str(path), (448, 300), 'bicubic'))
    expected = to_tensor(Image.open(path).convert('RGB').resize((300, 448), Image.Resampling.BICUBIC))
    assert resized.shape == (3, 448, 300) and torch.equal(resized, expected)  # the same PIL resize, then x / 255


def test_pyiqa_lower_better_root_and_paths(tmp_path):
    config = parse_config({'data_root': 'from_file', 'datasets': {
        'csiq': {}, 'csiq_as_mos': {'pyiqa': 'csiq', 'mos_lower_better': False, 'root': tmp_path},
        'mine': {'images': tmp_path / 'img', 'mos': tmp_path / 'mos.csv'},
    }, 'metrics': _PIQE}, data_root=tmp_path / 'override')
    specs = {spec.name: spec for spec in config.datasets}
    assert specs['csiq'].mos_lower_better  # pyiqa's lower_better for CSIQ (DMOS)
    assert not specs['csiq_as_mos'].mos_lower_better
    assert specs['csiq'].root == config.data_root == str(tmp_path / 'override')
    assert specs['csiq_as_mos'].root == str(tmp_path)
    assert specs['mine'].images == str(tmp_path / 'img') and specs['mine'].mos == str(tmp_path / 'mos.csv')


def test_variants_inherit_options_and_component_and_share_a_build():
    config = parse_config({'datasets': _DATA, 'metrics': {
        'maclip': {'backbone': 'RN50', 'box_lam': 0.5},
        'qsim': {'base': 'maclip', 'component': 'q_sim'},
        'qsim_lam0': {'base': 'qsim', 'box_lam': 0.0},
        'piqe': {},
    }})
    specs = {spec.name: spec for spec in config.metrics}
    assert specs['qsim'].options == {'backbone': 'RN50', 'box_lam': 0.5} and specs['qsim'].component == 'q_sim'
    assert specs['qsim_lam0'].options == {'backbone': 'RN50', 'box_lam': 0.0}
    assert specs['qsim_lam0'].component == 'q_sim'
    assert specs['qsim'].build_key() == specs['maclip'].build_key() != specs['qsim_lam0'].build_key()
    assert specs['piqe'].lower_better and not specs['qsim'].lower_better  # pyiqa's lower_better for PIQE


def test_specs_are_hashable_and_compare_by_value():
    config = parse_config({'datasets': _DATA, 'metrics': {'maclip': {'backbone': 'RN50'}}})
    metric, dataset = config.metrics[0], config.datasets[0]
    twin = MetricSpec('maclip', 'maclip', {'backbone': 'RN50'})
    assert metric == twin and hash(metric) == hash(twin) and metric in [twin]
    assert {metric: 1, dataset: 2}[twin] == 1
    assert MetricSpec('maclip', 'maclip', {'backbone': 'ViT-B/32'}) != metric


# ---------------------------------------------------------------- the YAML file


def _yaml(tmp_path: Path, text: str) -> Path:
    path = tmp_path / 'config.yml'
    path.write_text(text, encoding='utf-8')
    return path


def _load_error(path: Path) -> str:
    return _one_line_error(path, load_config)


@pytest.mark.parametrize('text, message', [
    ('datasets:\n  spaq: {}\n  livec: {}\n  spaq: {resize: 5}\nmetrics: {piqe: {}}\n',
     "line 4, column 3: key 'spaq' is given twice (first on line 2)"),
    ('datasets:\n  spaq: {}\nmetrics: {piqe: {}}\ndatasets:\n  livec: {}\n',
     "line 4, column 1: key 'datasets' is given twice (first on line 1)"),
    ('datasets:\n  spaq:\n    resize: 5\n    resize_mode: box\n    resize: 6\nmetrics: {piqe: {}}\n',
     "line 5, column 5: key 'resize' is given twice (first on line 3)"),
    ('datasets: {spaq: {}}\nmetrics:\n  maclip: {backbone: RN50, prompts: [{a: 1, a: 2}]}\n',
     "key 'a' is given twice (first on line 3)"),
])
def test_a_yaml_key_given_twice_is_an_error(tmp_path, text, message):
    assert message in _load_error(_yaml(tmp_path, text))


def test_merge_keys_may_be_overridden(tmp_path):
    config = load_config(_yaml(tmp_path, (
        'datasets:\n'
        '  spaq: &square {resize: 300, resize_mode: box}\n'
        '  spaq_big: {<<: *square, pyiqa: spaq, resize: 600}\n'
        'metrics: {piqe: {}}\n')))
    big = config.datasets[1]
    assert big.resize == (600, 600) and big.resize_mode == 'box'


@pytest.mark.parametrize('content, message', [
    ('datasets:\n  spaq: {}\nmetrics: [\n', 'is not valid YAML: line 4, column 1:'),
    ('datasets: {spaq: !!python/object/apply:os.system [echo]}\nmetrics: {piqe: {}}\n',
     'is not valid YAML: line 1, column 18: could not determine a constructor'),
    ('datasets: {spaq: {}}\nmetrics: {piqe: {}}\n---\nmore: 1\n', 'expected a single document'),
    (b'\xff\xfe\x00junk', 'is not UTF-8 text'),
    ('[' * 3000 + ']' * 3000, 'nested too deeply'),
    ('', 'datasets: needs at least one entry'),
    ('datasets:\n  no: {}\nmetrics: {piqe: {}}\n', 'datasets: the name False must be printable text'),
])
def test_unreadable_configurations_are_one_line_errors(tmp_path, content, message):
    path = tmp_path / 'config.yml'
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    assert message in _load_error(path)


def test_missing_and_oversized_configurations(tmp_path):
    assert 'cannot read the configuration' in _load_error(tmp_path / 'absent.yml')
    assert 'cannot read the configuration' in _load_error(tmp_path)
    big = tmp_path / 'big.yml'
    big.write_bytes(b'#' * (MAX_CONFIG_BYTES + 1))
    assert 'larger than 1 MiB' in _load_error(big)


@pytest.mark.parametrize('path', sorted(OPTIONS.glob('*.yml')), ids=lambda p: p.name)
def test_shipped_options_validate(path):
    config = load_config(path)
    assert config.datasets and config.metrics


def test_options_cover_the_paper():
    names = {p.name for p in OPTIONS.glob('*.yml')}
    assert {'paper_main_table.yml', 'ablations.yml', 'custom_dataset_example.yml'} <= names
    ablation = {m.name: m for m in load_config(OPTIONS / 'ablations.yml').metrics}
    lambdas = sorted(m.options['box_lam'] for m in ablation.values() if m.name.startswith('maclip_lam'))
    assert lambdas == [i / 10 for i in range(11)]  # YAML's 0.3 and 3 / 10 are the same nearest double
    assert {m.component for m in ablation.values()} == {'score', 'q_sim', 'q_mag'}
    assert any(m.options.get('alpha') == 0 for m in ablation.values())


# ---------------------------------------------------------------- MOS tables


def _table(tmp_path: Path, text: str | bytes, name: str = 'mos.csv', **entry):
    """The spec of a custom dataset over ``tmp_path/img`` and a table holding ``text``."""
    (tmp_path / 'img').mkdir(exist_ok=True)
    path = tmp_path / name
    path.write_bytes(text if isinstance(text, bytes) else text.encode('utf-8'))
    config = parse_config({'datasets': {'mine': {'images': tmp_path / 'img', 'mos': path, **entry}}, 'metrics': _PIQE})
    return config.datasets[0]


def _items_error(spec) -> str:
    with pytest.raises(BenchmarkConfigError) as error:
        load_items(spec)
    message = str(error.value)
    assert '\n' not in message
    return message


def test_image_names_are_text_as_written(tmp_path):
    spec = _table(tmp_path, 'image,mos\n0001,3\nNA,4\nnull,5\nnan,6\n1e3,7\nsub/0002.png,8\n')
    img = tmp_path / 'img'
    assert load_items(spec) == [Item(str(img / '0001'), 3.0), Item(str(img / 'NA'), 4.0), Item(str(img / 'null'), 5.0),
                                Item(str(img / 'nan'), 6.0), Item(str(img / '1e3'), 7.0),
                                Item(str(img / 'sub' / '0002.png'), 8.0)]


def test_quoted_names_bom_tsv_and_blank_lines(tmp_path):
    text = '\ufeffimage,mos\n\n"a,b.png",1.5\n"two\nlines.png", 2\n'
    assert load_items(_table(tmp_path, text)) == [Item(str(tmp_path / 'img' / 'a,b.png'), 1.5),
                                                  Item(str(tmp_path / 'img' / 'two\nlines.png'), 2.0)]
    tsv = _table(tmp_path, 'name\tscore\n0001.png\t3\n', name='mos.tsv', image_column='name', mos_column='score')
    assert load_items(tsv) == [Item(str(tmp_path / 'img' / '0001.png'), 3.0)]


@pytest.mark.parametrize('text, message', [
    # line 1 header, 2 a.jpg, 3 blank, 4-5 a quoted two-line name, 6 b.jpg, 7 a.jpg again
    ('image,mos\na.jpg,3\n\n"x\ny.jpg",1\nb.jpg,4\na.jpg,5\n',
     "mos.csv line 7: image 'a.jpg' is listed twice (first on line 2)"),
    ('image,mos\na.jpg,3\n./a.jpg,5\n', "line 3: image './a.jpg' is listed twice (first on line 2)"),
    ('image,mos\na.jpg,3\n,4\n', "line 3: the 'image' cell is empty"),
    ('image,mos\na.jpg,3\n   ,4\n', "line 3: the 'image' cell is empty"),
    ('mos,image\n3\n', "line 2: the 'image' cell is empty"),
    ('image,mos\na.jpg,abc\n', "line 2: MOS 'abc' (column 'mos') is not a finite number"),
    ('image,mos\na.jpg,NA\n', "line 2: MOS 'NA' (column 'mos') is not a finite number"),
    ('image,mos\na.jpg,nan\n', "line 2: MOS 'nan' (column 'mos') is not a finite number"),
    ('image,mos\na.jpg,-inf\n', "line 2: MOS '-inf' (column 'mos') is not a finite number"),
    ('image,mos\na.jpg,"3,5"\n', "line 2: MOS '3,5' (column 'mos') is not a finite number"),
    ('image,mos\na.jpg,\n', "line 2: the 'mos' cell is empty"),
    ('image,mos\n../b.jpg,1\n', "line 2: image '../b.jpg' is outside the image folder"),
    ('image,mos\nsub/../../b.jpg,1\n', "line 2: image 'sub/../../b.jpg' is outside the image folder"),
    ('image,mos\n/etc/passwd,1\n', "line 2: image '/etc/passwd' is outside the image folder"),
    ('image,mos\nC:\\b.jpg,1\n', "line 2: image 'C:\\\\b.jpg' is outside the image folder"),
    ('image,mos\n..\\b.jpg,1\n', "line 2: image '..\\\\b.jpg' is outside the image folder"),
    ('image,mos\n.,1\n', "line 2: image '.' is outside the image folder"),
    ('image,mos\na,b.jpg,3\n', 'mos.csv line 2 has 3 cells, its header 2'),
    ('image,mos\n"a.jpg,3\n', 'mos.csv line 2: unexpected end of data'),
    ('img,mos\na.jpg,1\n', "has no column 'image' (its columns: img, mos); name the right one with image_column:"),
    ('image,mos,mos\na.jpg,1,2\n', "has two columns 'mos'"),
    ('', 'is empty; expected a header line (image,mos)'),
    ('image,mos\n', 'the MOS table lists no images'),
    (b'image,mos\n\xe9.jpg,3\n', 'is not UTF-8 text'),
])
def test_bad_tables_name_the_line(tmp_path, text, message):
    message_got = _items_error(_table(tmp_path, text))
    assert message_got.startswith('datasets.mine')
    assert message in message_got


def test_every_bad_row_is_counted(tmp_path):
    # line 4 repeats the image of line 2, whose MOS is bad: still a duplicate.
    message = _items_error(_table(tmp_path, 'image,mos\na.jpg,x\n,1\na.jpg,2\nb.jpg,3\nb.jpg,4\n'))
    assert message.endswith("line 2: MOS 'x' (column 'mos') is not a finite number (3 more problems in this table)")


def test_excel_rows_are_numbered_as_excel_shows_them(tmp_path):
    book = openpyxl.Workbook()
    sheet = book.active
    for row in (['Image', 'MOS'], ['0001', 2.5], [2, '3'], [None, None], ['x.png', 1]):
        sheet.append(row)  # rows 1 to 5; row 4 is blank
    book.save(tmp_path / 'mos.xlsx')
    spec = _table(tmp_path, (tmp_path / 'mos.xlsx').read_bytes(), name='mos.xlsx', image_column='Image',
                  mos_column='MOS')
    img = tmp_path / 'img'
    assert load_items(spec) == [Item(str(img / '0001'), 2.5), Item(str(img / '2'), 3.0), Item(str(img / 'x.png'), 1.0)]

    for row in (['0001', 4.0], [None, 3], ['y.png', True]):
        sheet.append(row)  # rows 6 to 8
    book.save(tmp_path / 'mos.xlsx')
    message = _items_error(spec)
    assert "mos.xlsx row 6: image '0001' is listed twice (first on row 2) (2 more problems in this table)" in message
    sheet.delete_rows(6)
    book.save(tmp_path / 'mos.xlsx')
    assert "mos.xlsx row 6: the 'Image' cell is empty" in _items_error(spec)


def _with_dimension(path: Path, ref: str) -> None:
    """Rewrite the first sheet's stored <dimension ref=...> in place, as writers other than Excel leave it."""
    with zipfile.ZipFile(path) as source:
        members = [(info, source.read(info.filename)) for info in source.infolist()]
    with zipfile.ZipFile(path, 'w') as target:
        for info, data in members:
            if info.filename == 'xl/worksheets/sheet1.xml':
                data, count = re.subn(rb'<dimension ref="[^"]*"', f'<dimension ref="{ref}"'.encode(), data)
                assert count == 1  # the test's own precondition: the sheet declares a dimension
            target.writestr(info, data)


@pytest.mark.parametrize('ref', ['A1:B3', 'A1:XFD1048576'])
def test_excel_tables_are_read_whole_whatever_dimension_they_declare(tmp_path, ref):
    """A sheet declaring A1:B3 while holding 9 rows: openpyxl's read-only mode alone reads 3 of them."""
    book = openpyxl.Workbook()
    book.active.append(['image', 'mos'])
    for i in range(8):
        book.active.append([f'{i}.png', float(i)])
    book.save(tmp_path / 'mos.xlsx')
    _with_dimension(tmp_path / 'mos.xlsx', ref)
    stale = openpyxl.load_workbook(tmp_path / 'mos.xlsx', read_only=True)
    assert stale.worksheets[0].max_row == int(re.sub(r'\D', '', ref.split(':')[1]))  # the file does declare it
    stale.close()
    spec = _table(tmp_path, (tmp_path / 'mos.xlsx').read_bytes(), name='mos.xlsx')
    assert load_items(spec) == [Item(str(tmp_path / 'img' / f'{i}.png'), float(i)) for i in range(8)]


@pytest.mark.parametrize('name, content, message', [
    ('mos.xlsx', b'PK\x03\x04 not a workbook', 'cannot read the MOS table'),
    ('mos.xlsx', b'image,mos\na.jpg,1\n', 'cannot read the MOS table'),
    ('mos.xls', b'\xd0\xcf\x11\xe0', 'old-style .xls workbook; save it as .xlsx or CSV'),
])
def test_unreadable_workbooks(tmp_path, name, content, message):
    assert message in _items_error(_table(tmp_path, content, name=name))


def test_the_paper_table_reads_the_agiqa_releases(tmp_path, monkeypatch):
    """The shipped AGIQA entries against tables laid out as the public releases describe them:
    AGIQA-1K's AIGC_MOS_Zscore.xlsx (Image, Prompt, MOS) and AGIQA-3K's data.csv
    (name, prompt, adj1, adj2, style, mos_quality, std_quality, mos_align, std_align)."""
    monkeypatch.chdir(tmp_path)  # the shipped file names ./datasets/...
    one_k, three_k = Path('datasets/AGIQA-1K'), Path('datasets/AGIQA-3K')
    (one_k / 'file').mkdir(parents=True)
    (three_k / 'AGIQA-3K').mkdir(parents=True)
    pd.DataFrame({'Image': ['a.jpg', 'b.jpg'], 'Prompt': ['a cat', 'a dog'], 'MOS': [2.5, 3.75]}).to_excel(
        one_k / 'AIGC_MOS_Zscore.xlsx', index=False)
    pd.DataFrame({'name': ['x.png'], 'prompt': ['a bird'], 'adj1': ['red'], 'adj2': [None], 'style': ['baroque'],
                  'mos_quality': [1.5], 'std_quality': [0.2], 'mos_align': [4.0], 'std_align': [0.1]}).to_csv(
        three_k / 'data.csv', index=False)
    specs = {spec.name: spec for spec in load_config(OPTIONS / 'paper_main_table.yml').datasets}
    assert load_items(specs['agiqa1k']) == [Item(str(one_k / 'file' / 'a.jpg'), 2.5),
                                            Item(str(one_k / 'file' / 'b.jpg'), 3.75)]
    assert load_items(specs['agiqa3k']) == [Item(str(three_k / 'AGIQA-3K' / 'x.png'), 1.5)]


# ---------------------------------------------------------------- pyiqa datasets


def _koniq_root(root: Path, names: list[str], mos: list[float]) -> Path:
    """KonIQ-10k's 1024x768 folder and meta-info file, laid out as pyiqa's config expects."""
    (root / 'koniq10k' / '1024x768').mkdir(parents=True)
    (root / 'meta_info').mkdir()
    pd.DataFrame({'image_name': names, 'MOS': mos, 'official_split': ['test'] * len(names)}).to_csv(
        root / 'meta_info' / 'meta_info_KonIQ10kDataset.csv', index=False)
    return root


def _koniq(root: Path):
    return parse_config({'data_root': str(root), 'datasets': {'koniq10k': {}}, 'metrics': _PIQE}).datasets[0]


def test_pyiqa_dataset_items(tmp_path):
    root = _koniq_root(tmp_path, ['a.png', 'b.png'], [60.0, 40.5])
    folder = root / 'koniq10k' / '1024x768'
    assert load_items(_koniq(root)) == [Item(str(folder / 'a.png'), 60.0), Item(str(folder / 'b.png'), 40.5)]


def test_pyiqa_dataset_with_a_duplicated_image(tmp_path):
    root = _koniq_root(tmp_path, ['a.png', 'b.png', 'a.png'], [60.0, 40.0, 50.0])
    message = _items_error(_koniq(root))
    assert message.startswith('datasets.koniq10k')
    assert 'entry 3 of the list pyiqa reads from' in message and 'meta_info_KonIQ10kDataset.csv' in message
    assert "a.png' is listed twice (first as entry 1)" in message


def test_pyiqa_dataset_with_a_missing_mos(tmp_path):
    root = _koniq_root(tmp_path, ['a.png', 'b.png'], [60.0, math.nan])
    assert 'entry 2 of the list pyiqa reads from' in _items_error(_koniq(root))


def test_missing_folder_and_table(tmp_path):
    spec = _table(tmp_path, 'image,mos\na.png,1\n')
    folder_is_file = parse_config({'datasets': {'d': {'images': spec.mos, 'mos': spec.mos}}, 'metrics': _PIQE})
    assert f'datasets.d.images: the image folder {spec.mos} is not a folder' in _items_error(folder_is_file.datasets[0])
    table_is_folder = parse_config({'datasets': {'d': {'images': spec.images, 'mos': tmp_path}}, 'metrics': _PIQE})
    assert f'datasets.d.mos: the MOS table {tmp_path} is not a file' in _items_error(table_is_folder.datasets[0])


def test_pyiqa_dataset_without_meta_info_explains_the_layout(tmp_path):
    config = parse_config({'data_root': str(tmp_path), 'datasets': {'kadid10k': {}}, 'metrics': _PIQE})
    with pytest.raises(BenchmarkConfigError, match='meta_info_KADID10kDataset.csv does not exist'):
        load_items(config.datasets[0])


# ---------------------------------------------------------------- the command


def test_command_stops_with_status_2_before_scoring(tmp_path, capsys, monkeypatch):
    import pyiqa

    def no_build(*args, **kwargs):
        raise AssertionError('a metric was built although the data is invalid')

    monkeypatch.setattr(pyiqa, 'create_metric', no_build)
    (tmp_path / 'img').mkdir()
    (tmp_path / 'mos.csv').write_text('image,mos\na.jpg,1\nb.jpg,2\na.jpg,3\n', encoding='utf-8')
    config = tmp_path / 'config.yml'
    config.write_text(yaml.safe_dump({
        'datasets': {'mine': {'images': str(tmp_path / 'img'), 'mos': str(tmp_path / 'mos.csv')}},
        'metrics': _PIQE}), encoding='utf-8')
    arguments = ['benchmark', '--config', str(config), '--output-dir', str(tmp_path / 'out'), '--device', 'cpu']
    assert cli.main(arguments) == 2
    err = capsys.readouterr().err
    assert err.count('\n') == 1 and 'Traceback' not in err
    assert "mos.csv line 4: image 'a.jpg' is listed twice (first on line 2)" in err
    assert not (tmp_path / 'out').exists()

    config.write_text('datasets: {spaq: {}}\nmetrics: {piqe: {}, piqe: {}}\n', encoding='utf-8')
    assert cli.main(arguments) == 2
    err = capsys.readouterr().err
    assert err.count('\n') == 1 and "line 2, column 21: key 'piqe' is given twice (first on line 2)" in err
