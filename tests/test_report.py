"""``pyiqa-maclip report`` (issue 15, point 3): quantile selection by numbers, the picture by its size."""
import numpy as np
import pandas as pd
import pytest
from PIL import Image

from pyiqa_maclip.app import cli
from pyiqa_maclip.app.report import read_collection, read_selection, select_quantiles
from pyiqa_maclip.app.report import exports


def test_quantile_selection_picks_ranks_worst_to_best():
    scores = np.array([0.5, 0.1, 0.9, 0.3, 0.7])  # ascending order: rows 1, 3, 0, 4, 2
    selection = select_quantiles(scores, 3)
    assert selection.rows.tolist() == [1, 0, 2]  # ranks 0, 2, 4: quantiles 0, 0.5, 1
    assert selection.quantiles.tolist() == [0.0, 0.5, 1.0]
    assert selection.scores.tolist() == [0.1, 0.5, 0.9]
    # More thumbnails than images: each image once; ties keep file order.
    assert select_quantiles(np.array([0.2, 0.2]), 10).rows.tolist() == [0, 1]
    many = select_quantiles(np.arange(1001.0)[::-1], 11)  # 1000, 999, ..., 0
    assert many.scores.tolist() == [0.0, 100.0, 200.0, 300.0, 400.0, 500.0, 600.0, 700.0, 800.0, 900.0, 1000.0]
    with pytest.raises(ValueError, match='at least 1'):
        select_quantiles(scores, 0)


def test_paths_are_read_by_row_across_chunks(tmp_path, monkeypatch):
    monkeypatch.setattr(exports, '_CHUNK', 7)
    csv = tmp_path / 'scores.csv'
    pd.DataFrame({'path': [f'/p/{i}\r,"x".png' for i in range(30)], 'score': np.arange(30.0)}).to_csv(
        csv, index=False, lineterminator='\r\n')
    assert exports.rows_at(csv, np.array([29, 0, 13]), ['path']) == [('/p/29\r,"x".png',), ('/p/0\r,"x".png',),
                                                                     ('/p/13\r,"x".png',)]


def test_report_picture_and_errors(tmp_path, capsys):
    rng = np.random.default_rng(0)
    rows = []
    for i in range(12):
        path = tmp_path / f'img{i}.png'
        Image.fromarray(rng.integers(0, 255, (30 + i, 40, 3), dtype=np.uint8)).save(path)
        rows.append((str(path), i / 12))
    rows.append((str(tmp_path / 'moved.png'), 0.99))  # no longer there: shown as unreadable
    pd.DataFrame(rows, columns=['path', 'score']).to_csv(tmp_path / 'scores.csv', index=False)
    pd.DataFrame([('/x/a.png', 'OSError: x'), ('/x/b.png', 'OSError: y')], columns=['path', 'error']).to_csv(
        tmp_path / 'scores.errors.csv', index=False)
    output = tmp_path / 'out' / 'report.png'
    args = ['report', str(tmp_path / 'scores.csv'), '-o', str(output), '--thumbnails', '9', '--higher-is-better']
    assert cli.main(args) == 0
    out = capsys.readouterr().out
    assert '13 scores, 9 thumbnails' in out and '2 failed files' in out
    with Image.open(output) as picture:
        assert picture.format == 'PNG' and picture.size[0] >= 1200 and picture.size[1] >= 600

    # A report is a file like any other: replaced only when asked to.
    assert cli.main(args) == 2 and 'pass --overwrite' in capsys.readouterr().err
    assert cli.main([*args, '--overwrite']) == 0

    assert cli.main(['report', str(tmp_path / 'missing.csv'), '-o', str(output)]) == 2
    err = capsys.readouterr().err
    assert err.count('\n') == 1 and 'does not exist' in err
    (tmp_path / 'junk.csv').write_text('a,b\n1,2\n')
    assert cli.main(['report', str(tmp_path / 'junk.csv'), '-o', str(tmp_path / 'r.png'), '--higher-is-better']) == 2
    assert 'score column' in capsys.readouterr().err


def test_each_thumbnail_has_its_own_rows_score_whatever_the_csv_holds(tmp_path, capsys):
    """Empty, NaN and infinite scores are unscored rows; the others keep their own row (issue 21, point 5)."""
    scores = ['nan', '0.5', '', 'inf', '0.1', '-inf', '0.9', 'NaN', '0.3']
    csv = tmp_path / 'scores.csv'
    csv.write_text('path,score\n' + ''.join(f'/p/{i}.png,{s}\n' for i, s in enumerate(scores)))
    found = read_selection(csv, 10, lower_better=False)
    finite, selection, paths, unscored = found.scores, found.selection, found.paths, found.unscored
    assert unscored == 5 and sorted(finite.tolist()) == [0.1, 0.3, 0.5, 0.9]
    assert paths == ['/p/4.png', '/p/8.png', '/p/1.png', '/p/6.png']  # worst to best, each its own row
    assert selection.scores.tolist() == [0.1, 0.3, 0.5, 0.9] and selection.rows.tolist() == [4, 8, 1, 6]
    assert cli.main(['report', str(csv), '-o', str(tmp_path / 'r.png'), '--higher-is-better']) == 0
    out = capsys.readouterr().out
    assert '4 scores, 4 thumbnails' in out and '5 unscored rows' in out
    csv.write_text('path,score\n/a.png,nan\n/b.png,\n')
    assert cli.main(['report', str(csv), '-o', str(tmp_path / 'r2.png'), '--higher-is-better']) == 2
    assert 'has no finite scores (2 rows)' in capsys.readouterr().err


def _csv(path, scores, metric=None, lower_better=None):
    frame = pd.DataFrame({'path': [f'/p/{i}.png' for i in range(len(scores))], 'score': scores})
    if metric is not None:
        frame['metric'], frame['lower_better'] = metric, lower_better
    frame.to_csv(path, index=False)
    return path


def test_a_lower_is_better_metric_is_shown_worst_first(tmp_path, capsys):
    """Issue 28 point 1: the CSV's metric and lower_better columns decide what "worst" is, and name the axis."""
    csv = _csv(tmp_path / 'piqe.csv', [10.0, 50.0, 30.0], 'piqe', True)
    found = read_selection(csv, 3)
    assert found.paths == ['/p/1.png', '/p/2.png', '/p/0.png'] and found.selection.scores.tolist() == [50, 30, 10]
    assert (found.metric, found.lower_better) == ('piqe', True)
    assert read_selection(_csv(tmp_path / 'm.csv', [10.0, 50.0, 30.0], 'maclip', False), 3).paths == [
        '/p/0.png', '/p/2.png', '/p/1.png']
    assert cli.main(['report', str(csv), '-o', str(tmp_path / 'r.png')]) == 0
    assert 'worst to best by piqe score (lower is better)' in capsys.readouterr().out
    # A direction the CSV contradicts is refused; a CSV that does not say needs one.
    assert cli.main(['report', str(csv), '-o', str(tmp_path / 'r2.png'), '--higher-is-better']) == 2
    assert 'for which lower is better' in capsys.readouterr().err
    bare = _csv(tmp_path / 'bare.csv', [1.0, 2.0])
    assert cli.main(['report', str(bare), '-o', str(tmp_path / 'r3.png')]) == 2
    err = capsys.readouterr().err
    assert err.count('\n') == 1 and 'pass --higher-is-better or --lower-is-better' in err
    assert read_selection(bare, 2, lower_better=True).paths == ['/p/1.png', '/p/0.png']


@pytest.mark.parametrize('output, written', [('out/', 'out/report.png'), ('folder', 'folder/report.png'),
                                             ('new.png', 'new.png')])
def test_a_folder_output_gets_report_png(tmp_path, capsys, output, written):
    """Issue 28 point 6: -o DIR/ (or an existing folder) writes DIR/report.png and says so."""
    (tmp_path / 'folder').mkdir()
    csv = _csv(tmp_path / 's.csv', [0.2, 0.4], 'maclip', False)
    assert cli.main(['report', str(csv), '-o', f'{tmp_path}/{output}']) == 0
    assert capsys.readouterr().out.startswith(f'{tmp_path / written}: 2 scores')
    assert (tmp_path / written).is_file()


def test_the_journal_is_read_when_it_is_there(tmp_path, capsys):
    """Issue 27 point 4: paths, scores, failures and the metric come from the run's journal, not the CSV."""
    from pyiqa_maclip.app.files import WorkFiles
    from pyiqa_maclip.app.journal import Journal, Result

    csv = _csv(tmp_path / 's.csv', [0.0])  # what the CSV says is not read
    files = WorkFiles(csv.absolute())
    files.folder.mkdir()
    with Journal.create(files.journal(0), {'metric': 'piqe'}, ['score'], lower_better=True) as journal:
        journal.record([Result('/a.png', {'score': 10.0}, None), Result('/b.png', {'score': 30.0}, None),
                        Result('/c.png', None, 'OSError: x')])
        assert journal.metric == 'piqe' and journal.lower_better
    found = read_collection(csv, 5)
    assert found.paths == ['/b.png', '/a.png'] and found.failed == 1 and found.metric == 'piqe'
