"""The benchmark's YAML configuration.

Every rejection is checked for a message that names where the problem is: the YAML
path, or the key and line of the file. Nothing is scored: these tests build no metric.
"""
from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
import pytest

from pyiqa_maclip.benchmark.config import (
    MAX_CONFIG_BYTES, BenchmarkConfigError, MetricSpec, file_stem, load_config, parse_config,
)

OPTIONS = Path(__file__).resolve().parents[1] / 'options'
_DATA = {'synth': {'images': 'img', 'mos': 'mos.csv'}}
_PIQE = {'piqe': {}}


def _one_line_error(raw) -> str:
    with pytest.raises(BenchmarkConfigError) as error:
        parse_config(raw)
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
     "datasets.spaq.resize must be [height, width] in pixels (positive integers), one side N for N x N, "
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
    ({'datasets': {1: {}}, 'metrics': _PIQE}, 'datasets: the name 1 must be text'),
    ({'datasets': {'x' * 101: {}}, 'metrics': _PIQE}, 'must be text of 1 to 100 characters'),
    # Metrics.
    ({'datasets': _DATA, 'metrics': {'nometric': {}}}, "metrics.nometric: 'nometric' is not a pyiqa metric"),
    ({'datasets': _DATA, 'metrics': {'piqe': 5}}, 'metrics.piqe must be a mapping'),
    ({'datasets': _DATA, 'metrics': {'a': {'base': 'b'}, 'b': {'base': 'a'}}}, 'chain loops: a -> b -> a'),
    ({'datasets': _DATA, 'metrics': {'a': {'base': 'zzz'}}}, "metrics.a.base: 'zzz' is neither"),
    ({'datasets': _DATA, 'metrics': {'a': {'base': 5}}}, 'metrics.a.base must be text'),
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


def test_paper_preprocessing_defaults_and_overrides():
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
    with pytest.raises(BenchmarkConfigError) as error:
        load_config(path)
    message = str(error.value)
    assert '\n' not in message
    return message


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
    ('datasets:\n  no: {}\nmetrics: {piqe: {}}\n', 'datasets: the name False must be text'),
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
    assert lambdas == pytest.approx([i / 10 for i in range(11)])
    assert {m.component for m in ablation.values()} == {'score', 'q_sim', 'q_mag'}
    assert any(m.options.get('alpha') == 0 for m in ablation.values())
