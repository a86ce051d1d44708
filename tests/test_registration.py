"""create_metric('maclip') builds this package's class whatever the import order.

Each scenario runs in a fresh interpreter, since registration is process state.
"""
import json
import multiprocessing
import os
import re
import subprocess
import sys
import tempfile
import textwrap
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import pytest
import torch
from PIL import Image

from rounding import UNIT_ROUNDOFF, assert_within_rounding, rounding_bound

from pyiqa_maclip.testing import random_images

BUILT_BY_US = 'pyiqa_maclip.arch.MACLIP'

SCENARIOS = {
    'entry point only, plugin never imported': '',
    "pyiqa's module first, plugin never imported": 'import pyiqa.archs.maclip_arch',
    "pyiqa's module, then plugin": 'import pyiqa.archs.maclip_arch\nimport pyiqa_maclip',
    "plugin, then pyiqa's module": 'import pyiqa_maclip\nimport pyiqa.archs.maclip_arch',
    'plugin registered three times': 'import pyiqa_maclip\npyiqa_maclip.register()\npyiqa_maclip.register()',
    'metric created twice': 'import pyiqa\npyiqa.create_metric("maclip", backbone=PATH, device="cpu")',
}


IMPORT_ORDER_SCRIPT = textwrap.dedent('''
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
''')


class Interpreters:
    """Python scripts, each in a new process that has imported nothing of pyiqa or this package:
    forked from a server process that imported only torch and torchvision (multiprocessing's
    forkserver), which spares each scenario the seconds those imports take. Started together, one
    per CPU. ``run(script, env, cwd)`` -> a future of (exit status, stdout, stderr)."""

    def __init__(self, folder):
        self.folder = folder
        self.context = multiprocessing.get_context('forkserver')
        self.context.set_forkserver_preload(['torch', 'torchvision'])
        cpus = len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else os.cpu_count() or 1
        self.pool = ThreadPoolExecutor(max_workers=cpus)

    def run(self, script: str, env: dict[str, str], cwd) -> Future:
        return self.pool.submit(self._run, script, env, cwd)

    def _run(self, script: str, env: dict[str, str], cwd) -> subprocess.CompletedProcess:
        out = Path(tempfile.mkdtemp(dir=self.folder))
        # The child's own start: file descriptors 1 and 2 in files, its environment and folder.
        start = (f'import os, sys\n'
                 f'os.dup2(os.open({str(out / "out")!r}, os.O_WRONLY | os.O_CREAT), 1)\n'
                 f'os.dup2(os.open({str(out / "err")!r}, os.O_WRONLY | os.O_CREAT), 2)\n'
                 f'assert not {{"pyiqa", "pyiqa_maclip"}} & {{name.split(".")[0] for name in sys.modules}}, "not fresh"\n'
                 f'os.environ.update({env!r}); os.chdir({str(cwd)!r})\n')
        process = self.context.Process(target=exec, args=(start + script, {'__name__': '__main__'}))
        process.start()
        process.join(300)
        if process.exitcode is None:
            process.kill()
            pytest.fail('a scenario ran for more than 300 s')
        read = lambda name: (out / name).read_text(encoding='utf-8', errors='replace')
        return subprocess.CompletedProcess(script, process.exitcode, read('out'), read('err'))


def _start_side_by_side(request, runs: dict) -> dict[str, Future]:
    """For each selected test of this module named in ``runs``, ``runs[name](params)`` with its
    parameters, all started at once. Keyed by the test's node id."""
    return {item.nodeid: runs[item.originalname](item.callspec.params) for item in request.session.items
            if getattr(item, 'originalname', None) in runs and item.module is request.module}


@pytest.fixture(scope='module')
def fresh_interpreters(request, tiny_rn, replay_inputs, tmp_path_factory):
    """The runs of the import-order and benchmark-replay scenarios, started together."""
    interpreters = Interpreters(tmp_path_factory.mktemp('interpreters'))
    request.addfinalizer(interpreters.pool.shutdown)
    options, _, image = replay_inputs

    def import_order(params):
        return interpreters.run(IMPORT_ORDER_SCRIPT.format(prelude=params['prelude']), {'CHECKPOINT': str(tiny_rn)},
                                tmp_path_factory.mktemp('import_order'))

    def replay(params):
        script = BENCHMARK_REPLAY.format(**{'before': '', 'at_edit': '', 'after': '', **params['order']})
        return interpreters.run(script, {'METRIC_OPT': str(options), 'IMAGE': str(image)},
                                tmp_path_factory.mktemp('replay_run'))

    return _start_side_by_side(request, {
        'test_create_metric_builds_plugin_in_any_import_order': import_order,
        'test_benchmark_script_options_are_never_dropped': replay})


@pytest.mark.parametrize('prelude', SCENARIOS.values(), ids=SCENARIOS.keys())
@pytest.mark.slow  # a fresh interpreter importing torch and pyiqa per case
def test_create_metric_builds_plugin_in_any_import_order(fresh_interpreters, request, prelude):
    result = fresh_interpreters[request.node.nodeid].result()
    assert result.returncode == 0, result.stderr
    lines = result.stdout.split('\n')
    assert lines[0] == BUILT_BY_US
    assert lines[1] == '0, ~1.5'
    assert lines[2] == 'torch.Size([2, 1])'  # (B, 1), as pyiqa's own NR metrics
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
    assert config['metric_opts']['type'] == 'MACLIP'  # pyiqa's own entry, completed (model_type kept)
    assert config['metric_mode'] == 'NR' and config['lower_better'] is False


VARIANTS = {'maclip_rn101': 'RN101', 'maclip_vitB32': 'ViT-B/32', 'maclip_vitB16': 'ViT-B/16', 'maclip_vitL14': 'ViT-L/14'}


def test_backbone_variants_are_listed_and_build_their_backbone(checkpoints, monkeypatch):
    import pyiqa
    import pyiqa_maclip.arch
    from pyiqa_maclip.weights import load_clip

    assert set(VARIANTS) <= set(pyiqa.list_models(metric_mode='NR', filter='maclip_*'))
    requested = []
    tiny = str(checkpoints('tiny-ViT'))
    monkeypatch.setattr(pyiqa_maclip.arch, 'load_clip', lambda name: requested.append(name) or load_clip(tiny))
    for name, backbone in VARIANTS.items():
        metric = pyiqa.create_metric(name, device='cpu')
        assert isinstance(metric.net, pyiqa_maclip.MACLIP) and metric.net.backbone == backbone
        assert metric.lower_better is False and metric.score_range == '0, ~1.5'
    assert requested == list(VARIANTS.values())


def test_register_fills_in_and_keeps_what_is_there(monkeypatch):
    from pyiqa.default_model_configs import DEFAULT_CONFIGS
    from pyiqa_maclip import register

    user = {'metric_opts': {'type': 'MACLIP', 'box_lam': 0.0}, 'metric_mode': 'NR', 'score_range': '0, 1'}
    monkeypatch.setitem(DEFAULT_CONFIGS, 'maclip', user)
    monkeypatch.setitem(DEFAULT_CONFIGS, 'maclip_vitB32', {'metric_opts': {'type': 'MACLIP', 'backbone': '/my/vit.pt'}})
    monkeypatch.setitem(DEFAULT_CONFIGS, 'maclip_vitB16', 'not a mapping')
    register()
    register()
    assert DEFAULT_CONFIGS['maclip'] is user  # edited in place, never replaced
    assert user == {'metric_opts': {'type': 'MACLIP', 'box_lam': 0.0}, 'metric_mode': 'NR',
                    'score_range': '0, 1', 'lower_better': False}
    assert DEFAULT_CONFIGS['maclip_vitB32']['metric_opts'] == {'type': 'MACLIP', 'backbone': '/my/vit.pt'}
    assert DEFAULT_CONFIGS['maclip_vitB32']['score_range'] == '0, ~1.5'
    assert DEFAULT_CONFIGS['maclip_vitB16'] == 'not a mapping'
    # pyiqa's shipped entry, untouched by anyone: its '0, 1' is replaced by this metric's range.
    shipped = {'metric_opts': {'type': 'MACLIP', 'model_type': 'maclip'}, 'metric_mode': 'NR', 'score_range': '0, 1'}
    monkeypatch.setitem(DEFAULT_CONFIGS, 'maclip', shipped)
    register()
    assert shipped['score_range'] == '0, ~1.5' and shipped['metric_opts']['model_type'] == 'maclip'


# The steps of pyiqa's benchmark_results.py (chaofengc/IQA-PyTorch, read at 01ae427) with
# --metric_opt: the YAML is read with pyiqa's ordered loader, DEFAULT_CONFIGS.update(it),
# then each metric of the file is built in order with create_metric(name, device,
# metric_mode=entry['metric_mode'], **entry['metric_opts']) and run. The plugin is never
# imported unless a scenario says so; piqe (offline, no weights) is built first, which loads
# the pyiqa.archs entry point.
BENCHMARK_REPLAY = textwrap.dedent('''
    import json, os, sys, torch, yaml
    {before}
    from pyiqa import create_metric
    from pyiqa.default_model_configs import DEFAULT_CONFIGS
    from pyiqa.utils.options import ordered_yaml
    with open(os.environ['METRIC_OPT']) as f:
        custom = yaml.load(f, Loader=ordered_yaml()[0])
    {at_edit}
    DEFAULT_CONFIGS.update(custom)
    {after}
    image = torch.load(os.environ['IMAGE'])
    out = {{}}
    for name in custom:
        entry = DEFAULT_CONFIGS[name]
        metric = create_metric(name, device='cpu', metric_mode=entry['metric_mode'], **entry['metric_opts'])
        net = type(metric.net)
        out[name] = [net.__module__ + '.' + net.__name__, metric(image).item(), DEFAULT_CONFIGS[name].get('score_range')]
    print(json.dumps(out))
    print('plugin imported:', 'pyiqa_maclip' in sys.modules, file=sys.stderr)
''')

# scenario: (code slots, whether register() runs after the update and so fills in the entry:
# the entry point calls it on the first registry lookup even when the plugin was imported)
REPLAY_ORDERS = {
    'benchmark script as is': ({}, True),
    "pyiqa's maclip_arch imported first": ({'before': 'import pyiqa.archs.maclip_arch'}, True),
    'plugin imported first': ({'before': 'import pyiqa_maclip'}, True),
    'plugin imported between reading and update': ({'at_edit': 'import pyiqa_maclip'}, True),
    'plugin imported after the update': ({'after': 'import pyiqa_maclip'}, True),
    'entry point loaded before the update': (
        {'at_edit': 'import pyiqa; pyiqa.create_metric("piqe", device="cpu")'}, False),
}


_ROUNDINGS = {}


def _rounding(backbone: str, image: torch.Tensor, **options):
    """rounding_bound of MACLIP(backbone, **options) on ``image``, computed once per session."""
    from pyiqa_maclip import MACLIP

    key = (backbone, tuple(sorted(options.items())), image.shape, float(image.sum()))
    if key not in _ROUNDINGS:
        _ROUNDINGS[key] = rounding_bound(MACLIP(backbone=backbone, **options), image, fields=['score'])
    return _ROUNDINGS[key]


@pytest.fixture(scope='module')
def replay_inputs(tmp_path_factory, tiny_rn):
    """The benchmark script's option file and image tensor."""
    folder = tmp_path_factory.mktemp('replay')
    options = folder / 'opts.yml'
    options.write_text(textwrap.dedent(f'''
        piqe:
          metric_opts: {{type: PIQE}}
          metric_mode: NR
        maclip:
          metric_opts: {{type: MACLIP, backbone: '{tiny_rn}', box_lam: 0.0}}
          metric_mode: NR
        my_maclip:
          metric_opts: {{type: MACLIP, backbone: '{tiny_rn}', alpha: 2.5, base_norm: 0.2}}
          metric_mode: NR
          lower_better: false
    '''))
    image = random_images(1, 240, 300, seed=3)
    torch.save(image, folder / 'image.pt')
    return options, image, folder / 'image.pt'


@pytest.mark.slow  # a fresh interpreter importing torch and pyiqa per case
@pytest.mark.parametrize('order, filled', REPLAY_ORDERS.values(), ids=REPLAY_ORDERS.keys())
def test_benchmark_script_options_are_never_dropped(tiny_rn, replay_inputs, fresh_interpreters, request, order, filled):
    """User options reach the metric whatever runs first, under maclip and under a custom name."""
    from pyiqa_maclip import MACLIP

    image = replay_inputs[1]
    result = fresh_interpreters[request.node.nodeid].result()
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    # The other process's score and this one's: both within float32 rounding of the float64 computation.
    default = _rounding(str(tiny_rn), image)
    for name, options in {'maclip': {'box_lam': 0.0}, 'my_maclip': {'alpha': 2.5, 'base_norm': 0.2}}.items():
        assert out[name][0] == BUILT_BY_US, name
        rounding = _rounding(str(tiny_rn), image, **options)
        assert_within_rounding([out[name][1]], rounding)
        with torch.no_grad():
            assert_within_rounding(MACLIP(backbone=str(tiny_rn), **options)(image), rounding)
        # The options change the score beyond rounding: dropping them would show.
        assert (rounding.exact.score - default.exact.score).abs() > rounding.bound.score + default.bound.score
    # The user's entry has no score_range: register() fills it in when it runs after the update
    # (once registered, nothing watches DEFAULT_CONFIGS: an entry replaced later stays as given).
    assert out['maclip'][2] == ('0, ~1.5' if filled else None)
    if not order:
        assert 'plugin imported: True' in result.stderr  # by the entry point, not by the script


def test_score_range_holds_what_the_metric_returns(tiny_metric):
    """'0, ~1.5': never negative; typical images stay well under the approximate upper end."""
    images = [*random_images(4, 240, 320, seed=7), torch.zeros(3, 240, 320), torch.ones(3, 240, 320)]
    parts = tiny_metric.score_images(images)
    assert (parts.score >= 0).all() and (parts.score < 1.5).all()
    # Each view's value is a convex combination of its Q_sim and Q_mag: w * a + (1 - w) * b in float32
    # rounds the weights' sum (3 u, a two-way softmax), both products and the sum: within 6 u of the larger.
    for qmap in tiny_metric.quality_maps(images):
        for view in (qmap.patches, qmap.global_view):
            slack = 6 * UNIT_ROUNDOFF[torch.float32] * torch.maximum(view.q_sim.abs(), view.q_mag.abs())
            assert (view.score >= torch.minimum(view.q_sim, view.q_mag) - slack).all()
            assert (view.score <= torch.maximum(view.q_sim, view.q_mag) + slack).all()


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
                        weights.OFFICIAL_CHECKPOINTS['RN50']._replace(sha256=weights.sha256sum(tiny_rn)))
    folder = tmp_path / 'images'
    folder.mkdir()
    expected = {}
    reference = MACLIP(backbone=str(tiny_rn))
    for i in range(3):
        path = folder / f'img{i}.png'
        array = (random_images(1, 240 + 10 * i, 300, seed=i)[0].permute(1, 2, 0) * 255).round().byte().numpy()
        Image.fromarray(array).save(path)
        expected[str(path)] = rounding_bound(reference, imread2tensor(str(path), rgb=True)[None], fields=['score'])
    monkeypatch.setattr(sys, 'argv', ['pyiqa', 'maclip', '-t', str(folder), '--device', 'cpu', '-v'])
    pyiqa.pyiqa_cmd.main()
    out = capsys.readouterr().out
    printed = {key: float(value) for key, value in re.findall(r"'([^']+)':\s+(?:np\.float64\()?([-+\d.e]+)", out)}
    assert set(printed) == set(expected) | {'mean'}
    for path, rounding in expected.items():
        assert_within_rounding([printed[path]], rounding)  # within float32 rounding of the float64 computation
