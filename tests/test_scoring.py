"""``pyiqa-maclip score``: a generated collection with broken files, resume after kill -9 and
Ctrl-C, refusals and --overwrite, --retry-failed, 2 accelerate processes against 1, and the
hostile cases of issue 10 (odd names, damaged exports, an input as output, a changed checkpoint).

Every run uses the tiny random CLIP checkpoint of conftest; nothing is downloaded.
"""
from __future__ import annotations

import contextlib
import csv
import io
import os
import random
import re
import signal
import socket
import sqlite3
import stat
import subprocess
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms.functional import to_tensor

from rounding import Rounding, assert_within_rounding, rounding_bound

from pyiqa_maclip.app import cli
from pyiqa_maclip.app.files import WorkFiles
from pyiqa_maclip.app.inputs import collect_paths, image_extensions
from pyiqa_maclip.app.journal import display_path
from pyiqa_maclip.errors import UserError
from pyiqa_maclip.names import COMPONENTS, METRIC_COLUMNS
from pyiqa_maclip.testing import random_images

ROOT = Path(__file__).resolve().parents[1]
COLUMNS, ERROR_COLUMNS = ('path', *COMPONENTS), ('path', 'error')
#: The header of MA-CLIP's scores CSV: every row ends with the metric and its direction (issue 28).
HEADER = [*COLUMNS, *METRIC_COLUMNS]


def pixels(height: int, width: int, seed: int, channels: int = 3) -> np.ndarray:
    image = random_images(1, height, width, channels, seed=seed)[0]
    return (image.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8).squeeze()


def encoded(array: np.ndarray, fmt: str, mode: str | None = None) -> bytes:
    buffer = io.BytesIO()
    image = Image.fromarray(array)
    (image.convert(mode) if mode else image).save(buffer, fmt)
    return buffer.getvalue()


@dataclass
class Collection:
    root: Path
    inputs: list[str]  # PATH arguments: a folder and a list file
    good: list[str]  # in the order of the output
    failed: dict[str, str]  # path -> start of the reason, in the order of the errors file

    @property
    def total(self) -> int:
        return len(self.good) + len(self.failed)


@pytest.fixture(scope='module')
def collection(tmp_path_factory) -> Collection:
    """Images of five kinds in nested folders, four broken files, and a list file."""
    root = tmp_path_factory.mktemp('collection')
    files = {
        'photos/a.png': encoded(pixels(40, 56, 1), 'PNG'),
        'photos/b, "quoted".jpg': encoded(pixels(64, 48, 2), 'JPEG'),
        'photos/empty.png': b'',
        'photos/garbage.jpg': np.random.default_rng(0).bytes(700),
        'photos/notes.md': b'not an image, and not an image suffix',
        'photos/sub/c_gray.png': encoded(pixels(50, 50, 3, channels=1), 'PNG'),
        'photos/sub/d_rgba.png': encoded(pixels(48, 40, 4), 'PNG', mode='RGBA'),
        'photos/sub/deeper/e_palette.gif': encoded(pixels(37, 45, 5), 'GIF', mode='P'),
        'photos/sub/truncated.jpg': encoded(pixels(64, 64, 6), 'JPEG')[:700],
        'photos/truncated.png': encoded(pixels(64, 64, 7), 'PNG')[:900],
        'extra/g.png': encoded(pixels(60, 36, 8), 'PNG'),
        'list.txt': b'# listed images, relative to this file\n\nextra/g.png\n  photos/a.png  \nextra/missing.png\n',
    }
    for name, data in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)

    def at(name: str) -> str:
        return str(root / name)

    good = ['photos/a.png', 'photos/b, "quoted".jpg', 'photos/sub/c_gray.png', 'photos/sub/d_rgba.png',
            'photos/sub/deeper/e_palette.gif', 'extra/g.png']
    failed = {
        'photos/empty.png': 'ValueError: empty file (0 bytes)',
        'photos/garbage.jpg': 'UnidentifiedImageError: cannot identify image file',
        'photos/sub/truncated.jpg': 'OSError: image file is truncated',
        'photos/truncated.png': 'OSError: image file is truncated',
        'extra/missing.png': 'FileNotFoundError: [Errno 2] No such file or directory',
    }
    return Collection(root, [at('photos'), at('list.txt')], [at(n) for n in good],
                      {at(n): reason for n, reason in failed.items()})


def score(*args) -> tuple[int, str, str]:
    """Run ``pyiqa-maclip score ARGS`` in this process: (exit status, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        status = cli.main(['score', *map(str, args), '--no-progress'])
    return status, out.getvalue(), err.getvalue()


def score_collection(collection: Collection, output: Path, tiny_rn: Path, *options) -> tuple[int, str, str]:
    return score(*collection.inputs, '--output', output, '--backbone', tiny_rn, '--batch-size', 2, *options)


def read_csv_rows(file: Path) -> list[list[str]]:
    with open(file, newline='', encoding='utf-8') as f:
        return list(csv.reader(f))


def journal_rows(output: Path) -> int:
    """Results committed so far in the main journal of a run on ``output`` (0 if none yet)."""
    journal = output.with_name(f'.{output.name}.pyiqa-maclip') / 'rank0.sqlite3'
    try:
        with contextlib.closing(sqlite3.connect(f'file:{journal}?mode=ro', uri=True, timeout=10)) as db:
            return db.execute('SELECT COUNT(*) FROM results').fetchone()[0]
    except sqlite3.OperationalError:  # not created yet
        return 0


def decoded(path: str) -> torch.Tensor:
    """An image file as the command decodes it (PIL, RGB, to_tensor)."""
    return to_tensor(Image.open(path).convert('RGB'))


def assert_same_scores(actual: list[list[str]], expected: list[list[str]], rounding: Rounding) -> None:
    """The same paths in the same order, and in both outputs every component of every image within
    float32 rounding of its float64 computation (``rounding``, for the images in that order): runs
    that batch images otherwise round otherwise. The CSV's 9 significant digits hold a float32 exactly."""
    assert actual[0] == expected[0] == HEADER
    assert [row[0] for row in actual] == [row[0] for row in expected]
    for rows in (actual, expected):
        assert all(row[len(COLUMNS):] == ['maclip', 'False'] for row in rows[1:])
        values = np.array([row[1:len(COLUMNS)] for row in rows[1:]], dtype=float)
        for column, field in enumerate(COLUMNS[1:]):
            assert_within_rounding(values[:, column], rounding, field)


#: What a finished run leaves beside its output: the two exports and the work folder (lock, journal).
FINISHED_RUN = ['.scores.csv.pyiqa-maclip', 'scores.csv', 'scores.errors.csv']


def listing(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


@pytest.fixture(scope='module')
def baseline(collection, tiny_rn, tmp_path_factory):
    """One uninterrupted run on the collection: (exit status, stdout, output path)."""
    output = tmp_path_factory.mktemp('baseline') / 'scores.csv'
    status, stdout, _ = score_collection(collection, output, tiny_rn, '--num-workers', 1)
    return status, stdout, output


@pytest.fixture(scope='module')
def collection_rounding(collection, tiny_metric) -> Rounding:
    """The float64 components of the collection's good images, in output order, and their float32 rounding bound."""
    return rounding_bound(tiny_metric, [decoded(path) for path in collection.good])


def test_collection_with_broken_files(collection, baseline, tiny_metric, collection_rounding):
    status, stdout, output = baseline
    assert status == 1
    errors = output.with_name('scores.errors.csv')
    assert stdout == (f'scored 6 images, 5 failed (see {errors}); '
                      f'{collection.total} processed in this run, 0 done before\n')
    assert listing(output.parent) == FINISHED_RUN
    # Files as users write them (umask 022 in this test process: 0644).
    umask = os.umask(0)
    os.umask(umask)
    for file in (output, errors):
        assert stat.S_IMODE(file.stat().st_mode) == 0o666 & ~umask

    rows = read_csv_rows(output)
    assert rows[0] == HEADER and [row[0] for row in rows[1:]] == collection.good
    assert all(row[len(COLUMNS):] == ['maclip', 'False'] for row in rows[1:])
    # The same files decoded independently (PIL, RGB, to_tensor) and scored by the metric itself:
    # both within float32 rounding of the float64 computation.
    with torch.no_grad():
        direct = tiny_metric.score_images([decoded(p) for p in collection.good])
    values = np.array([row[1:len(COLUMNS)] for row in rows[1:]], dtype=float)
    for column, field in enumerate(COLUMNS[1:]):
        assert_within_rounding(values[:, column], collection_rounding, field)
        assert_within_rounding(getattr(direct, field), collection_rounding, field)

    failures = read_csv_rows(errors)
    assert failures[0] == list(ERROR_COLUMNS)
    assert [path for path, _ in failures[1:]] == list(collection.failed)
    for (path, reason), expected in zip(failures[1:], collection.failed.values()):
        assert reason.startswith(expected), (path, reason)


def test_collect_paths(collection, tmp_path):
    root = collection.root
    assert collect_paths([root / 'photos']) == [str(root / 'photos' / n) for n in (
        'a.png', 'b, "quoted".jpg', 'empty.png', 'garbage.jpg', 'sub/c_gray.png', 'sub/d_rgba.png',
        'sub/deeper/e_palette.gif', 'sub/truncated.jpg', 'truncated.png')]
    assert collect_paths([root / 'photos', root / 'list.txt']) == [*collect_paths([root / 'photos']),
                                                                   str(root / 'extra/g.png'),
                                                                   str(root / 'extra/missing.png')]
    assert collect_paths([root / 'photos'], extensions=['PNG', '.gif']) == [
        str(root / n) for n in ('photos/a.png', 'photos/empty.png', 'photos/sub/c_gray.png',
                                'photos/sub/d_rgba.png', 'photos/sub/deeper/e_palette.gif', 'photos/truncated.png')]
    assert collect_paths([root / 'photos/notes.md']) == [str(root / 'photos/notes.md')]  # named files are taken
    with pytest.raises(UserError, match='does not exist'):
        collect_paths([root / 'nowhere'])

    status, _, stderr = score(root / 'nowhere', '--output', tmp_path / 'scores.csv')
    assert status == 2 and 'nowhere' in stderr and 'does not exist' in stderr
    assert not any(tmp_path.iterdir())
    with pytest.raises(SystemExit) as exit_info, contextlib.redirect_stderr(io.StringIO()):
        cli.main(['score', str(root), '--output', str(tmp_path / 'scores.csv'), '--batch-size', '0'])
    assert exit_info.value.code == 2


def test_formats_that_run_other_programs_are_not_taken_from_folders(tmp_path):
    for name in ('a.png', 'b.eps', 'c.ps', 'd.EPS'):
        (tmp_path / name).write_bytes(b'x')
    assert '.eps' not in image_extensions() and '.ps' not in image_extensions() and '.png' in image_extensions()
    assert collect_paths([tmp_path]) == [str(tmp_path / 'a.png')]
    assert collect_paths([tmp_path / 'b.eps']) == [str(tmp_path / 'b.eps')]  # named explicitly: taken


def complete_lines(file: Path) -> list[bytes]:
    data = file.read_bytes() if file.exists() else b''
    return data[:data.rfind(b'\n') + 1].splitlines(keepends=True)


# Scores in a real process, slowed down so that it can be killed halfway.
SLOW_RUN = '''
import sys, time
from pyiqa_maclip import MACLIP
from pyiqa_maclip.app import cli
score_images = MACLIP.score_images
MACLIP.score_images = lambda self, images: time.sleep(float(sys.argv[1])) or score_images(self, images)
sys.exit(cli.main(sys.argv[2:]))
'''


def start_slow_run(args, delay: float = 1.0) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, '-c', SLOW_RUN, str(delay), 'score', *map(str, args), '--no-progress'],
                            start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


HELD_RUN = '''
import os, sys, time
from pyiqa_maclip import MACLIP
from pyiqa_maclip.app import cli
score_images, gate, batches = MACLIP.score_images, sys.argv[1], []
def held(self, images):  # every batch after the first waits while the gate file exists
    batches.append(len(images))
    while len(batches) > 1 and os.path.exists(gate):
        time.sleep(0.02)
    return score_images(self, images)
MACLIP.score_images = held
sys.exit(cli.main(sys.argv[2:]))
'''


def start_held_run(args, gate: Path) -> subprocess.Popen:
    """A run that commits its first batch, then waits until ``gate`` is removed."""
    gate.touch()
    return subprocess.Popen([sys.executable, '-c', HELD_RUN, str(gate), 'score', *map(str, args), '--no-progress'],
                            start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def kill_after(run: subprocess.Popen, output: Path, rows: int, extra_seconds: float = 0.0) -> None:
    """kill -9 the run (and its decoding workers) once ``rows`` results are committed, plus a delay."""
    deadline = time.monotonic() + 120
    while journal_rows(output) < rows:
        assert run.poll() is None, run.stderr.read().decode()
        assert time.monotonic() < deadline, 'no rows were committed'
        time.sleep(0.02)
    time.sleep(extra_seconds)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(run.pid, signal.SIGKILL)
    run.wait()
    run.stderr.close()


@pytest.mark.slow  # kill -9 of a fresh interpreter
def test_resume_after_kill_9_and_a_damaged_export(collection, baseline, collection_rounding, tiny_rn, tmp_path):
    output = tmp_path / 'scores.csv'
    assert score(collection.good[0], '--output', output, '--backbone', tiny_rn)[0] == 0  # an export to damage later
    run = start_slow_run([*collection.inputs, '--output', output, '--backbone', tiny_rn, '--batch-size', 2,
                          '--num-workers', 1])
    kill_after(run, output, 3)
    done = journal_rows(output)
    assert 3 <= done < collection.total  # killed halfway
    # Whatever this run's CSV holds (here: damage of every kind) costs no row: the journal is the truth.
    # A changed export is no longer the run's to replace (issue 27): refused by name, kept; once moved
    # away, the run resumes.
    damaged = b'path,score\n\n\n/x/y.png,0.5\n\x00\x00garbage,"unterminated\n'
    output.write_bytes(damaged)
    status, _, stderr = score_collection(collection, output, tiny_rn, '--num-workers', 1)
    assert status == 2 and f'the output {output} is in the way' in stderr and output.read_bytes() == damaged
    output.unlink()
    status, stdout, stderr = score_collection(collection, output, tiny_rn, '--num-workers', 1)
    assert status == 1
    remaining = collection.total - done
    assert f'{remaining} of {collection.total} images to score, {done} done before' in stderr
    assert stdout.endswith(f'; {remaining} processed in this run, {done} done before\n')
    assert_same_scores(read_csv_rows(output), read_csv_rows(baseline[2]), collection_rounding)
    assert output.with_name('scores.errors.csv').read_text() == baseline[2].with_name('scores.errors.csv').read_text()
    assert listing(tmp_path) == FINISHED_RUN


# Decodes slowly in its worker processes, so that they can be killed mid-run.
SLOW_DECODING = '''
import sys, time
from pyiqa_maclip.app import cli, images
read_image = images.read_image
images.read_image = lambda *a, **k: time.sleep(0.15) or read_image(*a, **k)
sys.exit(cli.main(sys.argv[1:]))
'''


def children(pid: int) -> list[int]:
    with open(f'/proc/{pid}/task/{pid}/children', encoding='ascii') as listing_:
        return [int(child) for child in listing_.read().split()]


@pytest.mark.slow  # a fresh interpreter whose decoding workers are killed
@pytest.mark.skipif(not os.path.exists(f'/proc/{os.getpid()}/task/{os.getpid()}/children'), reason='needs Linux /proc')
def test_killed_decoding_workers_never_hang_the_run(tiny_rn, tmp_path):
    """Issue 27, point 2: SIGKILL on decoding workers at random moments (the out-of-memory killer):
    the run ends by itself, the images in flight are failed with the reason, every row is kept, and
    a rerun with --retry-failed finishes the job."""
    rng = random.Random(27)
    folder = tmp_path / 'in'
    folder.mkdir()
    for i in range(16):
        (folder / f'{i:02d}.png').write_bytes(encoded(pixels(32 + i, 36, 80 + i), 'PNG'))
    output = tmp_path / 'scores.csv'
    args = ['score', folder, '--output', output, '--backbone', tiny_rn, '--num-workers', 2, '--batch-size', 2,
            '--no-progress']
    run = subprocess.Popen([sys.executable, '-c', SLOW_DECODING, *map(str, args)], stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True)
    killed = 0
    while run.poll() is None and killed < 4:
        time.sleep(rng.uniform(0.1, 0.6))
        with contextlib.suppress(OSError, ValueError):
            victims = children(run.pid)
            if victims:
                os.kill(rng.choice(victims), signal.SIGKILL)
                killed += 1
    stdout, stderr = run.communicate(timeout=600)  # the safety net, not the assertion: it ends by itself
    assert killed > 0 and run.returncode in (0, 1), stderr
    rows = read_csv_rows(output)[1:]
    failed = read_csv_rows(output.with_name('scores.errors.csv'))[1:] if run.returncode else []
    assert len(rows) + len(failed) == 16 and len(failed) <= killed
    assert all(error == 'the decoding process died (signal 9)' for _, error in failed)
    assert score(folder, '--output', output, '--backbone', tiny_rn, '--retry-failed')[0] == 0
    assert sorted(row[0] for row in read_csv_rows(output)[1:]) == sorted(str(p) for p in folder.iterdir())


@pytest.mark.slow  # a fresh interpreter holding the output
def test_a_second_run_on_an_output_in_use_is_refused(collection, baseline, tiny_rn, tmp_path):
    output = tmp_path / 'scores.csv'
    gate = tmp_path / 'gate'
    run = start_held_run([*collection.inputs, '--output', output, '--backbone', tiny_rn, '--batch-size', 2,
                          '--num-workers', 1], gate)
    deadline = time.monotonic() + 120
    while journal_rows(output) < 1:
        assert run.poll() is None, run.stderr.read().decode()
        assert time.monotonic() < deadline, 'no rows were committed'
        time.sleep(0.05)
    for options in ((), ('--overwrite',)):
        status, _, stderr = score_collection(collection, output, tiny_rn, *options)
        assert status == 2 and 'another run is writing' in stderr and 'lock' in stderr
    assert run.poll() is None  # held at its second batch all along
    gate.unlink()
    assert run.wait(120) == 1, run.stderr.read().decode()
    run.stderr.close()
    # The first run went on undisturbed: the same files as an uninterrupted run.
    assert output.read_bytes() == baseline[2].read_bytes()
    assert output.with_name('scores.errors.csv').read_bytes() == baseline[2].with_name('scores.errors.csv').read_bytes()


def test_resume_after_ctrl_c(collection, baseline, collection_rounding, tiny_rn, tmp_path, monkeypatch):
    from pyiqa_maclip import MACLIP

    calls = []
    score_images = MACLIP.score_images

    def interrupted_third_batch(self, images):
        calls.append(len(images))
        if len(calls) == 3:
            raise KeyboardInterrupt
        return score_images(self, images)

    output = tmp_path / 'scores.csv'
    monkeypatch.setattr(MACLIP, 'score_images', interrupted_third_batch)
    status, _, stderr = score_collection(collection, output, tiny_rn, '--num-workers', 0)
    assert status == 130 and 'run the same command again to resume' in stderr
    assert 'Traceback' not in stderr and stderr.count('\n') == 2  # the "to score" line and one line
    kept = len(read_csv_rows(output)) - 1  # the export shows what was done
    assert kept == sum(calls[:2]) > 0
    done = journal_rows(output)

    monkeypatch.setattr(MACLIP, 'score_images', score_images)
    status, stdout, _ = score_collection(collection, output, tiny_rn, '--num-workers', 0)
    assert status == 1
    assert stdout.endswith(f'; {collection.total - done} processed in this run, {done} done before\n')
    assert_same_scores(read_csv_rows(output), read_csv_rows(baseline[2]), collection_rounding)


def test_refusals_and_overwrite(collection, baseline, tiny_rn, checkpoints, tmp_path):
    import shutil

    output = tmp_path / 'scores.csv'
    weights = tmp_path / 'weights.pt'
    shutil.copy(tiny_rn, weights)
    assert score_collection(collection, output, weights)[0] == 1
    before = output.read_bytes()

    # Other weights at the same path: the checkpoint's SHA-256 is in the fingerprint, not its path.
    shutil.copy(checkpoints('tiny-RN', seed=1), weights)
    status, _, stderr = score_collection(collection, output, weights)
    assert status == 2 and 'checkpoint_sha256 was' in stderr and '--overwrite' in stderr
    assert 'overwrite=True' not in stderr and stderr.count('\n') == 1
    assert output.read_bytes() == before
    # The same weights moved elsewhere: the same fingerprint, nothing to score.
    status, stdout, _ = score_collection(collection, output, tiny_rn)
    assert status == 1 and f'0 processed in this run, {collection.total} done before' in stdout

    # An output without its journal was not made by this command: refused, untouched.
    other = tmp_path / 'other' / 'scores.csv'
    other.parent.mkdir()
    other.write_bytes(b'my own data\n')
    status, _, stderr = score_collection(collection, other, tiny_rn)
    assert status == 2 and other.read_bytes() == b'my own data\n'
    assert f'the output {other} is in the way: it was not written by this run; pass --overwrite' in stderr

    status, stdout, _ = score_collection(collection, output, weights, '--overwrite')
    assert status == 1 and f'{collection.total} processed in this run, 0 done before' in stdout
    assert output.read_bytes() != before


def test_an_input_is_never_the_output(collection, tiny_rn, tmp_path):
    image = tmp_path / 'photo.png'
    image.write_bytes(encoded(pixels(32, 32, 1), 'PNG'))
    original = image.read_bytes()
    for options in ((), ('--overwrite',)):
        status, _, stderr = score(image, '--output', image, '--backbone', tiny_rn, *options)
        assert status == 2 and 'is one of the images to score' in stderr
    errors_twin = tmp_path / 'x.errors.csv'
    errors_twin.write_bytes(b'a')
    status, _, stderr = score(errors_twin, '--output', tmp_path / 'x.csv', '--backbone', tiny_rn)
    assert status == 2 and 'is one of the images to score' in stderr
    assert image.read_bytes() == original and errors_twin.read_bytes() == b'a'


def test_rows_of_other_inputs_and_users_files_are_kept(collection, baseline, tiny_rn, tmp_path):
    output = tmp_path / 'scores.csv'
    lonely = tmp_path / 'in' / 'lonely.png'
    lonely.parent.mkdir()
    lonely.write_bytes(encoded(pixels(40, 40, 9), 'PNG'))
    assert score(lonely, '--output', output, '--backbone', tiny_rn)[0] == 0
    users = {'scores.part1.csv': b'path,score\n/u.png,1\n', 'scores.part1.errors.csv': b'mine',
             'scores.meta.json': b'{}', '.scores.lock': b''}
    for name, data in users.items():
        (tmp_path / name).write_bytes(data)
    # A damaged export (a blank line) is no longer the run's: refused, kept. Deleted, it costs nothing:
    # with a second input set, nothing of the first is lost.
    damaged = output.read_bytes().replace(b'\r\n', b'\r\n\r\n', 1)
    output.write_bytes(damaged)
    assert score_collection(collection, output, tiny_rn)[0] == 2 and output.read_bytes() == damaged
    output.unlink()
    assert score_collection(collection, output, tiny_rn)[0] == 1
    rows = read_csv_rows(output)
    assert [r[0] for r in rows[1:]] == [*collection.good, str(lonely)]  # this run's inputs first
    for name, data in users.items():
        assert (tmp_path / name).read_bytes() == data


def test_retry_failed(tiny_rn, tmp_path):
    (tmp_path / 'in').mkdir()
    (tmp_path / 'in/good.png').write_bytes(encoded(pixels(32, 32, 1), 'PNG'))
    (tmp_path / 'in/late.png').write_bytes(b'')
    output = tmp_path / 'out/scores.csv'
    args = [tmp_path / 'in', '--output', output, '--backbone', tiny_rn, '--num-workers', 0]
    assert score(*args)[0] == 1
    (tmp_path / 'in/late.png').write_bytes(encoded(pixels(32, 32, 2), 'PNG'))
    status, stdout, _ = score(*args)
    assert status == 1 and '1 failed' in stdout and '0 processed in this run' in stdout
    status, stdout, _ = score(*args, '--retry-failed')
    assert status == 0 and stdout.startswith('scored 2 images, 0 failed; 1 processed in this run')
    assert [row[0] for row in read_csv_rows(output)[1:]] == [str(tmp_path / 'in/good.png'), str(tmp_path / 'in/late.png')]
    assert not output.with_name('scores.errors.csv').exists()


#: Names the file system allows that broke a line-oriented CSV journal (issue 10).
ODD_NAMES = ['b\rx.png', 'l\nf.png', 't\tab.png', 'c,d.png', 'q"x".png', "s'q.png", '#h.png', ' lead.png',
             'trail .png', 'x' * 240 + '.png', 'NA.png', 'b\r\n\r\nx.png']
NOT_UTF8 = [b'\xff\xfe.png', b'caf\xe9.png']


def odd_collection(root: Path) -> list[str]:
    root.mkdir(parents=True, exist_ok=True)
    names = [os.fsencode(n) for n in ODD_NAMES] + NOT_UTF8
    for i, name in enumerate(names):
        with open(os.fsencode(root) + b'/' + name, 'wb') as f:
            f.write(encoded(pixels(33, 40, 20 + i), 'PNG'))
    return sorted(os.fsdecode(os.fsencode(root) + b'/' + n) for n in names)


def test_every_file_name_round_trips(tiny_rn, tmp_path):
    import pandas as pd

    paths = odd_collection(tmp_path / 'odd')
    output = tmp_path / 'scores.csv'
    status, stdout, _ = score(tmp_path / 'odd', '--output', output, '--backbone', tiny_rn)
    assert status == 0 and stdout.startswith(f'scored {len(paths)} images, 0 failed')
    written = [display_path(os.fsencode(p)) for p in paths]  # the documented form (checked in test_path_text)
    frame = pd.read_csv(output)
    assert len(frame) == len(paths) and list(frame['path']) == written
    with open(output, newline='', encoding='utf-8') as f:
        assert [row['path'] for row in csv.DictReader(f)] == written
    status, stdout, _ = score(tmp_path / 'odd', '--output', output, '--backbone', tiny_rn)
    assert status == 0 and f'0 processed in this run, {len(paths)} done before' in stdout


def test_path_text_is_one_text_per_name_and_back(tiny_rn, tmp_path):
    """Issue 27, point 4: a name holding the byte 0xff and one holding the four characters \\xff print
    differently, and the text turns back into exactly the file's bytes (docs/collections.md)."""
    from pyiqa_maclip.app.journal import decode_path_text
    from pyiqa_maclip.errors import UserError

    cases = {b'plain.png': 'plain.png', 'caf\u00e9.png'.encode(): 'caf\u00e9.png', b'bad\xff.png': 'bad\\xff.png',
             b'bad\\xff.png': 'bad\\\\xff.png', b'a\\b': 'a\\\\b', b'\xed\xa0\x80.png': '\\xed\\xa0\\x80.png'}
    for raw, text in cases.items():
        assert display_path(raw) == text and os.fsencode(decode_path_text(text)) == raw
    for text in ('a\\qb', 'end\\', 'short\\x4'):
        with pytest.raises(UserError, match='a backslash must start'):
            decode_path_text(text)

    folder = tmp_path / 'in'
    folder.mkdir()
    for i, name in enumerate((b'bad\xff.png', b'bad\\xff.png')):
        with open(os.fsencode(folder) + b'/' + name, 'wb') as f:
            f.write(encoded(pixels(33, 40, 60 + i), 'PNG'))
    output = tmp_path / 'scores.csv'
    assert score(folder, '--output', output, '--backbone', tiny_rn)[0] == 0
    texts = [row[0] for row in read_csv_rows(output)[1:]]
    assert len(set(texts)) == 2
    assert sorted(os.fsencode(decode_path_text(t)) for t in texts) == sorted(
        os.fsencode(folder) + b'/' + n for n in (b'bad\xff.png', b'bad\\xff.png'))


@pytest.mark.slow  # kill -9 of fresh interpreters, three times
def test_random_names_and_kill_points_end_in_the_uninterrupted_output(tiny_rn, tiny_metric, tmp_path):
    """Property-style: whatever the names and wherever kill -9 strikes, reruns end in the same files."""
    rng = random.Random(10)
    alphabet = ['a', 'Z', ' ', ',', '"', '\r', '\n', '\t', '#', 'é', '%']
    root = tmp_path / 'in'
    root.mkdir()
    for i in range(10):
        name = ''.join(rng.choice(alphabet) for _ in range(rng.randint(1, 12))).replace('/', '_') + f'{i}.png'
        (root / name).write_bytes(encoded(pixels(30 + i, 34, 40 + i), 'PNG'))
    (root / 'broken.png').write_bytes(b'\x89PNG broken')
    args = [root, '--backbone', tiny_rn, '--batch-size', 2, '--num-workers', 0]
    reference = tmp_path / 'reference/scores.csv'
    assert score(*args, '--output', reference)[0] == 1

    output = tmp_path / 'killed/scores.csv'
    for round_ in range(3):
        run = start_slow_run([*args, '--output', output], delay=0.3)
        kill_after(run, output, 2 * round_ + 1, extra_seconds=rng.uniform(0, 0.6))
    assert score(*args, '--output', output)[0] == 1
    rows = read_csv_rows(reference)
    assert_same_scores(read_csv_rows(output), rows, rounding_bound(tiny_metric, [decoded(row[0]) for row in rows[1:]]))
    assert output.with_name('scores.errors.csv').read_bytes() == reference.with_name('scores.errors.csv').read_bytes()


def test_resume_from_the_journals_of_a_larger_run(collection, baseline, tiny_rn, tmp_path):
    """Results left in other processes' journals count as done and are merged in input order."""
    from pyiqa_maclip.app.journal import Journal

    source = WorkFiles(baseline[2])
    files = WorkFiles(tmp_path / 'scores.csv')
    files.folder.mkdir()
    with Journal(source.journal(0)) as original:
        results, fingerprint, columns = list(original.results()), original.fingerprint, original.columns
    for rank, share in ((0, results[::2]), (3, results[1::2])):
        with Journal.create(files.journal(rank), fingerprint, columns) as journal:
            journal.record(share)
    status, stdout, _ = score_collection(collection, tmp_path / 'scores.csv', tiny_rn)
    assert status == 1 and f'0 processed in this run, {collection.total} done before' in stdout
    assert (tmp_path / 'scores.csv').read_bytes() == baseline[2].read_bytes()
    assert files.journals() == [files.journal(0)]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


@pytest.mark.slow  # an accelerate launch of two processes
def test_two_processes_give_the_single_process_output(collection, collection_rounding, tiny_rn, tmp_path):
    single, sharded = tmp_path / 'single/scores.csv', tmp_path / 'sharded/scores.csv'
    # accelerate runs each CPU process on one thread; so does this run, and float32 rounds alike.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert score_collection(collection, single, tiny_rn, '--num-workers', 0)[0] == 1
    finally:
        torch.set_num_threads(threads)

    launch = [Path(sys.executable).with_name('accelerate'), 'launch', '--multi_gpu', '--num_processes', 2,
              '--num_machines', 1, '--mixed_precision', 'no', '--dynamo_backend', 'no',
              '--main_process_port', free_port()]
    env = {**os.environ, 'HF_HOME': str(tmp_path / 'hf'),  # no accelerate config file is read
           'ACCELERATE_USE_CPU': 'true', 'CUDA_VISIBLE_DEVICES': '', 'OMP_NUM_THREADS': '1'}
    run = subprocess.run([*map(str, launch), '-m', 'pyiqa_maclip', 'score', *collection.inputs, '--output',
                          str(sharded), '--backbone', str(tiny_rn), '--batch-size', '2', '--num-workers', '1'],
                         env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300, check=False)
    assert 'on 2 processes' in run.stderr, run.stderr
    assert run.stdout.count('scored 6 images, 5 failed') == 1, run.stdout + run.stderr  # the main process says it
    assert run.returncode == 1
    assert_same_scores(read_csv_rows(sharded), read_csv_rows(single), collection_rounding)
    assert sharded.with_name('scores.errors.csv').read_text() == single.with_name('scores.errors.csv').read_text()
    assert listing(sharded.parent) == FINISHED_RUN
    # The other journal was merged; the locks are empty files.
    assert listing(WorkFiles(sharded).folder) == ['lock', 'rank0.lock', 'rank0.sqlite3', 'rank1.lock']


@pytest.mark.slow  # ten accelerate launches of two processes
def test_a_two_process_run_can_be_rerun_every_time(tiny_rn, tmp_path):
    """Issue 27, point 3: rerun after it finished (nothing to score: the exports are written again),
    after an export was deleted, and with new images; 10 times in a row, every one must work (7 in 8
    failed when the main process read the other's journal while it was being created)."""
    folder = tmp_path / 'in'
    folder.mkdir()
    for i in range(4):
        (folder / f'{i}.png').write_bytes(encoded(pixels(32, 32, 90 + i), 'PNG'))
    output = tmp_path / 'scores.csv'
    launch = [Path(sys.executable).with_name('accelerate'), 'launch', '--multi_gpu', '--num_processes', 2,
              '--num_machines', 1, '--mixed_precision', 'no', '--dynamo_backend', 'no']
    env = {**os.environ, 'HF_HOME': str(tmp_path / 'hf'), 'ACCELERATE_USE_CPU': 'true', 'CUDA_VISIBLE_DEVICES': '',
           'OMP_NUM_THREADS': '1'}
    total = 4
    for attempt in range(10):
        if attempt % 3 == 1:
            output.unlink()  # deleted: written again
        elif attempt % 3 == 2:
            (folder / f'new{attempt}.png').write_bytes(encoded(pixels(32, 32, attempt), 'PNG'))
            total += 1
        written = output.stat().st_mtime_ns if output.exists() else None
        run = subprocess.run([*map(str, launch), '--main_process_port', str(free_port()), '-m', 'pyiqa_maclip',
                              'score', str(folder), '--output', str(output), '--backbone', str(tiny_rn),
                              '--num-workers', '0', '--no-progress'],
                             env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300, check=False)
        assert run.returncode == 0, f'rerun {attempt}: {run.stderr[-3000:]}'
        assert run.stdout.count(f'scored {total} images, 0 failed') == 1, run.stdout
        assert len(read_csv_rows(output)) == total + 1 and output.stat().st_mtime_ns != written
        assert listing(WorkFiles(output).folder) == ['lock', 'rank0.lock', 'rank0.sqlite3', 'rank1.lock']


@pytest.mark.slow  # an accelerate launch of two processes
def test_a_problem_only_the_main_process_sees_is_one_line_in_every_process(collection, tiny_rn, tmp_path):
    """The journal is the main process's to open: every process stops with its line, no gloo traceback."""
    import sqlite3

    output = tmp_path / 'scores.csv'
    assert score_collection(collection, output, tiny_rn, '--num-workers', 0)[0] == 1
    with contextlib.closing(sqlite3.connect(WorkFiles(output).journal(0))) as db:
        db.execute('PRAGMA user_version = 1')  # as if another version had written it
    launch = [Path(sys.executable).with_name('accelerate'), 'launch', '--multi_gpu', '--num_processes', 2,
              '--num_machines', 1, '--mixed_precision', 'no', '--dynamo_backend', 'no',
              '--main_process_port', free_port()]
    env = {**os.environ, 'HF_HOME': str(tmp_path / 'hf'), 'ACCELERATE_USE_CPU': 'true', 'CUDA_VISIBLE_DEVICES': '',
           'OMP_NUM_THREADS': '1'}
    run = subprocess.run([*map(str, launch), '-m', 'pyiqa_maclip', 'score', *collection.inputs, '--output',
                          str(output), '--backbone', str(tiny_rn), '--no-progress'],
                         env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300, check=False)
    errors = [line for line in run.stderr.splitlines() if line.startswith('pyiqa-maclip score: error:')]
    assert len(errors) == 2 and all('written by another version of pyiqa-maclip' in line for line in errors)
    # accelerate's report: stopped with status 2, no crash. The first process to stop makes the launcher
    # end the other (SIGTERM, -15) if that one has not stopped with its own status 2 already.
    codes = re.findall(r'exitcode\s*:\s*(-?\d+)', run.stderr)
    assert '2' in codes and set(codes) <= {'2', '-15'}, run.stderr[-3000:]
    assert 'pyiqa_maclip/' not in run.stderr and 'gloo' not in run.stderr.lower()  # no traceback of theirs


@pytest.mark.slow  # a fresh interpreter importing torch
def test_module_help():
    run = subprocess.run([sys.executable, '-m', 'pyiqa_maclip', 'score', '--help'], cwd=ROOT,
                         capture_output=True, text=True, timeout=120, check=False)
    assert run.returncode == 0, run.stderr
    assert run.stdout.startswith('usage: pyiqa-maclip score') and '--overwrite' in run.stdout


def test_weights_that_fail_to_load_leave_no_trace(tiny_rn, tmp_path, monkeypatch):
    image = tmp_path / 'in' / 'a.png'
    image.parent.mkdir()
    image.write_bytes(encoded(pixels(40, 40, 1), 'PNG'))
    output = tmp_path / 'scores.csv'
    junk = tmp_path / 'model.pt'
    junk.write_text('<html><body>Not Found</body></html>')
    status, _, stderr = score(image, '--output', output, '--backbone', junk)
    assert status == 2 and stderr.count('\n') == 1  # the error, before anything about images (issue 28, point 3)
    assert stderr.startswith(f'pyiqa-maclip score: error: --backbone {junk}: {junk} is not a CLIP checkpoint')
    assert listing(tmp_path) == ['in', 'model.pt']  # refused: no work folder, lock or empty journal left (issue 27)
    # The next run with good weights is not refused as "made with other settings".
    assert score(image, '--output', output, '--backbone', tiny_rn)[0] == 0

    monkeypatch.setenv('PYIQA_MACLIP_OFFLINE', 'maybe')
    status, _, stderr = score(image, '--output', output, '--backbone', tiny_rn)
    assert status == 2 and stderr.count('\n') == 1 and 'PYIQA_MACLIP_OFFLINE' in stderr and '--backbone' not in stderr


def test_options_are_compared_as_the_values_maclip_uses(tiny_rn, tmp_path):
    """Issue 27, point 6: '1e-1' and 0.1 are one box_lam, '256' and 256 one stride, 'true' and True one
    flag, whoever passes them (the command line or the Python API); a value MA-CLIP refuses is refused
    before anything is written."""
    from pyiqa_maclip.app.engine import score_collection
    from pyiqa_maclip.app.scorers import Recipe

    def fingerprint(**options):
        return Recipe(options={'backbone': str(tiny_rn), **options}).fingerprint

    assert fingerprint(box_lam='1e-1', stride='256', pos_embedding='true') == fingerprint(
        box_lam=0.1, stride=256, pos_embedding=True)
    assert fingerprint(box_lam='1e-1') != fingerprint(box_lam=0.2)
    image = tmp_path / 'in' / 'a.png'
    image.parent.mkdir()
    image.write_bytes(encoded(pixels(40, 40, 1), 'PNG'))
    output = tmp_path / 'scores.csv'
    recipe = Recipe(options={'backbone': str(tiny_rn), 'box_lam': '1e-1'})
    assert score_collection([str(image)], output, recipe, progress=False, num_workers=0).complete
    summary = score_collection([str(image)], output, Recipe(options={'backbone': str(tiny_rn), 'box_lam': 0.1}),
                               progress=False, num_workers=0)
    assert summary.processed == 0 and summary.complete  # resumed, not refused
    with pytest.raises(UserError, match=r'box_lam must be a real number in \[-10, 10\]'):
        score_collection([str(image)], tmp_path / 'other.csv', Recipe(options={'backbone': str(tiny_rn),
                                                                               'box_lam': 'lots'}))
    assert not (tmp_path / '.other.csv.pyiqa-maclip').exists()


@pytest.mark.parametrize('native', [False, True])
def test_a_resume_never_mixes_precisions(tiny_rn, tmp_path, monkeypatch, native):
    """Also: bf16 on a CPU that emulates it warns, once, on one line of stderr (the command prints
    library warnings itself, so they reach stderr rather than Python's warning machinery); on one
    with bfloat16 instructions it does not. Which CPU is decided here, not by the host running the
    test: torch's oneDNN check follows the real CPU or ONEDNN_MAX_CPU_ISA depending on the build."""
    from pyiqa_maclip import precision

    monkeypatch.setattr(precision, 'cpu_has_native', lambda dtype: native)
    image = tmp_path / 'in' / 'a.png'
    image.parent.mkdir()
    image.write_bytes(encoded(pixels(40, 40, 1), 'PNG'))
    output = tmp_path / 'scores.csv'
    status, _, stderr = score(image, '--output', output, '--backbone', tiny_rn, '--precision', 'bf16')
    warned = [line for line in stderr.splitlines() if 'emulated' in line]
    assert status == 0 and len(warned) == (0 if native else 1), stderr
    assert native or warned[0].startswith('pyiqa-maclip score: warning: ') and "precision='fp32'" in warned[0]
    status, _, stderr = score(image, '--output', output, '--backbone', tiny_rn)
    assert status == 2 and "precision was 'bf16', now 'fp32'" in stderr
    # --half is the released spelling of --precision fp16: one fingerprint, not two.
    other = tmp_path / 'half.csv'
    assert score(image, '--output', other, '--backbone', tiny_rn, '--half')[0] == 0
    assert score(image, '--output', other, '--backbone', tiny_rn, '--precision', 'fp16')[0] == 0
    status, _, stderr = score(image, '--output', other, '--backbone', tiny_rn, '--half', '--precision', 'bf16')
    assert status == 2 and '--half means --precision fp16' in stderr and stderr.count('\n') == 1


def test_library_warnings_are_one_line_on_the_command_line(tmp_path, monkeypatch):
    clip = tmp_path / 'hub' / 'clip'
    clip.mkdir(parents=True)
    (clip / 'RN50.pt').write_bytes(b'corrupted')  # a cached file whose SHA-256 is wrong: warned about
    monkeypatch.setenv('TORCH_HOME', str(tmp_path))
    monkeypatch.setenv('PYIQA_MACLIP_OFFLINE', '1')
    monkeypatch.delenv('PYIQA_MACLIP_WEIGHTS_DIR', raising=False)
    image = tmp_path / 'a.png'
    image.write_bytes(encoded(pixels(32, 32, 1), 'PNG'))
    err = io.StringIO()
    with contextlib.redirect_stderr(err), warnings.catch_warnings():
        warnings.simplefilter('always')
        status = cli.main(['score', str(image), '-o', str(tmp_path / 's.csv'), '--no-progress'])
    lines = err.getvalue().splitlines()
    assert status == 2 and len(lines) == 2, lines
    assert lines[0].startswith('pyiqa-maclip score: warning: ignoring') and 'RN50.pt' in lines[0]
    assert lines[1].startswith("pyiqa-maclip score: error: CLIP weights for backbone 'RN50' are not available")
