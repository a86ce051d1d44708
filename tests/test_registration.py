"""create_metric('maclip') builds this package's class whatever the import order.

Each scenario runs in a fresh interpreter, since registration is process state.
"""
import os
import re
import subprocess
import sys
import textwrap

import pytest
import torch
from PIL import Image

from conftest import random_images

BUILT_BY_US = 'pyiqa_maclip.arch.MACLIP'

SCENARIOS = {
    'entry point only, plugin never imported': '',
    "pyiqa's module first, plugin never imported": 'import pyiqa.archs.maclip_arch',
    "pyiqa's module, then plugin": 'import pyiqa.archs.maclip_arch\nimport pyiqa_maclip',
    "plugin, then pyiqa's module": 'import pyiqa_maclip\nimport pyiqa.archs.maclip_arch',
    'plugin registered three times': 'import pyiqa_maclip\npyiqa_maclip.register()\npyiqa_maclip.register()',
    'metric created twice': 'import pyiqa\npyiqa.create_metric("maclip", backbone=PATH, device="cpu")',
}


@pytest.mark.parametrize('prelude', SCENARIOS.values(), ids=SCENARIOS.keys())
def test_create_metric_builds_plugin_in_any_import_order(tiny_rn, prelude):
    script = textwrap.dedent('''
        import os
        PATH = os.environ['CHECKPOINT']
        {prelude}
        import pyiqa, torch
        from pyiqa.default_model_configs import DEFAULT_CONFIGS
        metric = pyiqa.create_metric('maclip', backbone=PATH, device='cpu')
        net = type(metric.net)
        print(net.__module__ + '.' + net.__name__)
        print(DEFAULT_CONFIGS['maclip']['score_range'])
        print(metric(torch.rand(2, 3, 230, 240)).shape)
        import pyiqa.archs.maclip_arch  # an explicit import afterwards is harmless too
    ''').format(prelude=prelude)
    result = subprocess.run(
        [sys.executable, '-c', script], capture_output=True, text=True, timeout=300,
        env={**os.environ, 'CHECKPOINT': str(tiny_rn)},
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.split('\n')
    assert lines[0] == BUILT_BY_US
    assert lines[1] == '0, ~1.5'
    assert lines[2] == 'torch.Size([2])'
    assert 'RuntimeWarning' not in result.stderr


def test_listed_and_configured():
    import pyiqa
    import pyiqa_maclip  # noqa: F401
    from pyiqa.default_model_configs import DEFAULT_CONFIGS
    from pyiqa.utils.registry import ARCH_REGISTRY

    assert 'maclip' in pyiqa.list_models()
    assert 'maclip' in pyiqa.list_models(metric_mode='NR')
    assert ARCH_REGISTRY.get('MACLIP') is pyiqa_maclip.MACLIP
    config = DEFAULT_CONFIGS['maclip']
    assert config['metric_opts'] == {'type': 'MACLIP'}
    assert config['metric_mode'] == 'NR' and config['lower_better'] is False


def test_score_range_holds_what_the_metric_returns(tiny_metric):
    """'0, ~1.5': never negative; typical images stay well under the approximate upper end."""
    images = torch.cat([random_images(4, 240, 320, seed=7), torch.zeros(1, 3, 240, 320), torch.ones(1, 3, 240, 320)])
    parts = tiny_metric(images, return_components=True)
    assert (parts.score >= 0).all() and (parts.score < 1.5).all()
    low = torch.minimum(parts.q_sim, parts.q_mag) - 1e-6
    high = torch.maximum(parts.q_sim, parts.q_mag) + 1e-6
    assert ((parts.score >= low) & (parts.score <= high)).all()  # a convex combination per view


def test_pyiqa_command_line(tiny_rn, tmp_path, monkeypatch, capsys):
    """`pyiqa maclip -t FOLDER` scores every image with the default backbone (RN50, offline cache)."""
    import pyiqa.pyiqa_cmd
    from pyiqa.utils.img_util import imread2tensor
    from pyiqa_maclip import MACLIP, weights

    cache = tmp_path / 'weights'
    cache.mkdir()
    (cache / 'RN50.pt').write_bytes(tiny_rn.read_bytes())
    monkeypatch.setenv(weights.WEIGHTS_DIR_ENV, str(cache))
    monkeypatch.setitem(weights.OFFICIAL_CHECKPOINTS, 'RN50',
                        weights.Checkpoint('RN50.pt', weights.sha256sum(tiny_rn)))
    folder = tmp_path / 'images'
    folder.mkdir()
    expected = {}
    reference = MACLIP(backbone=str(tiny_rn))
    for i in range(3):
        path = folder / f'img{i}.png'
        array = (random_images(1, 240 + 10 * i, 300, seed=i)[0].permute(1, 2, 0) * 255).round().byte().numpy()
        Image.fromarray(array).save(path)
        expected[str(path)] = reference(imread2tensor(str(path), rgb=True)[None]).item()
    monkeypatch.setattr(sys, 'argv', ['pyiqa', 'maclip', '-t', str(folder), '--device', 'cpu', '-v'])
    pyiqa.pyiqa_cmd.main()
    out = capsys.readouterr().out
    printed = {key: float(value) for key, value in re.findall(r"'([^']+)':\s+(?:np\.float64\()?([-+\d.e]+)", out)}
    assert set(printed) == set(expected) | {'mean'}
    for path, score in expected.items():
        assert abs(printed[path] - score) < 1e-6
