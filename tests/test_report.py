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


# ---------------------------------------------------------------- a run on shards, without its journal (issue 29)

_ODD = 'odd\r\n<b>&\udcff'  # CR, LF, markup and a byte that is not UTF-8, in a member's name
_ODD_TEXT = 'odd\r\n<b>&\\xff'  # the same key as the scores file writes it


@pytest.fixture
def shard_run(tmp_path):
    """Two shards and, written by hand as ``score`` writes them, the scores of a run on them (CSV and Parquet,
    one key no longer in its shard) and its errors file; no work folder, so no journal."""
    from test_sources import encoded, write_shard

    first = write_shard(tmp_path / 'data-000.tar', {'a.png': encoded(1), 'b.jpg': encoded(2, 'JPEG'),
                                                   f'{_ODD}.png': encoded(3)})
    second = write_shard(tmp_path / 'data-001.tar', {'c.png': encoded(4)})
    rows = [('a', first, '0.5'), ('b', first, '0.7'), (_ODD_TEXT, first, '0.2'), ('gone', first, '0.9'),
            ('c', second, '0.4'), ('d', second, 'nan')]
    frame = pd.DataFrame({'key': [r[0] for r in rows], 'shard': [str(r[1]) for r in rows],
                          'score': [float(r[2]) for r in rows], 'metric': 'maclip', 'lower_better': False})
    frame.to_csv(tmp_path / 'scores.csv', index=False, lineterminator='\r\n')
    frame.to_parquet(tmp_path / 'scores.parquet', index=False)  # the errors file is beside both
    pd.DataFrame({'key': ['bad\r<i>'], 'shard': [str(second)], 'error': ['OSError: broken']}).to_csv(
        tmp_path / 'scores.errors.csv', index=False, lineterminator='\r\n')
    return tmp_path


def _page_data(page):
    import json
    import re

    return json.loads(re.search(r'id="report-data">(.*?)</script>', page.read_text(encoding='utf-8'), re.S)[1])


def test_a_shard_run_csv_is_reported_without_its_journal(shard_run, capsys):
    csv = shard_run / 'scores.csv'
    assert not any(p.name.endswith('.pyiqa-maclip') for p in shard_run.iterdir())
    expected = pd.read_csv(csv, keep_default_na=False)
    scored = int(np.isfinite(pd.to_numeric(expected['score'], errors='coerce')).sum())
    failed = len(pd.read_csv(shard_run / 'scores.errors.csv'))
    assert cli.main(['report', str(csv), '-o', str(shard_run / 'r.html')]) == 0
    out = capsys.readouterr().out
    assert f'{scored} scores, 4 thumbnails' in out and f'{failed} failed files' in out
    assert '1 images unreadable' in out  # 'gone' is not in its shard any more
    data = _page_data(shard_run / 'r.html')
    first, second = shard_run / 'data-000.tar', shard_run / 'data-001.tar'
    assert data['keys'] == [f'{first}, key a', f'{first}, key b', f'{first}, key odd\\r\\n<b>&\\xff',
                            f'{first}, key gone', f'{second}, key c', f'{second}, key d']
    assert sorted(map(int, data['thumbnails'])) == [0, 1, 2, 4]  # every row whose key is in its shard
    assert data['failed'] == [[f'{second}, key bad\\r<i>', 'OSError: broken']]
    assert '<b>' not in (shard_run / 'r.html').read_text(encoding='utf-8').split('report-data')[1]  # markup is text


def test_a_shard_run_parquet_is_reported_without_its_journal(shard_run, capsys):
    from pyiqa_maclip.app.sources import Sample

    parquet = shard_run / 'scores.parquet'
    scored = int(np.isfinite(pd.read_parquet(parquet)['score']).sum())
    assert cli.main(['report', str(parquet), '-o', str(shard_run / 'r.png'), '--thumbnails', '24']) == 0
    out = capsys.readouterr().out
    assert f'{scored} scores, {scored} thumbnails from worst to best by maclip score' in out
    assert '1 failed files' in out and '1 unscored rows' in out and '1 images unreadable' in out
    with Image.open(shard_run / 'r.png') as picture:
        assert picture.format == 'PNG' and picture.size[0] >= 1200
    found = read_collection(parquet, 24)
    assert [s.key for s in found.paths] == [_ODD, 'c', 'a', 'b', 'gone']  # worst to best
    assert found.paths[-1] == Sample(str(shard_run / 'data-000.tar'), 'gone')  # not found: no locator
    assert all(s.locator is not None for s in found.paths[:-1])
    assert cli.main(['report', str(parquet), '-o', str(shard_run / 'r.html')]) == 0
    assert _page_data(shard_run / 'r.html')['keys'][2] == f'{shard_run / "data-000.tar"}, key odd\\r\\n<b>&\\xff'


def test_each_shard_is_listed_once_and_only_for_pictures(shard_run, capsys, monkeypatch):
    from pyiqa_maclip.app.sources import webdataset

    listed, grouped = [], webdataset._grouped  # every pass over a shard's headers goes through it
    monkeypatch.setattr(webdataset, '_grouped', lambda shard: listed.append(str(shard)) or grouped(shard))
    assert cli.main(['report', str(shard_run / 'scores.csv'), '-o', str(shard_run / 'r.html')]) == 0
    assert sorted(listed) == [str(shard_run / 'data-000.tar'), str(shard_run / 'data-001.tar')]
    listed.clear()
    assert cli.main(['report', str(shard_run / 'scores.csv'), '-o', str(shard_run / 'r.png'), '--thumbnails', '1']) == 0
    assert listed == [str(shard_run / 'data-000.tar')]  # the worst row's shard only


def test_a_moved_shard_gives_a_page_without_pictures(shard_run, capsys):
    (shard_run / 'moved').mkdir()
    for name in ('data-000.tar', 'data-001.tar'):
        (shard_run / name).rename(shard_run / 'moved' / name)
    assert cli.main(['report', str(shard_run / 'scores.parquet'), '-o', str(shard_run / 'r.html')]) == 0
    out = capsys.readouterr().out
    assert '5 scores, 0 thumbnails' in out and '5 images unreadable (shown without a picture)' in out
    assert _page_data(shard_run / 'r.html')['thumbnails'] == {}


def test_a_journal_s_pictures_follow_a_shard_rewritten_since(tmp_path, tiny_rn, capsys):
    """A shard rewritten after the run (its members reordered): the journal's offsets name other bytes now, so
    each picture is found again by its key, or not shown (a sample holding two images, whose member the run
    chose); never another sample's image. An unchanged shard's samples keep the journal's members."""
    from test_sources import encoded, write_shard

    from pyiqa_maclip.app.report.collection import read_table
    from pyiqa_maclip.app.sources import webdataset

    images = {'a.png': encoded(1), 'b.png': encoded(2, size=(30, 20)), 'two.jpg': encoded(3, 'JPEG'),
              'two.png': encoded(4)}
    shard = write_shard(tmp_path / 's.tar', images)
    kept = write_shard(tmp_path / 'kept.tar', {'two.jpg': encoded(5, 'JPEG'), 'two.png': encoded(6)})
    assert cli.main(['score', str(shard), str(kept), '-o', str(tmp_path / 's.csv'), '--image-member', 'png',
                     '--backbone', str(tiny_rn), '--no-progress']) == 0
    write_shard(shard, dict(reversed(images.items())))
    table = read_table(tmp_path / 's.csv')
    pictured = {(s.source, s.key): s.locator and webdataset.read(s.locator)
                for s in map(table.image, range(len(table.rows)))}
    assert pictured == {(str(shard), 'a'): images['a.png'], (str(shard), 'b'): images['b.png'],
                        (str(shard), 'two'): None, (str(kept), 'two'): encoded(6)}
    assert cli.main(['report', str(tmp_path / 's.csv'), '-o', str(tmp_path / 'r.png')]) == 0
    assert '1 images unreadable (shown without a picture)' in capsys.readouterr().out


def test_without_the_journal_no_picture_is_guessed(tmp_path, capsys):
    """A sample holding two images (the run may have read either, by --image-member) and a Parquet file's row
    (its image column is not in the exports) are shown without a picture, never with one that may be another
    image; a sample holding one image next to its caption is pictured."""
    from test_sources import encoded, write_shard

    shard = write_shard(tmp_path / 'two.tar', {'k.jpg': encoded(1, 'JPEG'), 'k.png': encoded(2),
                                               'one.png': encoded(3), 'one.txt': b'a caption'})
    table = tmp_path / 'rows.parquet'
    pd.DataFrame({'key': ['r'], 'image': [encoded(4)]}).to_parquet(table, index=False)
    frame = pd.DataFrame({'key': ['k', 'one', '0'], 'shard': [str(shard), str(shard), str(table)],
                          'score': [0.4, 0.6, 0.5], 'metric': 'maclip', 'lower_better': False})
    frame.to_csv(tmp_path / 'scores.csv', index=False)
    assert cli.main(['report', str(tmp_path / 'scores.csv'), '-o', str(tmp_path / 'r.html')]) == 0
    assert '3 scores, 1 thumbnails' in capsys.readouterr().out
    data = _page_data(tmp_path / 'r.html')
    assert list(data['thumbnails']) == ['1']  # the row of 'one'


def test_parquet_needs_pyarrow_only_when_given(shard_run, capsys, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, 'pyarrow', None)  # as if not installed
    assert cli.main(['report', str(shard_run / 'scores.csv'), '-o', str(shard_run / 'r.png')]) == 0
    capsys.readouterr()
    assert cli.main(['report', str(shard_run / 'scores.parquet'), '-o', str(shard_run / 'r2.png')]) == 2
    err = capsys.readouterr().err
    assert err.count('\n') == 1 and "pip install 'pyiqa-maclip[parquet]'" in err


@pytest.mark.parametrize('name, content, words', [
    ('s.parquet', b'PAR1 not really', 'is not a readable Parquet file'),
    ('s.csv', b'', 'is not a readable CSV'),
    ('s.csv', b'name,score\r\nx,0.5\r\n', 'has no path column, nor key and shard columns'),
])
def test_damaged_or_foreign_scores_are_refused_in_one_line(tmp_path, capsys, name, content, words):
    (tmp_path / name).write_bytes(content)
    for output in ('r.png', 'r.html'):
        assert cli.main(['report', str(tmp_path / name), '-o', str(tmp_path / output), '--higher-is-better']) == 2
        err = capsys.readouterr().err
        assert err.count('\n') == 1 and words in err, err


def test_a_damaged_errors_file_is_named_in_one_line(shard_run, capsys):
    (shard_run / 'scores.errors.csv').write_bytes(b'key,shard,oops\r\n')
    assert cli.main(['report', str(shard_run / 'scores.csv'), '-o', str(shard_run / 'r.png')]) == 2
    err = capsys.readouterr().err
    assert err.count('\n') == 1 and 'scores.errors.csv has no error column' in err
    (shard_run / 'scores.errors.csv').write_bytes(b'\xff\xfe\x00junk')
    assert cli.main(['report', str(shard_run / 'scores.parquet'), '-o', str(shard_run / 'r.html')]) == 2
    err = capsys.readouterr().err
    assert err.count('\n') == 1 and 'scores.errors.csv is not a readable CSV' in err
