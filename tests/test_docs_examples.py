"""Every example of README.md and docs/*.md runs, offline, so that none can rot (issue 23).

Each page's ```python and ```bash blocks run in page order, as a reader would run them one after
the other, in a fresh folder holding ``photos/`` (pyiqa's sample photos), ``mos.csv`` (ratings for
them, made up: the examples need a table, not true ratings) and ``model.pt`` (a TorchScript archive
that is not OpenAI's). Tiny random checkpoints stand in for OpenAI's files: every official name
resolves to one (its SHA-256 registered as the official one) and downloads come from a local
mirror (``PYIQA_MACLIP_MIRROR=file://...``), so ``pyiqa-maclip download`` and a first use download
for real, from a folder. Python blocks of a page share one namespace and run in this process;
``pyiqa-maclip ...`` and ``pyiqa ...`` lines run in this process (:func:`pyiqa_maclip.app.cli.main`,
pyiqa's ``pyiqa_cmd.main``), other
shell lines in bash, where a ``sitecustomize`` gives Python the same official names. A shell line
must exit with status 0 unless its comment says ``exit status N``.

A block is skipped only when the line before it is ``<!-- not run: REASON -->`` (the page says why
in its text) or it is the README's test command (the suite itself). A ```yaml block whose first
line is ``# NAME.yml`` is written to NAME.yml before the blocks after it run.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import sysconfig
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / 'README.md'
PAGES = [README, *sorted((ROOT / 'docs').glob('*.md'))]
LANGUAGES = {'python', 'bash', 'yaml', 'text', 'bibtex'}  # every fence names one of these
README_MAX_LINES = 300

_FENCE = re.compile(r'^(\s*)```(\S*)\s*$')
_NOT_RUN = re.compile(r'^<!--\s*not run:(.*)-->$')
_TEST_COMMAND = '<!-- test-command'  # .ci/run runs the command of the block after this marker
_EXIT = re.compile(r'#.*\bexit status (\d+)')
_YAML_FILE = re.compile(r'#\s*(\S+\.ya?ml)\s*$')
_SHELL_SYNTAX = set('|&;<>()$`*?[]{}~')  # what needs bash rather than an argv
_SAMPLES = Path(sysconfig.get_paths()['purelib']) / 'ResultsCalibra' / 'dist_dir'  # shipped in pyiqa's wheel
_RATINGS = {'I03.bmp': 1.2, 'I04.bmp': 4.1, 'I06.bmp': 3.9, 'I08.bmp': 4.0, 'I19.bmp': 2.2}


@dataclass(frozen=True)
class Block:
    page: Path
    line: int  # of the opening fence, 1-based
    language: str
    code: str
    not_run: str | None  # why the page does not run it

    @property
    def where(self) -> str:
        return f'{self.page.relative_to(ROOT)}:{self.line}'


def blocks(page: Path) -> list[Block]:
    """The fenced code blocks of a Markdown page (fences may be indented, as in list items)."""
    lines = page.read_text(encoding='utf-8').splitlines()
    found, i = [], 0
    while i < len(lines):
        fence = _FENCE.match(lines[i])
        if not fence:
            i += 1
            continue
        indent, language, start = fence[1], fence[2], i
        body = []
        i += 1
        while i < len(lines) and lines[i].strip() != '```':
            body.append(lines[i][len(indent):] if lines[i].startswith(indent) else lines[i])
            i += 1
        assert i < len(lines), f'{page.name}:{start + 1}: the code block is never closed'
        i += 1
        before = next((line.strip() for line in reversed(lines[:start]) if line.strip()), '')
        not_run = _NOT_RUN.match(before)
        reason = (not_run[1].strip() if not_run else
                  'the test command: the suite itself' if before.startswith(_TEST_COMMAND) else None)
        found.append(Block(page, start + 1, language, '\n'.join(body) + '\n', reason))
    return found


def shell_commands(code: str) -> list[str]:
    """The commands of a shell block: continuation lines joined, a here-document kept with its command,
    blank and comment lines left out."""
    lines, commands, i = code.splitlines(), [], 0
    while i < len(lines):
        command = lines[i]
        while command.endswith('\\') and i + 1 < len(lines):
            i += 1
            command = command[:-1] + ' ' + lines[i].strip()
        if heredoc := re.search(r"<<-?\s*['\"]?(\w+)", command):
            while i + 1 < len(lines):
                i += 1
                command += '\n' + lines[i]
                if lines[i].strip() == heredoc[1]:
                    break
        i += 1
        if command.strip() and not command.lstrip().startswith('#'):
            commands.append(command)
    return commands


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# ---------------------------------------------------------------- the folder a page runs in

_SITECUSTOMIZE = '''\
"""Written by tests/test_docs_examples.py: the official CLIP names resolve to the test's stand-ins."""
import importlib.abc
import importlib.machinery
import json
import os
import sys


class _StandIns(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name != 'pyiqa_maclip.names':
            return None
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        run = spec.loader.exec_module

        def exec_module(module):
            run(module)
            for key, (filename, digest, size) in json.loads(os.environ['PYIQA_MACLIP_DOCS_TEST_OFFICIAL']).items():
                module.OFFICIAL_CHECKPOINTS[key] = module.OfficialFile(filename, digest, size)

        spec.loader.exec_module = exec_module
        return spec


sys.meta_path.insert(0, _StandIns())
'''

_SHIMS = {  # commands the pages use, run by this interpreter
    'python': '"{python}" "$@"',
    'pyiqa-maclip': '"{python}" -m pyiqa_maclip "$@"',
    'pyiqa': '"{python}" -c "import sys; from pyiqa.pyiqa_cmd import main; sys.exit(main())" "$@"',
    'accelerate': '"{python}" -m accelerate.commands.accelerate_cli "$@"',
}


@pytest.fixture(scope='module')
def stand_ins(tmp_path_factory, checkpoints):
    """Tiny random checkpoints standing in for every official file, a mirror serving them, and a
    TorchScript archive that is not OpenAI's. Returns (name -> (file name, SHA-256, size cap), mirror, archive)."""
    from pyiqa_maclip.names import OFFICIAL_CHECKPOINTS

    root = tmp_path_factory.mktemp('stand-ins')
    files = {arch: checkpoints(arch) for arch in ('tiny-RN', 'tiny-ViT')}
    mirror, official = root / 'mirror', {}
    for name, real in OFFICIAL_CHECKPOINTS.items():
        source = files['tiny-ViT' if name.startswith('ViT') else 'tiny-RN']
        digest = _sha256(source)
        (mirror / digest).mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, mirror / digest / real.filename)
        official[name] = (real.filename, digest, 4 * source.stat().st_size)
    return official, mirror, checkpoints('tiny-RN', 'torchscript', seed=1)


@pytest.fixture
def workspace(tmp_path, monkeypatch, stand_ins):
    """A folder as the pages assume it, the stand-ins in place, no network reachable by any example."""
    from pyiqa_maclip import names

    official, mirror, archive = stand_ins
    for name, (filename, digest, size) in official.items():
        monkeypatch.setitem(names.OFFICIAL_CHECKPOINTS, name, names.OfficialFile(filename, digest, size))
    work = tmp_path / 'work'
    photos = work / 'photos'
    photos.mkdir(parents=True)
    if _SAMPLES.is_dir():
        for sample in sorted(_SAMPLES.glob('*.bmp')):
            shutil.copyfile(sample, photos / sample.name)
    else:  # a pyiqa installed without its sample photos
        from PIL import Image

        from pyiqa_maclip.testing import random_images

        for seed, name in enumerate(_RATINGS):
            pixels = (random_images(1, 384, 512, seed=seed)[0].permute(1, 2, 0) * 255).byte().numpy()
            Image.fromarray(pixels).save(photos / name)
    (work / 'mos.csv').write_text('image,mos\n' + ''.join(f'{k},{v}\n' for k, v in _RATINGS.items()))
    shutil.copyfile(archive, work / 'model.pt')

    shims = tmp_path / 'bin'
    shims.mkdir()
    for command, line in _SHIMS.items():
        (shims / command).write_text('#!/bin/sh\nexec ' + line.format(python=sys.executable) + '\n')
        (shims / command).chmod(0o755)
    (work / '.venv/bin').mkdir(parents=True)  # the pages' `.venv/bin/python` is this interpreter too
    for command in ('python', 'pyiqa-maclip'):
        (work / '.venv/bin' / command).symlink_to(shims / command)
    site = tmp_path / 'site'
    site.mkdir()
    (site / 'sitecustomize.py').write_text(_SITECUSTOMIZE)

    monkeypatch.setenv('PYIQA_MACLIP_MIRROR', mirror.as_uri())
    monkeypatch.setenv('PYIQA_MACLIP_DOCS_TEST_OFFICIAL', json.dumps(official))
    monkeypatch.setenv('TORCH_HOME', str(tmp_path / 'torch-home'))
    for variable in ('PYIQA_MACLIP_WEIGHTS_DIR', 'PYIQA_MACLIP_OFFLINE', 'PYIQA_MACLIP_DOWNLOAD_DEADLINE'):
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.setenv('PATH', f'{shims}{os.pathsep}{os.environ["PATH"]}')
    python_path = os.environ.get('PYTHONPATH')
    monkeypatch.setenv('PYTHONPATH', os.pathsep.join([str(site), str(ROOT), *([python_path] if python_path else [])]))
    monkeypatch.setenv('PYTHONDONTWRITEBYTECODE', '1')
    monkeypatch.setenv('MPLBACKEND', 'Agg')
    # Decoding in this process: starting worker processes costs seconds per command, and workers are
    # tested on their own (test_decoding, test_scoring).
    from pyiqa_maclip.app import engine

    monkeypatch.setattr(engine, 'default_num_workers', lambda: 0)
    monkeypatch.chdir(work)
    return work


# ---------------------------------------------------------------- running a block


@contextlib.contextmanager
def _environment(assignments: dict[str, str]):
    saved = {name: os.environ.get(name) for name in assignments}
    os.environ.update(assignments)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def _argv(command: str) -> tuple[dict[str, str], str, list[str]] | None:
    """(environment assignments, program, arguments) of a plain ``pyiqa-maclip ...``, ``python -m
    pyiqa_maclip ...`` or ``pyiqa ...`` line, or None for anything else or anything that needs the shell."""
    try:
        words = shlex.split(command, comments=True)
    except ValueError:
        return None
    if any(set(word) & _SHELL_SYNTAX for word in words):
        return None
    assignments = {}
    while words and re.fullmatch(r'[A-Za-z_]\w*=.*', words[0]):
        name, _, value = words.pop(0).partition('=')
        assignments[name] = value
    for prefix, program in ((['pyiqa-maclip'], 'pyiqa-maclip'), (['python', '-m', 'pyiqa_maclip'], 'pyiqa-maclip'),
                            (['pyiqa'], 'pyiqa')):
        if words[:len(prefix)] == prefix:
            return assignments, program, words[len(prefix):]
    return None


def _run_in_process(program: str, argv: list[str]) -> int:
    if program == 'pyiqa':
        from pyiqa.pyiqa_cmd import main

        saved, sys.argv = sys.argv, ['pyiqa', *argv]
        try:
            main()
            return 0
        finally:
            sys.argv = saved
    from pyiqa_maclip.app.cli import main

    return main(argv)


def run_command(command: str, monkeypatch) -> None:
    expected = int(_EXIT.search(command)[1]) if _EXIT.search(command) else 0
    if command.startswith('export '):  # the shell's meaning, kept for the page's next commands
        shown = subprocess.run(['bash', '-c', f'{command}\nenv -0'], capture_output=True, check=True).stdout
        for name, _, value in (entry.decode().partition('=') for entry in shown.split(b'\0') if entry):
            if os.environ.get(name) != value:
                monkeypatch.setenv(name, value)
        return
    if (plain := _argv(command)) is not None:
        assignments, program, argv = plain
        with _environment(assignments):
            try:
                status = _run_in_process(program, argv)
            except SystemExit as exit:  # argparse: --help, --version, usage mistakes
                status = exit.code if isinstance(exit.code, int) else int(exit.code is not None)
        assert status == expected, f'`{command}` exited with status {status}, expected {expected}'
        return
    done = subprocess.run(['bash', '-c', command], capture_output=True, text=True, timeout=600)
    assert done.returncode == expected, (f'`{command}` exited with status {done.returncode}, expected {expected}:\n'
                                         f'{done.stdout[-3000:]}\n{done.stderr[-3000:]}')


def run_page(page: Path, monkeypatch) -> int:
    """Run the page's examples in order; how many blocks ran."""
    namespace, ran = {'__name__': '__main__'}, 0
    for block in blocks(page):
        if block.not_run is not None:
            continue
        if block.language == 'yaml' and (name := _YAML_FILE.match(block.code.splitlines()[0])):
            Path(name[1]).write_text(block.code, encoding='utf-8')
        elif block.language == 'python':
            exec(compile(block.code, block.where, 'exec'), namespace)
            ran += 1
        elif block.language == 'bash':
            for command in shell_commands(block.code):
                try:
                    run_command(command, monkeypatch)
                except AssertionError as error:
                    raise AssertionError(f'{block.where}: {error}') from None
            ran += 1
    return ran


# ---------------------------------------------------------------- the tests


@pytest.mark.slow
@pytest.mark.parametrize('page', PAGES, ids=[p.name for p in PAGES])
def test_every_example_of_the_page_runs(page, workspace, monkeypatch):
    runnable = [b for b in blocks(page) if b.language in ('python', 'bash') and b.not_run is None]
    assert run_page(page, monkeypatch) == len(runnable)


def test_every_block_says_what_it_is_and_why_it_does_not_run():
    for page in PAGES:
        for block in blocks(page):
            assert block.language in LANGUAGES, f'{block.where}: a code block must name one of {sorted(LANGUAGES)}'
            if block.not_run is not None:
                assert block.language in ('python', 'bash') and block.not_run, \
                    f'{block.where}: a "not run" mark needs a reason and a block to skip'
    runs = [b for page in PAGES for b in blocks(page) if b.language in ('python', 'bash') and b.not_run is None]
    assert len(runs) >= 20  # the pages are mostly runnable examples, not a list of exceptions


def test_the_readme_keeps_its_set_up_commands_and_the_ci_test_command():
    lines = README.read_text(encoding='utf-8').splitlines()
    assert len(lines) <= README_MAX_LINES
    top = blocks(README)[:2]
    assert 'pip install -e .' in top[0].code and 'pyiqa-maclip score' in top[0].code
    marker = next(i for i, line in enumerate(lines) if line.startswith(_TEST_COMMAND))
    assert lines[marker + 1] == '```bash' and lines[marker + 2] == top[1].code.strip()  # what .ci/run extracts
    assert ' -m pytest' in top[1].code and top[1].not_run


def _table(page: Path, header: str) -> list[list[str]]:
    """The rows (cells without backticks) of the Markdown table whose header row starts with ``header``."""
    lines = page.read_text(encoding='utf-8').splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(header))
    rows = []
    for line in lines[start + 2:]:
        if not line.startswith('|'):
            break
        rows.append([cell.strip().strip('`') for cell in line.strip('|').split('|')])
    return rows


def test_the_readme_options_are_the_signature_of_maclip():
    import inspect

    from pyiqa_maclip import DEFAULT_PROMPTS, MACLIP

    documented = {row[0]: row[1] for row in _table(README, '| option | default |')}
    defaults = {name: p.default for name, p in inspect.signature(MACLIP).parameters.items()}
    assert list(documented) == list(defaults)
    for name, default in defaults.items():
        if name == 'prompts':
            assert default == DEFAULT_PROMPTS and len(DEFAULT_PROMPTS) == 5 and 'five pairs' in documented[name]
        else:
            assert documented[name] == repr(default), name


def test_the_readme_variants_are_the_registered_ones():
    from pyiqa_maclip.names import METRIC_NAME, VARIANTS

    documented = {row[0]: row[1].split()[0].strip('`') for row in _table(README, '| metric name | backbone |')}
    assert documented == {METRIC_NAME: 'RN50', **VARIANTS}


def _anchor(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation but - and _ dropped, spaces as -."""
    text = re.sub(r'[`*]', '', heading.strip().lower())
    return re.sub(r'[^\w\- ]', '', text).replace(' ', '-')


def test_links_between_the_pages_lead_somewhere():
    pages = [*PAGES, ROOT / 'CHANGELOG.md']
    anchors = {page.resolve(): {_anchor(line.lstrip('#')) for line in page.read_text(encoding='utf-8').splitlines()
                                if line.startswith('#')} for page in pages}
    for page in pages:
        text = re.sub(r'```.*?```', '', page.read_text(encoding='utf-8'), flags=re.S)
        for target in re.findall(r'\]\(([^)\s]+)\)', text):
            if re.match(r'[a-z]+:', target):
                continue
            path, _, anchor = target.partition('#')
            file = (page.parent / path).resolve() if path else page.resolve()
            assert file.exists(), f'{page.name}: link to {target}: no such file'
            if anchor:
                assert anchor in anchors.get(file, set()), f'{page.name}: link to {target}: no such heading'
