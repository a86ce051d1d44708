"""What ``score`` writes, merges and says when things around it go wrong (issue 21, points 2, 3, 6).

Every file of the user's is left as it was; links, FIFOs, devices and folders are never replaced;
journals of other settings are never merged; a damaged or vanished journal is one line. Every case
is made in a temporary folder with the tiny random CLIP of conftest.
"""
from __future__ import annotations

import contextlib
import io
import os
import sqlite3
import stat
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pyiqa_maclip.app import cli, engine, shards
from pyiqa_maclip.app.files import WorkFiles
from pyiqa_maclip.app.journal import Journal, JournalError
from pyiqa_maclip.names import COMPONENTS

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def images(tmp_path) -> Path:
    """Three images and a broken file in ``in/``."""
    folder = tmp_path / 'in'
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):
        Image.fromarray(rng.integers(0, 255, (40 + i, 50, 3), dtype=np.uint8)).save(folder / f'{i}.png')
    (folder / 'broken.png').write_bytes(b'not a png')
    return folder


def score(*args) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        status = cli.main(['score', *map(str, args), '--no-progress', '--num-workers', '0'])
    return status, out.getvalue(), err.getvalue()


def listing(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


# ---------------------------------------------------------------- files in the way


def test_a_foreign_errors_file_is_never_deleted_or_replaced(images, tiny_rn, tmp_path):
    output = tmp_path / 'out' / 'scores.csv'
    output.parent.mkdir()
    theirs = output.with_name('scores.errors.csv')
    theirs.write_bytes(b'path,error\r\nsomeone else\'s,list\r\n')
    for options in ((), ('--overwrite',)):
        status, _, err = score(images, '-o', output, '--backbone', tiny_rn, *options)
        assert status == 2 and err.count('\n') == 1 and f'the errors file {theirs} is in the way' in err
    assert theirs.read_bytes() == b'path,error\r\nsomeone else\'s,list\r\n'
    assert listing(output.parent) == ['scores.errors.csv']  # refused before anything was made

    # This run's own errors file goes when its errors are gone; one put in its place stays.
    theirs.unlink()
    assert score(images, '-o', output, '--backbone', tiny_rn)[0] == 1
    (images / 'broken.png').unlink()
    assert score(images, '-o', output, '--backbone', tiny_rn)[0] == 0
    assert not theirs.exists()
    (images / 'broken.png').write_bytes(b'not a png')
    assert score(images, '-o', output, '--backbone', tiny_rn)[0] == 1
    replacement = tmp_path / 'replacement.csv'
    replacement.write_bytes(b'mine now')
    os.replace(replacement, theirs)  # another file at the same path (as an editor saves): not this run's
    (images / 'broken.png').unlink()
    status, _, err = score(images, '-o', output, '--backbone', tiny_rn)
    assert status == 2 and 'is in the way' in err and theirs.read_bytes() == b'mine now'


def test_a_new_file_where_an_export_was_is_the_users_whatever_its_inode(images, tiny_rn, tmp_path):
    """Issue 27, point 1: ``rm own.csv; echo MY DATA > own.csv`` (ext4 may give the new file the freed
    inode): the run refuses it by name and leaves it as it is; the errors file likewise."""
    output = tmp_path / 'own.csv'
    errors = tmp_path / 'own.errors.csv'
    assert score(images, '-o', output, '--backbone', tiny_rn)[0] == 1 and errors.is_file()
    output.unlink()
    output.write_bytes(b'MY DATA\n')
    status, _, err = score(images, '-o', output, '--backbone', tiny_rn)
    assert status == 2 and err.count('\n') == 1 and f'the output {output} is in the way' in err
    assert output.read_bytes() == b'MY DATA\n'

    output.unlink()  # a deleted export costs nothing: written again
    assert score(images, '-o', output, '--backbone', tiny_rn)[0] == 1
    errors.unlink()
    errors.write_bytes(b'my notes\n')
    (images / 'broken.png').unlink()  # fixed: the errors file would be deleted, if it were the run's
    for options in ((), ('--retry-failed',), ('--overwrite',)):
        status, _, err = score(images, '-o', output, '--backbone', tiny_rn, *options)
        assert status == 2 and err.count('\n') == 1 and f'the errors file {errors} is in the way' in err
        assert errors.read_bytes() == b'my notes\n'


def test_an_export_touched_but_unchanged_is_still_the_runs(images, tiny_rn, tmp_path):
    """Ownership is the bytes: a copy back or ``touch`` changes the time, not the file."""
    output = tmp_path / 'scores.csv'
    assert score(images, '-o', output, '--backbone', tiny_rn)[0] == 1
    data = output.read_bytes()
    output.unlink()
    output.write_bytes(data)
    os.utime(output.with_name('scores.errors.csv'), ns=(0, 0))
    assert score(images, '-o', output, '--backbone', tiny_rn)[0] == 1


@pytest.mark.parametrize('how', ['deleted', 'emptied'])
def test_a_lost_journal_is_called_lost(images, tiny_rn, tmp_path, how):
    """Issue 27, point 6: a missing or zero-byte journal beside the exports is "lost", with what to do;
    following the advice scores afresh."""
    output = tmp_path / 'scores.csv'
    assert score(images, '-o', output, '--backbone', tiny_rn)[0] == 1
    journal = WorkFiles(output).journal(0)
    if how == 'deleted':
        journal.unlink()
    else:
        journal.write_bytes(b'')
    exports = {p: p.read_bytes() for p in (output, output.with_name('scores.errors.csv'))}
    status, _, err = score(images, '-o', output, '--backbone', tiny_rn)
    assert status == 2 and err.count('\n') == 1 and 'is in the way' not in err
    assert f'the journal {journal} was lost (missing or empty)' in err and 'move' in err and '--overwrite' in err
    assert all(p.read_bytes() == data for p, data in exports.items())
    status, _, err = score(images, '-o', output, '--backbone', tiny_rn, '--overwrite')  # the errors file remains
    assert status == 2 and 'was lost' in err and 'scores.errors.csv' in err and f'{output} and' not in err
    output.with_name('scores.errors.csv').unlink()
    assert score(images, '-o', output, '--backbone', tiny_rn, '--overwrite')[0] == 1
    with pytest.raises(JournalError, match='was lost'):
        Journal(tmp_path / 'nothing.sqlite3')


@pytest.mark.parametrize('kind', ['symlink', 'fifo', 'folder', 'device'])
def test_overwrite_never_replaces_a_link_fifo_folder_or_device(images, tiny_rn, tmp_path, kind):
    output = tmp_path / 'out' / 'scores.csv'
    output.parent.mkdir()
    target = tmp_path / 'precious.csv'
    target.write_text('precious\n')
    if kind == 'symlink':
        output.symlink_to(target)
    elif kind == 'fifo':
        os.mkfifo(output)
    elif kind == 'folder':
        output.mkdir()
    else:
        try:  # a device node made here, in the test's folder: /dev/null's numbers
            os.mknod(output, 0o666 | stat.S_IFCHR, os.makedev(1, 3))
        except PermissionError:
            pytest.skip('making a device node needs root')
    for options in ((), ('--overwrite',)):
        status, _, err = score(images, '-o', output, '--backbone', tiny_rn, *options)
        assert status == 2 and err.count('\n') == 1 and 'writes only regular files' in err
    assert target.read_text() == 'precious\n'
    assert listing(output.parent) == ['scores.csv']  # no work folder left beside it
    assert (os.path.islink(output) if kind == 'symlink' else not output.is_file())


def test_the_errors_file_may_not_be_a_link_either(images, tiny_rn, tmp_path):
    output = tmp_path / 'scores.csv'
    (tmp_path / 'scores.errors.csv').symlink_to(tmp_path / 'elsewhere.csv')
    status, _, err = score(images, '-o', output, '--backbone', tiny_rn, '--overwrite')
    assert status == 2 and 'is a symlink' in err and not (tmp_path / 'elsewhere.csv').exists()


def test_overwrite_replaces_the_users_own_output_file(images, tiny_rn, tmp_path):
    """--overwrite is consent to replace the CSV the user named, a regular file."""
    output = tmp_path / 'scores.csv'
    output.write_text('old numbers\n')
    status, _, err = score(images, '-o', output, '--backbone', tiny_rn)
    assert status == 2 and 'pass --overwrite to replace it' in err and output.read_text() == 'old numbers\n'
    assert score(images, '-o', output, '--backbone', tiny_rn, '--overwrite')[0] == 1
    assert output.read_text().startswith('path,' + ','.join(COMPONENTS))


def test_temporary_files_of_an_interrupted_export_are_removed(images, tiny_rn, tmp_path):
    output = tmp_path / 'scores.csv'
    assert score(images, '-o', output, '--backbone', tiny_rn)[0] == 1
    folder = WorkFiles(output).folder
    (folder / 'tmpk3j2h1g0.part').write_bytes(b'half an export')  # what SIGKILL during an export leaves
    users = tmp_path / '.scores.csv.abc.part'
    users.write_bytes(b'a file of the user')  # beside the output: not this run's, kept
    assert score(images, '-o', output, '--backbone', tiny_rn)[0] == 1
    assert not any(p.suffix == '.part' for p in folder.iterdir()) and users.read_bytes() == b'a file of the user'


@pytest.mark.parametrize('length', [236, 241])
def test_an_output_name_too_long_for_the_work_folder_still_works(images, tiny_rn, tmp_path, length):
    """'.' + name + '.pyiqa-maclip' would pass 255 bytes: the work folder takes a shorter name."""
    output = tmp_path / ('s' * (length - 4) + '.csv')
    assert len(output.name) == length
    assert score(images, '-o', output, '--backbone', tiny_rn)[0] == 1
    assert output.is_file() and output.with_name('s' * (length - 4) + '.errors.csv').is_file()
    assert len(os.fsencode(WorkFiles(output).folder.name)) <= 255
    assert score(images, '-o', output, '--backbone', tiny_rn)[0] == 1  # and it resumes


def test_an_output_name_whose_errors_file_cannot_exist_is_refused_before_scoring(images, tiny_rn, tmp_path):
    output = tmp_path / ('s' * 246 + '.csv')  # 250 bytes: its .errors.csv would have 257
    status, _, err = score(images, '-o', output, '--backbone', tiny_rn)
    assert status == 2 and 'longer than the 255 bytes' in err and listing(tmp_path) == ['in']


# ---------------------------------------------------------------- journals: merges, damage, vanished folders


def test_a_journal_of_other_settings_is_never_merged(images, tiny_rn, checkpoints, tmp_path):
    """Two machines with different weights: the other process's journal is refused, nothing mixed."""
    output = tmp_path / 'scores.csv'
    other = tmp_path / 'other.csv'
    assert score(images, '-o', other, '--backbone', checkpoints('tiny-RN', seed=1))[0] == 1
    files = WorkFiles(output)
    files.folder.mkdir()
    os.replace(WorkFiles(other).journal(0), files.journal(1))  # as process 1 of a run with other weights
    status, _, err = score(images, '-o', output, '--backbone', tiny_rn)
    assert status == 2 and err.count('\n') == 1
    assert f'{files.journal(1)} holds results made with other settings than this run, and was not merged' in err
    assert 'checkpoint_sha256 was' in err
    assert files.journal(1).exists() and not output.exists()
    with Journal(files.journal(0)) as journal:
        assert journal.finished() == set()


def test_a_damaged_journal_is_one_line_and_overwrite_starts_afresh(images, tiny_rn, tmp_path):
    output = tmp_path / 'scores.csv'
    assert score(images, '-o', output, '--backbone', tiny_rn)[0] == 1
    journal = WorkFiles(output).journal(0)
    data = journal.read_bytes()
    journal.write_bytes(data[:100] + b'\xff' * (len(data) - 100))  # header kept, every page damaged
    status, _, err = score(images, '-o', output, '--backbone', tiny_rn)
    assert status == 2 and err.count('\n') == 1 and str(journal) in err and '--overwrite' in err
    assert 'Traceback' not in err
    # A damaged journal no longer tells which exports were this run's: the errors file must be moved by hand.
    status, _, err = score(images, '-o', output, '--backbone', tiny_rn, '--overwrite')
    assert status == 2 and 'the errors file' in err and 'is in the way' in err
    output.with_name('scores.errors.csv').unlink()
    assert score(images, '-o', output, '--backbone', tiny_rn, '--overwrite')[0] == 1


def test_a_journal_of_another_version_says_so(images, tiny_rn, tmp_path):
    output = tmp_path / 'scores.csv'
    assert score(images, '-o', output, '--backbone', tiny_rn)[0] == 1
    with contextlib.closing(sqlite3.connect(WorkFiles(output).journal(0))) as db:
        db.execute('PRAGMA user_version = 1')
    status, _, err = score(images, '-o', output, '--backbone', tiny_rn)
    assert status == 2 and 'written by another version of pyiqa-maclip (journal schema 1' in err


def test_a_work_folder_that_vanishes_during_the_run_is_one_line(images, tiny_rn, tmp_path, monkeypatch):
    """The committed rows stay where they were; the message says what happened and what to do."""
    import shutil

    from pyiqa_maclip import MACLIP

    output = tmp_path / 'scores.csv'
    score_images = MACLIP.score_images
    calls = []

    def vanishing(self, images_):
        calls.append(1)
        if len(calls) == 2:
            shutil.rmtree(WorkFiles(output).folder)
        return score_images(self, images_)

    monkeypatch.setattr(MACLIP, 'score_images', vanishing)
    status, _, err = score(images, '-o', output, '--backbone', tiny_rn, '--batch-size', 1)
    assert status == 2 and err.count('\n') == 2 and 'Traceback' not in err  # the "to score" line and this one
    assert 'cannot write the journal' in err and 'run the same command again' in err


# ---------------------------------------------------------------- processes that wait for others


HOLD = '''
import sys, time
from filelock import FileLock
lock = FileLock(sys.argv[1]); lock.acquire()
print('held', flush=True)
time.sleep(float(sys.argv[2]))
'''


def _rank_journal(files: WorkFiles, rank: int, fingerprint: dict, complete: bool) -> None:
    """A journal of process ``rank`` with one result: under its final name if ``complete``."""
    with Journal.create(files.open_journal(rank), fingerprint, ('score',)) as journal:
        journal.record([engine.Result(f'/x/{rank}.png', {'score': float(rank)}, None)])
        if complete:
            shards.finish_share(journal, files, rank)


@pytest.mark.slow  # waits for a wall-clock timeout
def test_the_main_process_says_it_waits_and_gives_up_after_the_timeout(tmp_path, monkeypatch, capsys):
    files = WorkFiles(tmp_path / 'scores.csv')
    files.folder.mkdir()
    fingerprint = {'metric': 'test'}
    monkeypatch.setattr(shards, '_REPORT_EVERY', 0.3)
    holder = subprocess.Popen([sys.executable, '-c', HOLD, str(files.alive(1)), '60'], stdout=subprocess.PIPE,
                              text=True)
    try:
        assert holder.stdout.readline() == 'held\n'  # process 1 is alive and has not finished
        _rank_journal(files, 1, fingerprint, complete=False)
        _rank_journal(files, 2, fingerprint, complete=True)  # process 2 has finished
        with Journal.create(files.journal(0), fingerprint, ('score',)) as journal:
            start = time.monotonic()
            problems = shards.merge_others(journal, files, 3, timeout=1.5)
            took = time.monotonic() - start
            assert journal.finished() == {('', '/x/2.png')}  # the finished one is merged, the running one is not
    finally:
        holder.kill()
        holder.wait()
    assert took >= 1.5  # waited the timeout out; the message below says the timeout ended the wait
    waiting = [line for line in capsys.readouterr().err.splitlines() if line.startswith('waiting for')]
    assert waiting and all(line.startswith('waiting for 1 of 2 other processes to finish their shares (1 finished')
                           for line in waiting)
    assert problems == ['gave up waiting for process(es) 1 after 1.5 s; what they finish stays in their journals: '
                        'run the same command again once they have ended']
    assert files.open_journal(1).exists() and not files.journal(2).exists()


def test_a_process_that_stopped_is_merged_and_named(tmp_path):
    files = WorkFiles(tmp_path / 'scores.csv')
    files.folder.mkdir()
    fingerprint = {'metric': 'test'}
    _rank_journal(files, 1, fingerprint, complete=False)  # its lock is free: it has gone
    with Journal.create(files.journal(0), fingerprint, ('score',)) as journal:
        problems = shards.merge_others(journal, files, 2, timeout=60)
        assert journal.finished() == {('', '/x/1.png')}
    assert problems == ['process 1 stopped before finishing its share (what it finished is kept); run the same '
                        'command again to score the rest']


def test_processes_with_other_settings_do_not_start():
    """Each process resolves its own weights; one whose fingerprint differs stops the run for all."""
    main = {'metric': 'maclip', 'checkpoint_sha256': 'a' * 64}
    assert shards.others_problem([(0, main, None), (1, main, None)], main) is None
    problem = shards.others_problem([(0, main, None), (1, {**main, 'checkpoint_sha256': 'b' * 64}, None)], main)
    assert str(problem).startswith('process 1 has other settings than the main process, and their results must not '
                                   "mix: checkpoint_sha256 was 'aaaa")
    assert str(shards.others_problem([(0, main, None), (1, None, 'CLIP weights ... are not available')], main)) == (
        'process 1: CLIP weights ... are not available')


# ---------------------------------------------------------------- any pyiqa metric, the images in flight


def test_any_pyiqa_metric_scores_a_collection_as_create_metric_does(images, tmp_path):
    """--metric piqe: the same numbers as pyiqa.create_metric('piqe') on each file (pyiqa reads it itself)."""
    import csv

    import pyiqa

    output = tmp_path / 'piqe.csv'
    status, stdout, _ = score(images, '-o', output, '--metric', 'piqe')
    assert status == 1 and stdout.startswith('scored 3 images, 1 failed')
    with open(output, newline='', encoding='utf-8') as file:
        rows = list(csv.reader(file))
    assert rows[0] == ['path', 'score', 'metric', 'lower_better']
    metric = pyiqa.create_metric('piqe', device='cpu')
    assert metric.lower_better  # pyiqa's direction of PIQE, written on every row (issue 28)
    for path, value, name, lower_better in rows[1:]:
        assert (name, lower_better) == ('piqe', 'True')
        # The same computation on the same pixels (pyiqa's own reading), written with 9 significant
        # digits, which identify a float32 exactly.
        assert np.float32(value) == np.float32(metric(path).item())
    # Its journal is the engine's: a rerun resumes, another metric on the same output is refused.
    assert score(images, '-o', output, '--metric', 'piqe')[1].endswith('0 processed in this run, 4 done before\n')
    status, _, err = score(images, '-o', output, '--metric', 'entropy')
    assert status == 2 and "metric was 'piqe', now 'entropy'" in err


def test_the_images_in_flight_stay_under_the_pixel_budget(tmp_path, monkeypatch):
    """However large the batch and the worker count: an image joins the flight only when its pixels fit,
    an image larger than the budget only alone (issue 21, point 4)."""
    from pyiqa_maclip.app import images as decoding

    sizes = [(100, 100), (300, 200), (50, 40), (400, 400), (10, 10), (200, 150), (600, 600), (30, 30)]
    paths = []
    for i, (height, width) in enumerate(sizes):
        paths.append(str(tmp_path / f'{i}.png'))
        Image.new('RGB', (width, height)).save(paths[-1])
    budget = 100_000  # pixels: (400, 400) and (600, 600) exceed it alone
    flight: list[int] = []  # pixels of each image decoded and not yet handed back
    read = decoding.read_image

    def counted(path, *args, **kwargs):
        image = read(path, *args, **kwargs)
        flight.append(image.shape[-2] * image.shape[-1])
        assert sum(flight) <= budget or len(flight) == 1, flight
        return image

    monkeypatch.setattr(decoding, 'read_image', counted)
    seen = []
    for batch in decoding.decoded_batches(paths, batch_size=8, num_workers=0, pixel_budget=budget):
        seen += [item.index for item in batch]
        for item in batch:  # the caller is done with the batch when it asks for the next
            flight.remove(item.image.shape[-2] * item.image.shape[-1])
    assert seen == list(range(len(paths))) and flight == []


def test_decoding_workers_give_the_same_images(tmp_path):
    from pyiqa_maclip.app import images as decoding

    paths = []
    for i in range(5):
        paths.append(str(tmp_path / f'{i}.png'))
        Image.fromarray(np.random.default_rng(i).integers(0, 255, (20 + i, 30, 3), dtype=np.uint8)).save(paths[-1])
    paths.append(str(tmp_path / 'missing.png'))
    here = [item for batch in decoding.decoded_batches(paths, batch_size=2) for item in batch]
    pool = [item for batch in decoding.decoded_batches(paths, batch_size=2, num_workers=2, pixel_budget=1500)
            for item in batch]
    assert [item.index for item in pool] == list(range(6))
    for a, b in zip(here[:5], pool[:5]):
        assert a.error is None and b.error is None and torch_equal(a.image, b.image)
    assert here[5].error == pool[5].error and pool[5].error.startswith('FileNotFoundError')


def torch_equal(a, b) -> bool:
    import torch

    return a.dtype == b.dtype == torch.uint8 and torch.equal(a, b)


def test_a_journal_still_being_written_by_a_process_of_an_earlier_run_is_left_alone(images, tiny_rn, tmp_path):
    output = tmp_path / 'scores.csv'
    assert score(images, '-o', output, '--backbone', tiny_rn)[0] == 1
    files = WorkFiles(output)
    with Journal(files.journal(0)) as journal:
        fingerprint = journal.fingerprint
    holder = subprocess.Popen([sys.executable, '-c', HOLD, str(files.alive(1)), '60'], stdout=subprocess.PIPE,
                              text=True)
    try:
        assert holder.stdout.readline() == 'held\n'
        with Journal.create(files.journal(1), fingerprint, COMPONENTS):
            pass
        for options in ((), ('--overwrite',)):
            status, _, err = score(images, '-o', output, '--backbone', tiny_rn, *options)
            assert status == 2 and 'process 1 of an earlier run is still scoring into' in err
            assert files.journal(1).exists()
    finally:
        holder.kill()
        holder.wait()
    assert score(images, '-o', output, '--backbone', tiny_rn)[0] == 1  # once it has gone, its journal is merged
    assert not files.journal(1).exists()


def test_a_fingerprint_holding_tuples_is_the_same_when_read_back(tmp_path):
    """The benchmark's journals key on the dataset's resize, a tuple, which JSON stores as a list: a
    resized dataset's journal was taken for one of other settings, emptied and made again without end
    (RecursionError, so every metric of such a dataset "could not be built")."""
    fingerprint = {'metric': 'piqe', 'resize': (448, 448), 'resize_mode': 'bicubic'}
    with Journal.create(tmp_path / 'j.sqlite3', fingerprint, ('score',)) as journal:
        journal.record([engine.Result('/x/a.png', {'score': 1.0}, None)])
    with Journal.create(tmp_path / 'j.sqlite3', fingerprint, ('score',)) as journal:  # resumed, not refused
        assert journal.finished() == {('', '/x/a.png')}
    with pytest.raises(JournalError, match=r'resize was \[448, 448\], now \[224, 224\]'):
        Journal.create(tmp_path / 'j.sqlite3', {**fingerprint, 'resize': (224, 224)}, ('score',))
