"""The interactive HTML report and ``pyiqa-maclip select`` (issue 31).

The page's own behaviour is checked in headless Chromium (Debian's ``chromium`` driven by Playwright,
offline); those tests are skipped, saying why, where either is missing (``.ci/run`` installs both).
Expected counts and rows are computed here, in Python, from the table the page was written from.
"""
from __future__ import annotations

import io
import json
import os
import re
import stat

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from browser import browser, counts, open_report  # noqa: F401  (fixtures browser, open_report)

from pyiqa_maclip.app import cli
from pyiqa_maclip.app.benchmark.tables import from_spreadsheet_text, spreadsheet_text
from pyiqa_maclip.app.report.html import MAX_THUMBNAILS, choose_thumbnail_rows, thumbnail_jpeg, write_html_report
from pyiqa_maclip.errors import UserError

#: Keys a collection really has (NOTES.md): markup, quotes, CR/LF, commas, formula starts, Unicode.
HOSTILE_KEYS = ['<b>bold</b> & <i>x</i>.png', '</script><script>window.hacked=1</script>.png',
                'quote"and\'apostrophe.jpg', 'line\r\nbreak.jpg', 'comma,separated.jpg', '=HYPERLINK("x").png',
                '+1.png', '-2.png', '@sum.png', "'quoted.png", 'ünïcödé 写真 🖼.png', '<!-- comment.png']


def _table(n: int, seed: int = 0, hostile: bool = True) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    scores = np.round(rng.normal(0.5, 0.15, n), 3)  # rounded: many ties, some at every threshold tested
    keys = [f'/photos/{i:05d}.jpg' for i in range(n)]
    if hostile:
        keys[:len(HOSTILE_KEYS)] = HOSTILE_KEYS
    return pd.DataFrame({'key': keys, 'score': scores, 'q_sim': rng.random(n), 'q_mag': rng.random(n) * 3,
                         'w_sim': rng.random(n), 'w_mag': rng.random(n)})


def _jpeg(shade: int) -> bytes:
    return thumbnail_jpeg(Image.new('RGB', (200, 150), (shade, 90, 255 - shade)))


def _png() -> bytes:
    buffer = io.BytesIO()
    Image.new('RGB', (40, 30), (10, 200, 10)).save(buffer, format='PNG')
    return buffer.getvalue()


def _write(tmp_path, table, lower_better=False, name='report.html', **options):
    rows = choose_thumbnail_rows(table['score'].to_numpy(), lower_better, count=min(60, MAX_THUMBNAILS))
    failed = pd.DataFrame({'key': ['/photos/<broken>.jpg'], 'error': ['OSError: image file is truncated']})
    return write_html_report(table, tmp_path / name, metric='maclip', lower_better=lower_better,
                             thumbnails={r: _jpeg(i % 256) for i, r in enumerate(rows)}, failed=failed,
                             title='<h1>test</h1> collection', **options)


def _embedded(page: str) -> dict:
    blob = re.search(r'<script type="application/json" id="report-data">(.*?)</script>', page, re.DOTALL)[1]
    return json.loads(blob)


# ---------------------------------------------------------------- thumbnails: which rows


def test_thumbnail_rows_hold_the_extremes_spread_and_order():
    rng = np.random.default_rng(1)
    scores = np.concatenate([rng.normal(0, 1, 4900), rng.uniform(5, 50, 100)])  # a long, sparse tail
    scores[17] = np.nan
    for lower_better in (False, True):
        rows = choose_thumbnail_rows(scores, lower_better, count=100)
        assert len(rows) == len(set(rows)) == 100 and 17 not in rows
        chosen = scores[rows]
        goodness = -chosen if lower_better else chosen
        assert np.all(np.diff(goodness) >= 0)  # worst to best
        finite = np.sort(scores[np.isfinite(scores)])
        worst, best = (finite[::-1], finite) if lower_better else (finite, finite[::-1])
        assert set(chosen[:10]) == set(worst[:10]) and set(chosen[-10:]) == set(best[:10])  # 10 % each end
        # Spread over the ranks: no quantile band of 3 % (the even ranks are 1/39 apart) without a picture.
        all_goodness = np.sort(-finite if lower_better else finite)
        quantiles = np.searchsorted(all_goodness, goodness) / (len(finite) - 1)
        assert quantiles[0] == 0 and quantiles[-1] == 1 and np.max(np.diff(quantiles)) < 0.03
        # ... and over the score range: every 20th of it holding 3 rows or more has a picture (the tail's
        # 2 % of the rows span 90 % of the range: quantiles alone would leave it almost bare).
        edges = np.linspace(finite[0], finite[-1], 21)
        rows_per_bin, pictures_per_bin = np.histogram(finite, edges)[0], np.histogram(chosen, edges)[0]
        assert np.all(pictures_per_bin[rows_per_bin >= 3] > 0)
    # Few rows: every finite row once; ties keep row order.
    assert choose_thumbnail_rows([0.5, np.inf, 0.2, 0.5], False) == [2, 0, 3]
    assert choose_thumbnail_rows([0.5, 0.2, 0.5], True) == [0, 2, 1]
    for count in (0, MAX_THUMBNAILS + 1, 2.5):
        with pytest.raises(UserError, match=f'from 1 to {MAX_THUMBNAILS}'):
            choose_thumbnail_rows(scores, False, count=count)


# ---------------------------------------------------------------- the file, without a browser


def test_one_self_contained_file_whose_data_is_the_table(tmp_path):
    table = _table(300)
    table.loc[5, 'score'] = np.nan  # a row without a score travels as null
    previous = os.umask(0o027)
    try:
        output = _write(tmp_path, table, quality_maps={7: _png()}, scores_file='my scores.csv')
    finally:
        os.umask(previous)
    assert stat.S_IMODE(output.stat().st_mode) == 0o640  # the umask's permissions, not mkstemp's 0600
    assert sorted(p.name for p in tmp_path.iterdir()) == ['report.html']  # nothing beside it
    page = output.read_text(encoding='utf-8')
    # Nothing outside the file: no URL but data: images, and a policy that forbids loading any.
    assert not re.search(r'(?:src|href)\s*=\s*["\'](?!data:)', page)
    assert not re.search(r'https?://(?!www\.w3\.org/2000/svg)', page)
    assert "default-src 'none'" in page
    # The keys cannot leave the JSON: no '<' at all in it, so no </script> or <!--.
    blob = re.search(r'id="report-data">(.*?)</script>', page, re.DOTALL)[1]
    assert '<' not in blob and '</script><script>window.hacked' not in page
    data = _embedded(page)
    assert data['keys'] == table['key'].tolist()
    assert data['scores'][5] is None
    assert data['scores'][:5] + data['scores'][6:] == table['score'].drop(index=5).tolist()  # exact floats
    assert list(data['components']) == ['q_sim', 'q_mag', 'w_sim', 'w_mag']
    assert data['components']['q_mag'] == table['q_mag'].tolist()
    assert data['quantiles']['50%'] == float(np.nanquantile(table['score'], 0.5))
    assert data['qualityMaps']['7'].startswith('data:image/png;base64,')
    assert len(data['thumbnails']) == 60 and data['scoresFile'] == "'my scores.csv'"
    assert '<title>&lt;h1&gt;test&lt;/h1&gt; collection</title>' in page


def test_bad_pictures_are_refused_and_nothing_is_written(tmp_path):
    table = _table(10, hostile=False)
    failed = pd.DataFrame({'key': [], 'error': []})
    write = lambda **o: write_html_report(table, tmp_path / 'r.html', metric='maclip', lower_better=False,
                                          failed=failed, title='t', **o)
    for options, message in (({'thumbnails': {0: _png()}}, 'row 0 is not JPEG'),
                             ({'thumbnails': {10: _jpeg(0)}}, 'row 10 is not a row position'),
                             ({'thumbnails': {}, 'quality_maps': {1: _jpeg(0)}}, 'row 1 is not PNG'),
                             ({'thumbnails': {i: _jpeg(0) for i in range(MAX_THUMBNAILS + 1)}}, 'at most 240')):
        with pytest.raises(UserError, match=message):
            write(**options)
    with pytest.raises(UserError, match="no 'score' column"):
        write_html_report(table.drop(columns='score'), tmp_path / 'r.html', metric='maclip', lower_better=False,
                          thumbnails={}, failed=failed, title='t')
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------- pyiqa-maclip select


def _scores_csv(tmp_path, lower_better=False):
    table = _table(200, hostile=True).rename(columns={'key': 'path'})
    table.loc[3, 'score'] = np.nan
    table = table.assign(metric='maclip', lower_better=lower_better)
    path = tmp_path / 'scores.csv'
    table.to_csv(path, index=False, lineterminator='\r\n')
    return path, table


def test_select_keeps_the_rows_the_threshold_keeps(tmp_path, capsys):
    path, table = _scores_csv(tmp_path)
    threshold = float(table['score'].median())  # rounded scores: ties at the threshold, which are kept
    assert (table['score'] == threshold).sum() > 1
    scores = table['score']
    for option, expected in (('--min-score', scores >= threshold), ('--max-score', scores <= threshold)):
        output = tmp_path / f'{option}.csv'
        assert cli.main(['select', str(path), option, str(threshold), '-o', str(output)]) == 0
        kept = pd.read_csv(output, dtype=str, keep_default_na=False)
        assert kept['path'].tolist() == table.loc[expected, 'path'].tolist()  # CR/LF, quotes, commas intact
        assert output.read_bytes().startswith(b'path,score,q_sim,q_mag,w_sim,w_mag,metric,lower_better\r\n')
        assert f'{expected.sum()} of 200 rows kept (1 without a finite score, never kept)' in capsys.readouterr().out
    band = tmp_path / 'band.csv'
    assert cli.main(['select', str(path), '--min-score', '0.4', '--max-score', '0.6', '-o', str(band)]) == 0
    assert len(pd.read_csv(band)) == table['score'].between(0.4, 0.6).sum()


def test_select_keeps_a_parquet_scores_files_rows_whole(tmp_path, capsys):
    """A scores.parquet (as -o scores.parquet --embeddings writes it) gives kept.parquet: the rows pandas keeps,
    every column with its type, the embedding lists included; a CSV output for it is refused in one line."""
    pa = pytest.importorskip('pyarrow')
    import pyarrow.parquet as pq

    scores = [0.2, 0.7, float('nan'), 0.5, 0.9]
    table = pa.table({'key': ['a', 'b\r\n<c>', 'c', 'd', 'e'], 'shard': ['/s/0.tar'] * 5, 'score': scores,
                      'metric': ['maclip'] * 5, 'lower_better': [False] * 5,
                      'embedding': pa.array([[float(i), 1.0] for i in range(5)], pa.list_(pa.float32(), 2))})
    pq.write_table(table, tmp_path / 'scores.parquet')
    assert cli.main(['select', str(tmp_path / 'scores.parquet'), '--min-score', '0.5',
                     '-o', str(tmp_path / 'kept.parquet')]) == 0
    assert '3 of 5 rows kept (1 without a finite score, never kept)' in capsys.readouterr().out
    kept = pq.read_table(tmp_path / 'kept.parquet')
    assert kept.schema == table.schema
    assert kept.column('key').to_pylist() == ['b\r\n<c>', 'd', 'e']
    assert kept.column('embedding').to_pylist() == [[1.0, 1.0], [3.0, 1.0], [4.0, 1.0]]
    assert cli.main(['select', str(tmp_path / 'scores.parquet'), '--min-score', '0.5',
                     '-o', str(tmp_path / 'kept.csv')]) == 2
    err = capsys.readouterr().err
    assert err.count('\n') == 1 and 'expected an output such as kept.parquet' in err


def test_select_refuses_mistakes_in_one_line(tmp_path, capsys):
    path, _ = _scores_csv(tmp_path, lower_better=True)
    output = tmp_path / 'kept.csv'
    output.write_text('mine')
    for args, message in (([], 'no threshold'),
                          (['--min-score', '0.6', '--max-score', '0.4'], 'no score passes both'),
                          (['--min-score', '0.5'], 'pass --overwrite'),
                          (['--min-score', '0.5', '-o', str(path), '--overwrite'], 'is the scores file itself')):
        assert cli.main(['select', str(path), '-o', str(output), *args]) == 2
        err = capsys.readouterr().err
        assert err.count('\n') == 1 and message in err
    assert output.read_text() == 'mine'
    with pytest.raises(SystemExit):
        cli.main(['select', str(path), '--min-score', 'nan', '-o', str(output)])
    assert 'expected a finite number' in capsys.readouterr().err
    # The bound that keeps the worst rows of the CSV's metric is applied, with a warning.
    assert cli.main(['select', str(path), '--min-score', '0.5', '-o', str(tmp_path / 'worst.csv')]) == 0
    assert 'lower-is-better, so --min-score keeps its worst rows' in capsys.readouterr().err


# ---------------------------------------------------------------- the page, in a real browser

def _kept(table, threshold, lower_better):
    scores = table['score']
    return (scores <= threshold) if lower_better else (scores >= threshold)


@pytest.mark.parametrize('lower_better', [False, True])
def test_counts_follow_the_threshold_from_hook_box_and_slider(tmp_path, open_report, lower_better):
    table = _table(2000)
    table.loc[[9, 99], 'score'] = [np.nan, np.inf]  # neither kept nor dropped
    page = open_report(_write(tmp_path, table, lower_better))
    finite = table[np.isfinite(table['score'])]
    median = float(finite['score'].median())
    for threshold in (median, 0.4321, float(finite['score'].min()) - 1):  # a tie, between scores, below all
        kept = int(_kept(finite, threshold, lower_better).sum())
        assert page.evaluate('t => window.report.setThreshold(t)', threshold) == {'kept': kept, 'dropped': 1998 - kept}
        assert counts(page) == (kept, 1998 - kept)
        assert page.input_value('#threshold-input') == repr(threshold).removesuffix('.0')
    # The number box, typed into, moves the slider and the counts.
    page.fill('#threshold-input', '0.55')
    kept = int(_kept(finite, 0.55, lower_better).sum())
    assert counts(page) == (kept, 1998 - kept) and float(page.input_value('#threshold-slider')) == 0.55
    assert page.text_content('#kept-share') == f'{100 * kept / 1998:.1f} %'
    # The slider moves the number box and the counts.
    page.eval_on_selector('#threshold-slider', "s => { s.value = '0.45'; s.dispatchEvent(new Event('input')); }")
    kept = int(_kept(finite, 0.45, lower_better).sum())
    assert page.input_value('#threshold-input') == '0.45' and counts(page) == (kept, 1998 - kept)
    assert page.evaluate('window.report.threshold') == 0.45


@pytest.mark.parametrize('lower_better', [False, True])
def test_downloads_and_command_hold_exactly_the_rows_of_each_side(tmp_path, open_report, lower_better):
    table = _table(500)
    scores_csv = tmp_path / 'scores.csv'
    table.rename(columns={'key': 'path'}).to_csv(scores_csv, index=False)
    page = open_report(_write(tmp_path, table, lower_better, scores_file=str(scores_csv)))
    threshold = float(table['score'].sort_values().iloc[150])
    assert (table['score'] == threshold).sum() > 1  # ties at the threshold: kept
    page.evaluate('t => window.report.setThreshold(t)', threshold)
    kept = _kept(table, threshold, lower_better)
    for button, rows in (('#download-kept', table[kept]), ('#download-dropped', table[~kept])):
        with page.expect_download() as event:
            page.click(button)
        saved = tmp_path / event.value.suggested_filename
        event.value.save_as(saved)
        assert saved.read_bytes().startswith(b'\xef\xbb\xbfkey,score\r\n')
        got = pd.read_csv(saved, encoding='utf-8-sig', dtype={'key': str}, keep_default_na=False)
        assert got['key'].tolist() == [spreadsheet_text(k) for k in rows['key']]  # the benchmark tables' rule
        assert got['key'].map(from_spreadsheet_text).tolist() == rows['key'].tolist()
        assert got['score'].tolist() == rows['score'].tolist()
    # The command shown applies the same threshold: it keeps the rows of the kept download.
    command = page.text_content('#select-command')
    option = '--max-score' if lower_better else '--min-score'
    assert command == f'pyiqa-maclip select {scores_csv} {option} {threshold!r} -o kept.csv'
    page.click('#copy-command')  # selects the command (the clipboard may be refused to a file: page)
    assert page.evaluate('getSelection().toString()') == command
    output = tmp_path / 'selected.csv'
    assert cli.main([*command.split()[1:-1], str(output)]) == 0
    selected = pd.read_csv(output, dtype={'path': str}, keep_default_na=False)
    assert selected['path'].tolist() == table[kept]['key'].tolist()


def test_pictures_near_the_threshold_and_galleries(tmp_path, open_report):
    table = _table(3000, hostile=False)
    page = open_report(_write(tmp_path, table))
    data = _embedded((tmp_path / 'report.html').read_text(encoding='utf-8'))
    pictured = sorted(map(int, data['thumbnails']), key=lambda r: (table['score'][r], r))  # worst first
    threshold = 0.47
    page.evaluate('t => window.report.setThreshold(t)', threshold)

    def rows_in(selector):
        return [int(r) for r in page.eval_on_selector_all(selector, 'cs => cs.map(c => c.dataset.row)')]

    cut = sum(table['score'][r] < threshold for r in pictured)
    assert rows_in('#just-dropped .card') == pictured[max(0, cut - 4):cut]
    assert rows_in('#just-kept .card') == pictured[cut:cut + 4]
    # Galleries: the dropped pictures worst first, the kept ones best first, every dropped row when asked.
    assert rows_in('#gallery .card') == pictured[:cut]
    page.click('[data-view=kept]')
    page.select_option('#gallery-order', 'best')
    assert rows_in('#gallery .card') == pictured[cut:][::-1]
    page.click('[data-view=dropped]')
    page.select_option('#gallery-order', 'worst')
    page.uncheck('#pictures-only')
    dropped = int((table['score'] < threshold).sum())
    assert page.text_content('#gallery-pager span') == f'of {-(-dropped // 60)}'
    assert len(rows_in('#gallery .card')) == 60 and page.locator('#gallery .card img').count() < 60
    page.click('#gallery-pager button:has-text("next")')
    expected = table.index[table['score'] < threshold]
    expected = sorted(expected, key=lambda r: (table['score'][r], r))[60:120]
    assert rows_in('#gallery .card') == expected


def test_keys_are_shown_as_text_with_their_components(tmp_path, open_report):
    table = _table(len(HOSTILE_KEYS), hostile=True)
    thumbnails = {r: _jpeg(r * 20) for r in range(len(table))}
    failed = pd.DataFrame({'key': ['<img src=x onerror=alert(1)>'], 'error': ['<b>not bold</b>']})
    output = write_html_report(table, tmp_path / 'r.html', metric='maclip', lower_better=False, thumbnails=thumbnails,
                               failed=failed, title='</title><b>x', quality_maps={1: _png()})
    page = open_report(output)
    page.click('[data-view=all]')
    assert page.evaluate('window.hacked') is None
    assert page.locator('i, #gallery b, #failed-list b, img[src=x]').count() == 0
    assert page.text_content('h1') == '</title><b>x'
    assert page.text_content('#failed-list td:nth-child(2)') == '<b>not bold</b>'
    shown = {int(c['row']): c['name'] for c in page.eval_on_selector_all(
        '#gallery .card', 'cs => cs.map(c => ({row: c.dataset.row, name: c.querySelector(".name").textContent}))')}
    expected = {r: k.rsplit('/', 1)[-1].replace('\r', '\\r').replace('\n', '\\n') for r, k in enumerate(table['key'])}
    assert shown == expected
    page.click('#gallery .card[data-row="1"]')
    assert page.is_visible('#detail') and page.text_content('#detail-key') == HOSTILE_KEYS[1]
    values = dict(page.eval_on_selector_all('#detail-values tr',
                                            'rs => rs.map(r => [...r.cells].map(c => c.textContent))'))
    assert float(values['q_mag']) == pytest.approx(table['q_mag'][1], rel=1e-5)  # shown to 6 digits
    assert float(values['score']) == table['score'][1] and values['side'] in ('kept', 'dropped')
    assert page.is_visible('#detail-map')
    rank = table['score'].rank(method='first').astype(int)[1]  # 1 = the worst
    page.keyboard.press('ArrowRight')  # the next better row
    better = table.index[table['score'].rank(method='first').astype(int) == rank + 1]
    assert page.text_content('#detail-key') == (
        table['key'][better[0]].replace('\r', '\\r').replace('\n', '\\n') if len(better) else HOSTILE_KEYS[1])


@pytest.mark.parametrize('scores', [[], [0.5], [0.5] * 5, [np.nan, np.nan]], ids=['empty', 'one', 'equal', 'unscored'])
def test_degenerate_collections_draw_without_errors(tmp_path, open_report, scores):
    table = pd.DataFrame({'key': [f'/p/{i}.png' for i in range(len(scores))], 'score': np.array(scores, dtype=float)})
    thumbnails = {r: _jpeg(0) for r in choose_thumbnail_rows(table['score'].to_numpy(), False)} if len(scores) else {}
    output = write_html_report(table, tmp_path / 'r.html', metric='maclip', lower_better=False, thumbnails=thumbnails,
                               failed=pd.DataFrame({'key': [], 'error': []}), title='t')
    page = open_report(output)
    finite = int(np.isfinite(table['score']).sum())
    assert page.evaluate('window.report.setThreshold(0.5)') == {'kept': finite, 'dropped': 0}
    assert page.evaluate('window.report.setThreshold(0.6)') == {'kept': 0, 'dropped': finite}
    assert page.is_hidden('#failed-section')
