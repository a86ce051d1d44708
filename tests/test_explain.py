"""Per-patch maps drawn per pixel (issue 15): overlapping patches averaged, uncovered margins blank."""
import numpy as np

from pyiqa_maclip.app.explain import output_names, pixel_map


def test_overlapping_patches_are_averaged_and_margins_left_blank():
    # Two 4x4 patches at stride 2 on a 4x7 image: columns 0-1 one patch, 2-3 both, 4-5 the other, 6 none.
    boxes = np.array([[[0, 0, 4, 4], [0, 2, 4, 6]]])
    values = np.array([[1.0, 3.0]])
    result = pixel_map(values, boxes, 4, 7)
    assert result.shape == (4, 7)
    np.testing.assert_array_equal(result[:, :2], 1.0)
    np.testing.assert_array_equal(result[:, 2:4], 2.0)
    np.testing.assert_array_equal(result[:, 4:6], 3.0)
    assert np.isnan(result[:, 6]).all()


def test_maps_are_sampled_at_a_scale():
    boxes = np.array([[[0, 0, 200, 200]]])
    result = pixel_map(np.array([[0.5]]), boxes, 400, 200, scale=0.5)
    assert result.shape == (200, 100)
    assert np.all(result[:100] == 0.5) and np.isnan(result[100:]).all()


def test_output_names_are_unique(tmp_path):
    """Shared stems (and case twins) get a hash of their path; numbering could meet another file's name."""
    names = [p.name for p in output_names(['/a/x.png', '/b/x.jpg', '/c/y.png', '/d/X.png', '/e/x_0.png'], tmp_path)]
    assert names[2] == 'y_explain.png' and names[4] == 'x_0_explain.png'
    assert all(n.startswith(('x-', 'X-')) and n.endswith('_explain.png') and len(n) == len('x-12345678_explain.png')
               for n in (names[0], names[1], names[3]))
    assert len({n.casefold() for n in names}) == 5


# ---------------------------------------------------------------- MACLIP.quality_maps (issue 15, point 1)

import os  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from rounding import UNIT_ROUNDOFF  # noqa: E402

from pyiqa_maclip import MACLIP, QualityComponents  # noqa: E402
from pyiqa_maclip.app import cli  # noqa: E402
from pyiqa_maclip.testing import random_images  # noqa: E402


@pytest.mark.parametrize('height, width', [(384, 512), (224, 224), (300, 257), (100, 300), (1, 40), (500, 8)])
def test_maps_agree_with_scores_and_boxes_stay_in_the_image(tiny_metric, height, width):
    image = random_images(1, height, width, seed=3)[0]
    with torch.no_grad():
        qmap = tiny_metric.quality_maps([image])[0]
        scored = tiny_metric.score_images([image])
    rows, cols = qmap.boxes.shape[:2]
    size = tiny_metric._patch_grid(image[None])[0]
    assert (rows, cols) == ((size[0] - 224) // 128 + 1, (size[1] - 224) // 128 + 1)
    for field in QualityComponents._fields:
        assert getattr(qmap.patches, field).shape == (rows, cols)
        assert getattr(qmap.global_view, field).shape == ()
        # The image's value is the mean over its views (patches, then the global view): the same
        # per-view values (the same encoding), a mean of V of them in float32 summed in another
        # order at most: V u of the largest (Higham's bound for a sum, one more for the division).
        views = torch.cat([getattr(qmap.patches, field).reshape(-1), getattr(qmap.global_view, field).reshape(1)])
        tolerance = (len(views) + 1) * UNIT_ROUNDOFF[torch.float32] * float(views.abs().max())
        assert float(views.mean()) == pytest.approx(float(getattr(scored, field)[0]), abs=tolerance)
        if field == 'score':
            assert float(qmap.score) == pytest.approx(float(scored.score[0]), abs=tolerance)
    boxes = qmap.boxes
    assert float(boxes[..., :2].min()) >= 0 and float(boxes[..., 2].max()) <= height and float(boxes[..., 3].max()) <= width
    assert bool((boxes[..., 2] > boxes[..., 0]).all() and (boxes[..., 3] > boxes[..., 1]).all())
    if min(height, width) >= 224:  # not enlarged: the windows of nn.Unfold, in pixels
        assert boxes[0, 0].tolist() == [0, 0, 224, 224]
        assert boxes[-1, -1].tolist() == [128 * (rows - 1), 128 * (cols - 1), 128 * (rows - 1) + 224, 128 * (cols - 1) + 224]
    else:  # enlarged: the patches together span the original image's short side
        short = 2 if height < width else 3
        # patch_size * (side / working side) in float64: two roundings of the side.
        assert float(boxes[..., short].max()) == pytest.approx(min(height, width), abs=2 * 2 ** -53 * min(height, width))


def test_maps_take_no_encoder_pass_beyond_scoring(tiny_rn, monkeypatch):
    metric = MACLIP(backbone=str(tiny_rn), chunk_size=4).eval()
    images = [random_images(1, 400, 600, seed=1)[0], random_images(1, 230, 300, seed=2)[0]]
    calls = []
    encode = MACLIP.encode_views
    monkeypatch.setattr(MACLIP, 'encode_views', lambda self, views: calls.append(len(views)) or encode(self, views))
    with torch.no_grad():
        metric.score_images(images)
        scoring = list(calls)
        calls.clear()
        maps = metric.quality_maps(images)
    assert calls == scoring and max(calls) <= 4  # the same chunks: bounded memory, no extra work
    assert [m.boxes.shape[:2] for m in maps] == [(2, 3), (1, 1)]


def _photo(path, height, width, seed):
    array = (random_images(1, height, width, seed=seed)[0].permute(1, 2, 0).numpy() * 255).astype('uint8')
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)
    return str(path)


def test_explain_writes_one_wide_picture_per_image(tiny_rn, tmp_path, capsys):
    paths = [_photo(tmp_path / f'photo{i}.png', h, w, i) for i, (h, w) in enumerate([(300, 450), (90, 700)])]
    args = ['explain', *paths, '-o', str(tmp_path / 'maps'), '--backbone', str(tiny_rn)]
    assert cli.main(args) == 0
    written = capsys.readouterr().out.split()
    assert [p.rsplit('/', 1)[1] for p in written] == ['photo0_explain.png', 'photo1_explain.png']
    for path in written:
        with Image.open(path) as picture:
            assert picture.format == 'PNG' and picture.size[0] >= 800
    # Pictures are files like any other: replaced only when asked to, never through a link.
    assert cli.main(args) == 2 and 'pass --overwrite' in capsys.readouterr().err
    assert cli.main([*args, '--overwrite']) == 0
    capsys.readouterr()
    os.replace(written[0], tmp_path / 'elsewhere.png')
    os.symlink(tmp_path / 'elsewhere.png', written[0])
    assert cli.main([*args, '--overwrite']) == 2 and 'is a symlink' in capsys.readouterr().err
    assert cli.main(['explain', str(tmp_path / 'missing.png'), '-o', str(tmp_path / 'maps')]) == 2
    assert capsys.readouterr().err.count('\n') == 1


def test_explain_takes_folders_names_each_failure_and_goes_on(tiny_rn, tmp_path, capsys):
    """Two inputs of one name in different folders get two pictures; a broken file is named, the others drawn
    (exit status 1, as score)."""
    _photo(tmp_path / 'in/x/a.png', 240, 260, 1)
    _photo(tmp_path / 'in/y/a.png', 250, 230, 2)
    (tmp_path / 'in/y/broken.png').write_bytes(b'\x89PNG not really')
    status = cli.main(['explain', str(tmp_path / 'in'), '-o', str(tmp_path / 'maps'), '--backbone', str(tiny_rn)])
    captured = capsys.readouterr()
    assert status == 1
    assert len(captured.out.split()) == 2 and len(set(captured.out.split())) == 2
    errors = captured.err.splitlines()
    assert errors[0].startswith(f'pyiqa-maclip explain: {tmp_path / "in/y/broken.png"}: UnidentifiedImageError')
    assert errors[1] == 'pyiqa-maclip explain: 2 pictures written, 1 images failed'


def test_explain_holds_one_image_at_a_time(tiny_rn, tmp_path, monkeypatch, capsys):
    """Each image is read, scored and drawn before the next is read (memory of one image, however many)."""
    from pyiqa_maclip.app import explain, images

    paths = [_photo(tmp_path / f'in/p{i}.png', 230, 240, i) for i in range(3)]
    events = []
    read, draw = images.read_image, explain.draw_explanation
    monkeypatch.setattr(images, 'read_image', lambda path, *a: events.append(('read', path)) or read(path, *a))
    monkeypatch.setattr(explain, 'draw_explanation', lambda *a: events.append(('draw', a[-1])) or draw(*a))
    assert cli.main(['explain', *paths, '-o', str(tmp_path / 'maps'), '--backbone', str(tiny_rn)]) == 0
    assert [kind for kind, _ in events] == ['read', 'draw'] * 3


def test_a_name_too_long_for_its_picture_is_named_and_the_others_drawn(tiny_rn, tmp_path, capsys):
    """Issue 27 point 6: one image whose picture name the file system refuses fails alone (exit status 1)."""
    short = _photo(tmp_path / 'in/short.png', 230, 240, 1)
    long = _photo(tmp_path / 'in' / ('l' * 250 + '.png'), 230, 240, 2)  # 250 + len('_explain.png') > 255 bytes
    status = cli.main(['explain', short, long, '-o', str(tmp_path / 'maps'), '--backbone', str(tiny_rn)])
    captured = capsys.readouterr()
    assert status == 1
    assert captured.out.split() == [str(tmp_path / 'maps/short_explain.png')]
    errors = captured.err.splitlines()
    assert errors[0].startswith(f'pyiqa-maclip explain: {long}: no picture can be named')
    assert f'longer than the {os.pathconf(tmp_path, "PC_NAME_MAX")} bytes the file system takes' in errors[0]
    assert errors[-1] == 'pyiqa-maclip explain: 1 pictures written, 1 images failed'


def test_explain_builds_its_metric_as_score_does(tiny_rn, tmp_path, monkeypatch, capsys):
    """Issue 26 point 4: explain's metric comes from scorers.Recipe, with the options the command was given."""
    from pyiqa_maclip.app import scorers

    built = []
    build = scorers.Recipe.build
    monkeypatch.setattr(scorers.Recipe, 'build', lambda self, device: built.append((self, device)) or build(self, device))
    path = _photo(tmp_path / 'in/p.png', 230, 240, 0)
    assert cli.main(['explain', path, '-o', str(tmp_path / 'maps'), '--backbone', str(tiny_rn), '--precision', 'bf16']) == 0
    [(recipe, device)] = built
    assert (recipe.metric, recipe.options, device) == ('maclip', {'backbone': str(tiny_rn), 'precision': 'bf16'}, 'cpu')


def test_output_names_take_linear_time():
    """Naming counts names instead of comparing every pair: 16 times the paths take about 16 times the CPU
    (a pairwise count, 256 times). The ratio of this process's own CPU time, with a margin of 4 each way
    between the two, so another process loading the machine cannot decide it; no absolute threshold."""
    import time

    def seconds(count):
        paths = [f'/photos/{i % (count // 2)}/{i // 2}.jpg' for i in range(count)]  # every stem shared once
        best = float('inf')
        for _ in range(3):
            start = time.process_time()
            output_names(paths, Path('/out'))
            best = min(best, time.process_time() - start)
        return best

    assert seconds(40_000) / seconds(2_500) < 64


# ---------------------------------------------------------------- samples of shards, Parquet files, datasets (issue 29)

from pyiqa_maclip.app.sources import Sample  # noqa: E402


def test_sample_picture_names_are_single_safe_file_names_of_source_and_key():
    import re

    """A key may hold '/', CR/LF, bytes that are not UTF-8, markup: the name is one file name of safe characters;
    keys written alike, case twins and one stem from two folders get a hash of the identity, whatever the order."""
    shard, other = '/d/data-000.tar', '/e/data-000.tar'
    samples = [Sample(shard, '000123'), Sample('/d/photos.parquet', '7'), Sample('/d/my_dataset', '0'),
               Sample(shard, 'a/b'), Sample(shard, 'a_b'), Sample(shard, 'x\r\ny<i>&"$\\bad$\udcff'),
               Sample(shard, 'Case'), Sample(shard, 'case'), Sample(shard, 'same'), Sample(other, 'same'),
               Sample(shard, 'k' * 300), Sample(shard, '..'), Sample(shard, '')]
    names = [p.name for p in output_names(samples, Path('/out'))]
    assert names[:3] == ['data-000_000123_explain.png', 'photos_7_explain.png', 'my_dataset_0_explain.png']
    assert names[5] == 'data-000_x__y_i_____bad___explain.png'  # x CR LF y < i > & " $ \\ bad $ \xff
    assert names[11:] == ['data-000_.._explain.png', 'data-000__explain.png']
    hashed = re.compile(r'(.*)-[0-9a-f]{8}_explain\.png')
    for pair, stems in (((3, 4), ['data-000_a_b'] * 2), ((6, 7), ['data-000_Case', 'data-000_case']),
                        ((8, 9), ['data-000_same'] * 2)):
        assert [hashed.fullmatch(names[i])[1] for i in pair] == stems and names[pair[0]] != names[pair[1]]
    assert len({n.casefold() for n in names}) == len(names)
    assert all(set(n) <= set('abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-') for n in names)
    assert names[10] == f'data-000_{"k" * 100}_explain.png'
    assert [p.name for p in output_names(samples[::-1], Path('/out'))] == names[::-1]
    compressed = [Sample('/d/web-001.tar.gz', 'k'), Sample('/d/web-002.TGZ', 'k'), Sample('/d/part.arrow', '3')]
    assert [p.name for p in output_names(compressed, Path('/out'))] == [
        'web-001_k_explain.png', 'web-002_k_explain.png', 'part_3_explain.png']


def _explain(*args) -> tuple[int, str, str]:
    import contextlib
    import io

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        status = cli.main(['explain', *map(str, args)])
    return status, out.getvalue(), err.getvalue()


def test_a_shard_sample_is_drawn_with_score_s_score_and_its_map_is_in_the_report(tiny_rn, tmp_path, monkeypatch):
    """--key draws only the named samples (names from source and key, titles showing the key); the score drawn is
    the one score writes for that sample; report --explained finds the picture of a shard's row."""
    import json
    import re

    from test_sources import encoded, write_shard

    from pyiqa_maclip.app import explain

    shard = write_shard(tmp_path / 'data-000.tar', {'00.png': encoded(0, size=(230, 250)), '00.txt': b'a caption',
                                                    'k/01.jpg': encoded(1, 'JPEG', (240, 226)),
                                                    '02.png': encoded(2, size=(50, 60))})
    drawn, draw = [], explain.draw_explanation
    monkeypatch.setattr(explain, 'draw_explanation', lambda *a: drawn.append(a) or draw(*a))
    maps = tmp_path / 'maps'
    status, out, err = _explain(shard, '--key', '00', '--key', 'k/01', '--key', '00', '-o', maps,
                                '--backbone', tiny_rn)
    assert (status, err) == (0, '')
    assert out.split() == [str(maps / 'data-000_00_explain.png'), str(maps / 'data-000_k_01_explain.png')]
    assert sorted(os.listdir(maps)) == ['data-000_00_explain.png', 'data-000_k_01_explain.png']
    assert [a[3].split(': MA-CLIP')[0] for a in drawn] == ['data-000.tar, key 00', 'data-000.tar, key k/01']

    scores = tmp_path / 's.csv'
    assert cli.main(['score', str(shard), '-o', str(scores), '--backbone', str(tiny_rn), '--batch-size', '1',
                     '--no-progress']) == 0
    with open(scores, newline='', encoding='utf-8') as file:
        written = {row['key']: float(row['score']) for row in __import__('csv').DictReader(file)}
    for (_, qmap, *_), key in zip(drawn, ['00', 'k/01']):
        # The same per-view values averaged as score_images averages them (test_maps_agree_with_scores...), and
        # the CSV's 9 significant digits.
        views = torch.cat([qmap.patches.score.reshape(-1), qmap.global_view.score.reshape(1)])
        tolerance = (len(views) + 1) * UNIT_ROUNDOFF[torch.float32] * float(views.abs().max()) + 5e-9 * written[key]
        assert float(qmap.score) == pytest.approx(written[key], abs=tolerance)

    assert cli.main(['report', str(scores), '-o', str(tmp_path / 'r.html'), '--explained', str(maps)]) == 0
    text = (tmp_path / 'r.html').read_text(encoding='utf-8')
    data = json.loads(re.search(r'id="report-data">(.*?)</script>', text, re.DOTALL)[1])
    rows = {key.rpartition(', key ')[2]: str(i) for i, key in enumerate(data['keys'])}  # '<shard>, key <key>'
    assert sorted(data['qualityMaps']) == sorted([rows['00'], rows['k/01']])
    assert data['qualityMaps'][rows['00']] == 'data:image/png;base64,' + __import__('base64').b64encode(
        (maps / 'data-000_00_explain.png').read_bytes()).decode('ascii')


def test_samples_that_fail_are_named_and_the_others_drawn(tiny_rn, tmp_path):
    """A damaged member, a sample without an image and an empty shard fail alone, named by shard and key (exit
    status 1); hostile keys of a Parquet file (markup, CR/LF, a '$' formula, bytes that are not UTF-8) get
    pictures."""
    from test_sources import encoded, write_shard

    pa = pytest.importorskip('pyarrow')
    import pyarrow.parquet as pq

    shard = write_shard(tmp_path / 'bad.tar', {'ok.png': encoded(1), 'broken.jpg': encoded(0, 'JPEG')[:300],
                                               'text.txt': b'x'})
    empty = write_shard(tmp_path / 'empty.tar', {})
    status, out, err = _explain(shard, empty, '-o', tmp_path / 'maps', '--backbone', tiny_rn)
    assert status == 1 and out.split() == [str(tmp_path / 'maps/bad_ok_explain.png')]
    errors = err.splitlines()
    assert errors[0].startswith(f'pyiqa-maclip explain: {shard}, key broken: OSError')
    assert errors[1].startswith(f'pyiqa-maclip explain: {shard}, key text: ValueError: no image member')
    assert errors[2:] == [f'pyiqa-maclip explain: {empty}: ValueError: the shard holds no samples',
                          'pyiqa-maclip explain: 1 pictures written, 3 images failed']

    keys = [b'<b>a/b\r\n$\\bad$</b>', b'\xff\xfe']
    pq.write_table(pa.table({'key': keys, 'image': [encoded(3), encoded(4)]}), tmp_path / 'p.parquet')
    status, out, err = _explain(tmp_path / 'p.parquet', '-o', tmp_path / 'pq', '--backbone', tiny_rn)
    assert (status, err) == (0, '') and len(out.splitlines()) == 2
    assert sorted(os.listdir(tmp_path / 'pq')) == ['p____explain.png', 'p__b_a_b____bad___b__explain.png']


@pytest.mark.parametrize('args, words', [
    (['--key', 'nope\r\n'], r'--key nope\r\n: no sample of the inputs has this key (their keys look like 00, 01)'),
    (['--key', '00', '--image-column', 'image'], '--image-column applies to Parquet files or datasets folders'),
    (['photo.png', '--key', '00'], 'the inputs are of several kinds (image files and folders, WebDataset shards)')])
def test_mistakes_about_samples_stop_in_one_line_before_torch(tiny_rn, tmp_path, args, words):
    import subprocess
    import sys

    from test_sources import encoded, write_shard

    write_shard(tmp_path / 'data-000.tar', {'00.png': encoded(0), '01.png': encoded(1)})
    (tmp_path / 'photo.png').write_bytes(encoded(2))
    args = [str(tmp_path / a) if a == 'photo.png' else a for a in args]
    run = subprocess.run([sys.executable, '-X', 'importtime', '-m', 'pyiqa_maclip', 'explain',
                          str(tmp_path / 'data-000.tar'), *args, '-o', str(tmp_path / 'maps'), '--backbone',
                          str(tiny_rn)], capture_output=True, text=True, cwd=Path(__file__).resolve().parents[1],
                         timeout=120, check=False)
    messages = [line for line in run.stderr.splitlines() if not line.startswith('import time:')]
    assert run.returncode == 2 and len(messages) == 1 and words in messages[0], run.stderr[-2000:]
    imported = {line.split('|')[-1].strip().split('.')[0] for line in run.stderr.splitlines() if '|' in line}
    assert not {'torch', 'pyiqa'} & imported and not (tmp_path / 'maps').exists()


def test_key_is_for_samples_of_collections(tmp_path, capsys):
    path = _photo(tmp_path / 'in/p.png', 230, 240, 0)
    assert cli.main(['explain', path, '--key', 'p', '-o', str(tmp_path / 'maps')]) == 2
    assert '--key applies to samples of shards, Parquet files and datasets' in capsys.readouterr().err


def test_key_is_taken_as_score_writes_it_or_as_it_is(tmp_path):
    """score writes a key's non-UTF-8 byte as \\xNN and doubles a backslash: --key takes that text (the help's
    promise), and the key itself too (typed with the shell's $'\\xff'). No torch: only the listing runs."""
    from test_sources import encoded

    from pyiqa_maclip.app.commands.explain import _samples_and_names
    from pyiqa_maclip.errors import UserError

    pa = pytest.importorskip('pyarrow')
    import pyarrow.parquet as pq

    pq.write_table(pa.table({'key': [b'\xff', b'a\\b', b'plain'], 'image': [encoded(k) for k in range(3)]}),
                   tmp_path / 'p.parquet')

    def chosen(*keys):
        args = cli.build_parser().parse_args(['explain', str(tmp_path / 'p.parquet'), '-o', str(tmp_path / 'maps'),
                                              *(a for k in keys for a in ('--key', k))])
        return [s.key for s in _samples_and_names(args)[0]]

    assert chosen('\\xff', 'a\\\\b') == ['\udcff', 'a\\b']  # as the CSV's key column shows them
    assert chosen('\udcff', 'a\\b', 'plain') == ['\udcff', 'a\\b', 'plain']  # the keys themselves
    with pytest.raises(UserError, match=r'--key \\\\xfe: no sample'):
        chosen('\\xfe')
