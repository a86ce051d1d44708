"""What a benchmark run writes: only over files its record says it wrote, byte for byte; and its
tables and plots when the numbers are past what float64 or matplotlib can hold.

Each case runs the command line on six small images with PIQE (no download, no weights)
into a temporary folder, or drives the record directly.
"""
from __future__ import annotations

import sqlite3
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from PIL import Image

from pyiqa_maclip.app import cli
from pyiqa_maclip.app.benchmark import outputs
from pyiqa_maclip.app.benchmark.outputs import OutputRecord

MOS = [10.0, 20.0, 35.0, 30.0, 55.0, 60.0]


def _dataset(root: Path, mos=MOS) -> Path:
    """root/images/ (len(mos) textured images), root/mos.csv and root/config.yml (PIQE on them)."""
    rng = np.random.default_rng(0)
    lines = ['image,mos']
    for k, value in enumerate(mos):
        (root / 'images').mkdir(parents=True, exist_ok=True)
        noise = rng.normal(128, 8 + 6 * k, (64, 80, 3))
        Image.fromarray(np.clip(noise, 0, 255).astype(np.uint8)).save(root / 'images' / f'{k}.png')
        lines.append(f'{k}.png,{value!r}')
    (root / 'mos.csv').write_text('\n'.join(lines) + '\n')
    config = {'datasets': {'synth': {'images': str(root / 'images'), 'mos': str(root / 'mos.csv')}},
              'metrics': {'piqe': {}}}
    (root / 'config.yml').write_text(yaml.safe_dump(config))
    return root / 'config.yml'


def _run(config: Path, output: Path) -> int:
    return cli.main(['benchmark', '--config', str(config), '--output-dir', str(output), '--device', 'cpu',
                     '--num-workers', '0'])


def _one_line(capsys) -> str:
    err = capsys.readouterr().err
    assert err.count('\n') == 1 and 'Traceback' not in err
    return err


def test_a_users_tables_beside_a_journal_folder_are_refused_by_name_and_kept(tmp_path, capsys):
    config = _dataset(tmp_path)
    out = tmp_path / 'out'
    (out / 'journal').mkdir(parents=True)
    (out / 'summary.csv').write_text('my numbers\n')
    (out / 'summary.md').write_text('# my notes\n')
    assert _run(config, out) == 2
    err = _one_line(capsys)
    assert str(out / 'summary.csv') in err and 'not a file this benchmark wrote' in err
    assert (out / 'summary.csv').read_text() == 'my numbers\n' and (out / 'summary.md').read_text() == '# my notes\n'
    assert list((out / 'journal').iterdir()) == []  # refused before anything was scored


def test_a_rerun_replaces_its_own_outputs_and_refuses_an_edited_one(tmp_path, capsys):
    config = _dataset(tmp_path)
    out = tmp_path / 'out'
    assert _run(config, out) == 0
    first = (out / 'summary.csv').read_bytes()
    _dataset(tmp_path, [*MOS[:-1], 5.0])  # another MOS for the last image: other correlations
    assert _run(config, out) == 0
    assert (out / 'summary.csv').read_bytes() != first
    with sqlite3.connect(out / 'journal' / OutputRecord.NAME) as db:
        rows = db.execute("SELECT size, mtime_ns FROM written WHERE path = 'summary.csv'").fetchall()
    status = (out / 'summary.csv').stat()
    assert rows == [(status.st_size, status.st_mtime_ns)]  # the new content alone

    scores = out / 'scores' / 'piqe' / 'synth.csv'
    edited = scores.read_bytes() + b'my remark\r\n'
    scores.write_bytes(edited)
    capsys.readouterr()
    assert _run(config, out) == 2
    assert str(scores) in _one_line(capsys)
    assert scores.read_bytes() == edited


def test_a_run_stopped_between_recording_and_writing_owns_both_contents(tmp_path, monkeypatch):
    journals = tmp_path / 'journal'
    record, table = OutputRecord(journals), tmp_path / 'summary.csv'
    record.write({table: b'first'})

    def killed(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(outputs, 'write_file', killed)
    with pytest.raises(KeyboardInterrupt):
        record.write({table: b'second'})
    monkeypatch.undo()
    assert table.read_bytes() == b'first'
    record.check([table])  # the old content is still the run's
    table.write_bytes(b'second')  # as if the kill came after the file was replaced
    record.check([table])
    table.write_bytes(b'third')
    with pytest.raises(ValueError, match='not a file this benchmark wrote'):
        record.check([table])
    table.write_bytes(b'second')
    record.write({table: b'fourth'})
    assert table.read_bytes() == b'fourth'


def test_a_file_where_the_record_has_none_is_refused(tmp_path):
    record, plot = OutputRecord(tmp_path / 'journal'), tmp_path / 'plots' / 'srcc_bars.png'
    record.write({tmp_path / 'summary.md': b'# summary\n'})
    plot.parent.mkdir()
    plot.write_bytes(b'a picture of mine')
    with pytest.raises(ValueError, match='srcc_bars.png is not a file this benchmark wrote'):
        record.write({plot: b'\x89PNG'})
    assert plot.read_bytes() == b'a picture of mine'


def test_a_mos_float64_cannot_square_gives_notes_and_the_plots_that_can_be_drawn(tmp_path, capsys):
    config = _dataset(tmp_path)
    out = tmp_path / 'out'
    assert _run(config, out) == 0
    scatter, bars = out / 'plots' / 'piqe' / 'scatter_synth.png', out / 'plots' / 'srcc_bars.png'
    assert scatter.is_file()
    _dataset(tmp_path, [*MOS[:-1], 1e308])  # finite, so accepted: the case of issue 27
    capsys.readouterr()
    assert _run(config, out) == 0  # every pair evaluated
    printed = capsys.readouterr()
    assert 'Traceback' not in printed.err and 'warning' not in printed.err
    assert f'{scatter}: not drawn (' in printed.out  # matplotlib cannot place ticks on a range of 1e308
    assert not scatter.exists()  # the figure of the earlier numbers is not left to be taken for these
    assert bars.read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'
    note = pd.read_csv(out / 'summary.csv')['note'][0]
    # The resamples without the 1e308 image: their MOS deviations, scaled by it, underflow.
    assert 'plcc not finite on ' in note and '(float64 underflows or overflows at these magnitudes)' in note
    assert 'constant prediction or MOS' not in note


def test_a_file_of_yours_that_appears_during_the_run_stops_it_by_name(tmp_path, monkeypatch, capsys):
    from pyiqa_maclip.app.benchmark import runner

    config = _dataset(tmp_path)
    out = tmp_path / 'out'
    scores = out / 'scores' / 'piqe' / 'synth.csv'
    real = runner.score_into

    def then_a_user_writes(*args, **kwargs):
        real(*args, **kwargs)
        scores.parent.mkdir(parents=True)
        scores.write_text('my scores\n')

    monkeypatch.setattr(runner, 'score_into', then_a_user_writes)
    assert _run(config, out) == 2  # the folder's trouble, not a metric that cannot be built
    printed = capsys.readouterr()
    last = printed.err.rstrip('\n').split('\n')[-1]  # after the progress bar
    assert str(scores) in last and 'not a file this benchmark wrote' in last and 'Traceback' not in printed.err
    assert 'cannot build' not in printed.out + printed.err
    assert scores.read_text() == 'my scores\n'
    monkeypatch.undo()
    scores.unlink()
    assert _run(config, out) == 0  # the scores were kept: the rerun has nothing to score
    assert 'complete, skipped' in capsys.readouterr().out
