"""The command line: instant help, one line and exit status 2 for every user mistake, never a traceback."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

from local_server import cache_fixture, files_in, server_fixture  # noqa: F401  (fixtures cache, server)

from pyiqa_maclip import __version__, weights
from pyiqa_maclip.app import cli, metric_options, options
from pyiqa_maclip.app.commands import download
from pyiqa_maclip.errors import UserError

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, 'PYTHONPATH': os.pathsep.join([str(ROOT), os.environ.get('PYTHONPATH', '')]),
       'PYTHONDONTWRITEBYTECODE': '1'}


def _run(*args, env=None, timeout=120):
    return subprocess.run([sys.executable, *args], cwd=ROOT, env=env or ENV, capture_output=True, text=True,
                          timeout=timeout, check=False)


def _imported(stderr: str) -> set[str]:
    """Top-level modules a ``python -X importtime`` run imported."""
    return {line.split('|')[-1].strip().split('.')[0] for line in stderr.splitlines() if '|' in line}


# ---- fast answers

#: Why --device cuda cannot work here, if that is known without torch (a CPU-only machine or torch build).
_CUDA_TOLD_WITHOUT_TORCH = options._cuda_lacking_without_torch()


@pytest.mark.slow  # fresh interpreters
@pytest.mark.parametrize('args', [['--help'], ['score', '--help'], ['download', '--help'], ['benchmark', '--help'],
                                  ['explain', '--help'], ['report', '--help'], ['--version'], ['scroe'], ['score']])
def test_help_version_and_usage_mistakes_import_neither_torch_nor_pyiqa(args):
    run = _run('-X', 'importtime', '-m', 'pyiqa_maclip', *args)
    assert not {'torch', 'pyiqa', 'numpy', 'PIL'} & _imported(run.stderr), sorted(_imported(run.stderr))
    assert run.returncode == (0 if args[-1] in ('--help', '--version') else 2)


@pytest.mark.slow  # fresh interpreters
@pytest.mark.parametrize('args, words', [
    (['score', '{missing}', '-o', '{tmp}/s.csv'], "does not exist: expected an image file, a folder or a text file"),
    (['score', '{empty}', '-o', '{tmp}/s.csv'], 'no images found in'),
    (['score', '{image}', '-o', '{tmp}/s.csv', '--backbone', 'vit-b/32'], 'did you mean ViT-B/32?'),
    (['score', '{image}', '-o', '{tmp}'], 'is a folder'),
    (['score', '{image}', '-o', '{file}/s.csv'], 'cannot create the folder'),
    (['score', '{image}', '-o', '{tmp}/s.csv', '--option', 'box_lam'], 'expected KEY=VALUE'),
    (['score', '{image}', '-o', '{tmp}/s.csv', '--option', 'boxlam=0.3'], "no option 'boxlam' (did you mean box_lam?)"),
    (['score', '{image}', '-o', '{tmp}/s.csv', '--option', 'box_lam=abc'], 'box_lam must be a real number in [-10, 10]'),
    (['score', '{image}', '-o', '{tmp}/s.csv', '--option', 'box_lam=100'], 'box_lam must be a real number in [-10, 10]'),
    (['score', '{image}', '-o', '{tmp}/s.csv', '--metric', 'maclip_vitB32', '--option', 'stride=0'],
     'stride must be a positive integer'),
    (['score', '{image}', '-o', '{tmp}/s.csv', '--device', 'gpu'], 'expected a torch device such as cpu, cuda'),
    (['explain', '{image}', '-o', '{tmp}/x', '--device', 'cuda:x'], 'expected a torch device such as cpu, cuda'),
    (['benchmark', '--config', '{file}', '--output-dir', '{tmp}/b', '--device', 'gpu'], 'expected a torch device'),
    pytest.param(['score', '{image}', '-o', '{tmp}/s.csv', '--device', 'cuda'], 'not available on this machine',
                 marks=pytest.mark.skipif(_CUDA_TOLD_WITHOUT_TORCH is None, reason='torch must say whether CUDA works')),
    (['report', '{tmp}/nope.csv', '-o', '{tmp}/r.png'], 'does not exist or is not a file'),
    (['benchmark', '--config', '{tmp}/nope.yml', '--output-dir', '{tmp}/b'], 'cannot read the configuration'),
    (['benchmark', '--config', '{file}', '--output-dir', '{tmp}/b'], 'is not valid YAML'),
    (['explain', '{missing}', '-o', '{tmp}/x'], 'does not exist'),
    (['download', 'RN51'], "'RN51' is not an official CLIP backbone (did you mean RN50?)"),
    (['score', '{tmp}', '-o', '{tmp}/s.csv', '--extensions', ''], "--extensions '': expected suffixes separated by"),
    (['score', '{image}', '-o', '{tmp}/s.csv', '--key-column', 'id'],
     '--key-column applies to Parquet files or datasets folders, and these inputs are image files and folders'),
])
def test_mistakes_are_answered_before_torch_loads(tmp_path, args, words):
    """One line, exit status 2, and neither torch nor pyiqa imported (issue 20, point 2)."""
    from PIL import Image

    (tmp_path / 'empty').mkdir()
    Image.new('RGB', (8, 8)).save(tmp_path / 'a.png')
    (tmp_path / 'file').write_text('key: [unclosed\n')
    fill = {'tmp': tmp_path, 'missing': tmp_path / 'missing.png', 'empty': tmp_path / 'empty',
            'image': tmp_path / 'a.png', 'file': tmp_path / 'file'}
    run = _run('-X', 'importtime', '-m', 'pyiqa_maclip', *[a.format(**fill) for a in args],
               env={**ENV, 'TORCH_HOME': str(tmp_path / 'hub')})
    errors = [line for line in run.stderr.splitlines() if '|' not in line]
    assert run.returncode == 2 and len(errors) == 1, run.stderr[-2000:]
    assert errors[0].startswith(f'pyiqa-maclip {args[0]}: error: ') and words in errors[0]
    assert not {'torch', 'pyiqa'} & _imported(run.stderr)


@pytest.mark.parametrize('text, value', [('1e-1', 0.1), ('0.3', 0.3), ('-2', -2), ('256', 256), ('True', True),
                                         ('false', False), ('RN101', 'RN101'), ('', ''), ('1.0', 1.0)])
def test_option_values_are_read_as_python_reads_numbers(text, value):
    """Issue 27 point 6: ``1e-1`` is the number 0.1 (YAML 1.1 would read it as text)."""
    parsed = options.parse_options([f'key={text}'])['key']
    assert parsed == value and type(parsed) is type(value)


def test_option_names_are_checked_for_every_metric():
    """Issue 28 point 2: MA-CLIP's names without pyiqa, another metric's from its arch's signature."""
    assert metric_options.accepted_options('maclip') == metric_options.accepted_options('maclip_vitB16')
    with pytest.raises(UserError, match=r"maclip has no option 'boxlam' \(did you mean box_lam\?\); its options: "
                                        r'box_lam, '):
        metric_options.check_metric_options('maclip', {'boxlam': 0.3})
    with pytest.raises(UserError, match=r"musiq has no option 'pretrain' \(did you mean pretrained\?\)"):
        metric_options.check_metric_options('musiq', {'pretrain': False})
    metric_options.check_metric_options('musiq', {'pretrained': False, 'as_loss': False})
    with pytest.raises(UserError, match=r"piqe has no option 'foo'; its options: "):  # nothing alike: no guess
        metric_options.check_metric_options('piqe', {'foo': 1})


def test_the_wrapper_options_are_pyiqas():
    """The torch-free list of create_metric's own options is the signature of pyiqa's InferenceModel."""
    import inspect

    from pyiqa.models.inference_model import InferenceModel

    from pyiqa_maclip.option_spec import PYIQA_WRAPPER_OPTIONS

    wrapper = set(inspect.signature(InferenceModel).parameters) - {'metric_name', 'device', 'kwargs'}
    assert set(PYIQA_WRAPPER_OPTIONS) == wrapper


def test_the_arch_takes_its_defaults_from_the_option_spec():
    """One home for MA-CLIP's defaults: the signature of MACLIP is the torch-free table."""
    import inspect

    from pyiqa_maclip import MACLIP
    from pyiqa_maclip.option_spec import OPTION_DEFAULTS

    parameters = inspect.signature(MACLIP).parameters
    assert {name: p.default for name, p in parameters.items()} == OPTION_DEFAULTS


@pytest.mark.parametrize('device, problem', [('cpu', None), ('cuda', None), ('cuda:1', None), ('mps', None),
                                             ('gpu', 'expected a torch device'), ('cuda:', 'expected a torch device'),
                                             ('CPU', 'expected a torch device'), ('cpu:0', 'without an index')])
def test_device_spelling_is_checked_without_torch(device, problem):
    found = options.device_syntax_problem(device)
    assert found == problem if problem is None else problem in found


def test_a_fifo_or_stdin_is_a_path_list(tmp_path, monkeypatch):
    """Issue 27 point 6: a readable stream that is no folder lists paths (relative ones from the working folder)."""
    import threading

    from pyiqa_maclip.app.inputs import collect_paths

    monkeypatch.chdir(tmp_path)
    fifo = tmp_path / 'paths'
    os.mkfifo(fifo)
    writer = threading.Thread(target=lambda: fifo.write_text('a.png\n# a comment\n/elsewhere/b.jpg\n'))
    writer.start()
    assert collect_paths([str(fifo)]) == [str(tmp_path / 'a.png'), '/elsewhere/b.jpg']
    writer.join()


@pytest.mark.slow  # a fresh interpreter
def test_version_is_the_package_version():
    assert _run('-m', 'pyiqa_maclip', '--version').stdout == f'pyiqa-maclip {__version__}\n'


def test_every_subcommand_runs_its_module():
    parser = cli.build_parser()
    needed = {'score': ['x', '-o', 'y'], 'benchmark': ['--config', 'c', '--output-dir', 'd'], 'explain': ['x', '-o', 'y'],
              'report': ['x', '-o', 'y'], 'select': ['x', '-o', 'y']}
    for name in cli.COMMANDS:
        args = parser.parse_args([name, *needed.get(name, [])])
        assert args.run is sys.modules[f'pyiqa_maclip.app.commands.{name}'].run


@pytest.mark.parametrize('raised, status, line', [
    (UserError('a bad\nvalue'), 2, 'pyiqa-maclip download: error: a bad value\n'),
    (weights.WeightsUnavailableError('no weights'), 2, 'pyiqa-maclip download: error: no weights\n'),
    (PermissionError(13, 'Permission denied'), 2, 'pyiqa-maclip download: error: [Errno 13] Permission denied\n'),
    (KeyboardInterrupt(), 130, 'interrupted: pyiqa-maclip download stopped\n'),
])
def test_main_turns_user_errors_into_one_line(monkeypatch, capsys, raised, status, line):
    def run(args):
        raise raised

    monkeypatch.setattr(download, 'run', run)
    assert cli.main(['download']) == status
    assert capsys.readouterr().err == line


@pytest.mark.parametrize('bug', [ValueError('a bad value'), TypeError('a wrong type'), ZeroDivisionError()])
def test_a_bug_keeps_its_traceback_and_says_where_to_report_it(monkeypatch, capsys, bug):
    """Only UserError and OSError are a user's mistakes; a ValueError inside the code is a bug (issue 20, point 3)."""
    def run(args):
        raise bug

    monkeypatch.setattr(download, 'run', run)
    with pytest.raises(type(bug)):
        cli.main(['download'])
    assert 'this is a bug in pyiqa-maclip' in capsys.readouterr().err


# ---- download


def test_download_statuses_one_line_per_backbone(cache, server, tmp_path, capsys):
    target = tmp_path / 'offline'
    assert cli.main(['download', '--verify', 'RN50', '--dir', str(target)]) == 1
    assert capsys.readouterr().out == f'RN50: MISSING (expected {target / "RN50.pt"})\n'
    assert not target.exists()  # --verify creates nothing
    assert cli.main(['download', 'RN50', '--dir', str(target)]) == 0
    captured = capsys.readouterr()
    assert captured.out == f'RN50: downloaded {target / "RN50.pt"}\n'
    assert 'CLIP RN50' in captured.err  # the progress bar
    assert cli.main(['download', '--verify', 'RN50', '--dir', str(target)]) == 0
    assert capsys.readouterr().out == f'RN50: ok {target / "RN50.pt"}\n'
    (target / 'RN50.pt').write_bytes(b'broken')
    assert cli.main(['download', '--verify', 'RN50', '--dir', str(target)]) == 1
    out = capsys.readouterr().out
    assert out.startswith(f'RN50: CORRUPTED {target / "RN50.pt"}') and out.count('\n') == 1  # not also MISSING
    assert cli.main(['download', 'RN50', '--dir', str(target)]) == 0
    assert capsys.readouterr().out.startswith(f'RN50: downloaded {target / "RN50.pt"} (replacing a corrupted copy)')
    assert files_in(target) == ['RN50.pt'] and server.requests == 2


def test_download_reports_a_failure_and_goes_on(cache, server, tmp_path, capsys):
    server.mode = 'truncate'
    assert cli.main(['download', 'RN50', '--dir', str(tmp_path)]) == 1
    out = capsys.readouterr().out
    assert out.startswith('RN50: FAILED download of http://127.0.0.1') and out.count('\n') == 1


@pytest.mark.parametrize('args, words', [
    (['RN51'], "'RN51' is not an official CLIP backbone (did you mean RN50?): expected RN50, RN101"),
    (['vit-b/32'], 'did you mean ViT-B/32?'),
    (['{tiny}'], 'is not an official CLIP backbone: expected RN50, RN101, RN50x4, RN50x16, RN50x64, ViT-B/32, '
                 'ViT-B/16, ViT-L/14, ViT-L/14@336px or all; a local checkpoint file needs no download'),
    (['RN50', '--dir', '{file}'], "--dir {file}: not a folder"),
    (['RN50', '--dir', '{file}/sub'], '--dir {file}/sub: cannot create it: Not a directory'),
])
def test_download_usage_mistakes(cache, server, tmp_path, capsys, tiny_rn, args, words):
    file = tmp_path / 'file'
    file.write_text('x')
    fill = {'tiny': str(tiny_rn), 'file': str(file)}
    assert cli.main(['download', *[a.format(**fill) for a in args]]) == 2
    err = capsys.readouterr().err
    assert err.startswith('pyiqa-maclip download: error: ') and err.count('\n') == 1
    assert words.format(**fill) in err
    assert server.requests == 0


@pytest.mark.slow  # a fresh interpreter importing torch
def test_download_command_in_a_shell(cache, tmp_path):
    """The real console: one line on stderr, exit status 2, no traceback."""
    run = _run('-m', 'pyiqa_maclip', 'download', 'RN51', 'models/RN50.pt', env={**ENV, 'TORCH_HOME': str(tmp_path)})
    assert run.returncode == 2 and run.stdout == ''
    assert run.stderr.startswith("pyiqa-maclip download: error: 'RN51' is not an official CLIP backbone")
    assert run.stderr.count('\n') == 1


# ---- environment variables


@pytest.mark.parametrize('value, expected', [
    ('1', True), ('true', True), ('Yes', True), (' ON ', True),
    ('0', False), ('false', False), ('No', False), ('off', False), ('', False),
])
def test_boolean_environment_values(monkeypatch, value, expected):
    monkeypatch.setenv(weights.OFFLINE_ENV, value)
    assert weights.env_flag(weights.OFFLINE_ENV) is expected


@pytest.mark.parametrize('value', ['maybe', '2', 'y', 'offline', 'true!'])
def test_other_boolean_values_are_refused(monkeypatch, value):
    monkeypatch.setenv(weights.OFFLINE_ENV, value)
    with pytest.raises(weights.EnvironmentValueError,
                       match=f"{weights.OFFLINE_ENV}='{value}' is not a yes/no value: expected one of 1, true, yes, "
                             'on or 0, false, no, off'):
        weights.env_flag(weights.OFFLINE_ENV)


def test_offline_off_means_online(cache, server, monkeypatch):
    monkeypatch.setenv(weights.OFFLINE_ENV, 'off')
    assert weights.resolve('RN50').path == cache / 'RN50.pt'
    assert server.requests == 1


@pytest.mark.parametrize('variable, value, words', [
    (weights.OFFLINE_ENV, 'maybe', 'is not a yes/no value'),
    (weights.MIRROR_ENV, 'mirror.example.com/clip', 'is not a mirror URL: expected http://HOST/PATH'),
    (weights.MIRROR_ENV, 'ftp://mirror.example.com/clip', 'is not a mirror URL'),
    (weights.DEADLINE_ENV, '5 minutes', 'is not a number of seconds'),
    (weights.WEIGHTS_DIR_ENV, '{file}', 'is not a folder'),
])
def test_bad_environment_values_stop_the_command(cache, server, monkeypatch, capsys, tmp_path, variable, value,
                                                 words):
    file = tmp_path / 'file'
    file.write_text('x')
    monkeypatch.setenv(variable, value.format(file=file))
    assert cli.main(['download', 'RN50']) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"pyiqa-maclip download: error: {variable}='{value.format(file=file)}' {words}")
    assert err.count('\n') == 1 and server.requests == 0


# ---- score: the weights' part of its messages (the handler is scoring's)


@pytest.fixture
def image(tmp_path):
    from PIL import Image

    path = tmp_path / 'photo.png'
    Image.new('RGB', (64, 48), (90, 120, 150)).save(path)
    return path


@pytest.mark.parametrize('backbone, words', [
    ('{text}', '--backbone {text}: {text} is not a CLIP checkpoint: neither a state dict saved with torch.save nor an official '
               'OpenAI file (it is a text file)'),
    ('RN51', "--backbone RN51: unknown CLIP backbone 'RN51' (did you mean RN50?)"),
    ('{missing}', "--backbone {missing}: CLIP checkpoint file '{missing}' does not exist"),
])
def test_score_with_a_bad_backbone_says_so_in_one_line(cache, image, tmp_path, capsys, backbone, words):
    fill = {'text': str(tmp_path / 'notes.pt'), 'missing': str(tmp_path / 'nowhere/RN50.pt')}
    (tmp_path / 'notes.pt').write_text('fine-tuned on my photos, epoch 3\n')
    status = cli.main(['score', str(image), '-o', str(tmp_path / 'scores.csv'), '--backbone', backbone.format(**fill),
                       '--no-progress'])
    err = capsys.readouterr().err
    assert status == 2
    assert f'pyiqa-maclip score: error: {words.format(**fill)}' in err
    assert 'Traceback' not in err and 'weights_only' not in err and 'backbone=' not in err
