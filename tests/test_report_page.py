"""``pyiqa-maclip report SCORES.csv -o report.html`` (issue 31): the page of a real run, in headless Chromium.

Expected counts come from pandas on the CSV the page was made from; the page's hook
(``window.report.setThreshold``, ``#kept-count``, ``#dropped-count``) is documented in docs/report.md.
"""
from __future__ import annotations

import contextlib
import io
import json
import re

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from browser import browser, counts, open_report  # noqa: F401  (fixtures browser, open_report)

from pyiqa_maclip.app import cli


def _run(*args) -> tuple[int, str, str]:
    """``pyiqa-maclip ARGS`` in this process: (exit status, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        status = cli.main([str(a) for a in args])
    return status, out.getvalue(), err.getvalue()


def _images(folder, count: int, seed: int = 0) -> list:
    folder.mkdir()
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(count):
        path = folder / f'img{i}.png'
        noise = rng.integers(0, 255, (40 + 4 * i, 48, 3), dtype=np.uint8)  # more or less smooth: scores differ
        Image.fromarray((noise // (1 + i)).astype(np.uint8)).save(path)
        paths.append(path)
    return paths


def _data(page_file) -> dict:
    text = page_file.read_text(encoding='utf-8')
    return json.loads(re.search(r'id="report-data">(.*?)</script>', text, re.DOTALL)[1])


def _thresholds(scores: pd.Series) -> list[float]:
    """A score itself (a tie, kept), a value between two scores, and one below them all."""
    ordered = np.sort(scores.to_numpy())
    return [float(ordered[len(ordered) // 2]), float((ordered[1] + ordered[2]) / 2), float(ordered[0] - 1)]


@pytest.mark.slow  # scores with the tiny checkpoint: about 10 s here
def test_the_page_of_a_scored_run(tmp_path, tiny_rn, open_report):
    """From a real run's journal: counts at three thresholds as pandas finds them on the CSV, components,
    failures with their reasons, quality maps found by explain's names, the CSV in the select command."""
    images = _images(tmp_path / 'photos', 6)
    (tmp_path / 'photos' / 'broken.png').write_bytes(b'not a picture')
    scores_csv = tmp_path / 's.csv'
    status, _, _ = _run('score', tmp_path / 'photos', '-o', scores_csv, '--backbone', tiny_rn, '--no-progress')
    assert status == 1  # one file failed
    explained = tmp_path / 'explained'
    explained.mkdir()
    Image.new('RGB', (300, 80), (0, 128, 0)).save(explained / 'img2_explain.png')  # the name explain gives
    status, out, _ = _run('report', scores_csv, '-o', tmp_path / 'r.html', '--explained', explained)
    assert status == 0, out
    assert out.startswith(f'{tmp_path / "r.html"}: 6 scores, 6 thumbnails') and '1 failed files' in out
    table = pd.read_csv(scores_csv)
    data = _data(tmp_path / 'r.html')
    assert sorted(data['keys']) == sorted(map(str, images))
    row = {key: i for i, key in enumerate(data['keys'])}
    for column in ('score', 'q_sim', 'q_mag', 'w_sim', 'w_mag'):  # the journal's, rounded as the CSV writes them
        shown = data['scores'] if column == 'score' else data['components'][column]
        assert [shown[row[p]] for p in table['path']] == table[column].tolist()
    assert len(data['thumbnails']) == 6 and list(data['qualityMaps']) == [str(row[str(images[2])])]
    page = open_report(tmp_path / 'r.html')
    for threshold in _thresholds(table['score']):
        kept = int((table['score'] >= threshold).sum())
        assert page.evaluate('t => window.report.setThreshold(t)', threshold) == {'kept': kept, 'dropped': 6 - kept}
        assert counts(page) == (kept, 6 - kept)
    assert page.text_content('#select-command').startswith(f'pyiqa-maclip select {scores_csv} --min-score ')
    failed = page.eval_on_selector_all('#failed-list tr:has(td)', 'rs => rs.map(r => [...r.cells].map(c => c.textContent))')
    assert len(failed) == 1 and failed[0][0] == str(tmp_path / 'photos' / 'broken.png')
    assert 'cannot identify image file' in failed[0][1]


def test_a_lower_is_better_csv_keeps_the_rows_below(tmp_path, open_report):
    """A piqe-like CSV made by hand (no journal): its lower_better column decides the side kept; its
    .errors.csv gives the failures; a file gone since is shown without a picture."""
    images = _images(tmp_path / 'photos', 5)
    scores = [30.0, 10.0, 50.0, 20.0, 40.0, 25.0]
    paths = [*map(str, images), str(tmp_path / 'photos' / 'gone.png')]
    csv = tmp_path / 'piqe.csv'
    pd.DataFrame({'path': paths, 'score': scores, 'metric': 'piqe', 'lower_better': True}).to_csv(csv, index=False)
    pd.DataFrame({'path': ['/x/bad.png'], 'error': ['OSError: truncated']}).to_csv(tmp_path / 'piqe.errors.csv',
                                                                                    index=False)
    status, out, _ = _run('report', csv, '-o', tmp_path / 'r.html')
    assert status == 0 and '6 scores, 5 thumbnails' in out and 'by piqe score (lower is better)' in out
    assert '1 images unreadable (shown without a picture)' in out and '1 failed files' in out
    page = open_report(tmp_path / 'r.html')
    table = pd.read_csv(csv)
    for threshold in _thresholds(table['score']):
        kept = int((table['score'] <= threshold).sum())
        assert page.evaluate('t => window.report.setThreshold(t)', threshold) == {'kept': kept, 'dropped': 6 - kept}
        assert counts(page) == (kept, 6 - kept)
    page.evaluate('window.report.setThreshold(25)')
    with page.expect_download() as event:
        page.click('#download-kept')
    event.value.save_as(tmp_path / 'kept.csv')
    kept = pd.read_csv(tmp_path / 'kept.csv', encoding='utf-8-sig')
    assert kept['key'].tolist() == table.loc[table['score'] <= 25, 'path'].tolist()
    assert page.text_content('#select-command') == f'pyiqa-maclip select {csv} --max-score 25 -o kept.csv'
    assert page.text_content('#failed-list td:nth-child(1)') == '/x/bad.png'


def _csv(path, with_direction: bool = True):
    frame = pd.DataFrame({'path': ['/p/a.png', '/p/b.png'], 'score': [0.2, 0.4]})
    if with_direction:
        frame['metric'], frame['lower_better'] = 'maclip', False
    frame.to_csv(path, index=False)
    return path


@pytest.mark.parametrize('args, message', [
    ([], 'does not say which metric made it (no metric and lower_better columns): pass --higher-is-better or '
         '--lower-is-better'),
    (['--format', 'png'], 'names a HTML but --format is png'),
    (['--thumbnails', '241'], 'a page holds at most 240'),
    (['--explained', '{tmp}/nowhere'], 'is not a folder'),
])
def test_mistakes_are_refused_in_one_line_before_writing(tmp_path, args, message):
    """A CSV from elsewhere without a direction, and options that contradict each other."""
    csv = _csv(tmp_path / 'bare.csv', with_direction=False)
    status, _, err = _run('report', csv, '-o', tmp_path / 'r.html', *(a.format(tmp=tmp_path) for a in args))
    assert status == 2 and err.count('\n') == 1 and message in err
    assert not (tmp_path / 'r.html').exists()


def test_the_format_follows_the_output(tmp_path):
    csv = _csv(tmp_path / 's.csv')
    for args, written in ((['-o', f'{tmp_path}/out/', '--format', 'html'], 'out/report.html'),
                          (['-o', f'{tmp_path}/out/'], 'out/report.png'),
                          (['-o', f'{tmp_path}/page.HTM'], 'page.HTM'),
                          (['-o', f'{tmp_path}/page.data', '--format', 'html'], 'page.data')):
        status, out, _ = _run('report', csv, *args)
        assert status == 0 and out.startswith(f'{tmp_path / written}: 2 scores')
        head = (tmp_path / written).read_bytes()[:15]
        assert head.startswith(b'\x89PNG') if written.endswith('.png') else head.lower().startswith(b'<!doctype html')
    status, _, err = _run('report', csv, '-o', tmp_path / 'r.png', '--explained', tmp_path)
    assert status == 2 and '--explained is for the HTML page' in err


def test_quality_maps_are_embedded_as_explain_wrote_them_or_shrunk(tmp_path):
    from pyiqa_maclip.app.report.thumbnails import QUALITY_MAP_PIXELS, quality_map_png

    small = tmp_path / 'small_explain.png'
    Image.new('RGB', (QUALITY_MAP_PIXELS, 300), (0, 90, 0)).save(small)
    assert quality_map_png(small) == small.read_bytes()  # as explain wrote it
    large = tmp_path / 'large_explain.jpg'
    Image.new('RGB', (QUALITY_MAP_PIXELS + 200, 100), (0, 90, 0)).save(large)
    with Image.open(io.BytesIO(quality_map_png(large))) as shrunk:
        assert shrunk.format == 'PNG' and shrunk.size == (QUALITY_MAP_PIXELS, 90)
    (tmp_path / 'broken_explain.png').write_bytes(b'\x89PNG\r\n\x1a\n broken')
    assert quality_map_png(tmp_path / 'broken_explain.png') is None
