"""The Ray Data stage (pyiqa_maclip.ray.Scorer) and ``score --engine ray``.

Fast tests check the decoder, the stage without Ray, the plan and the manifest; tests marked
``ray`` (and ``slow``) start Ray: in this process (``ray.init(num_cpus=2)``), through the command
line (a local instance per run), and through ``ray start --head`` + ``--ray-address``. Scores are
compared with the local engine's on the same images: both lie within float32 rounding of the
float64 computation (``pyiqa_maclip.testing.rounding_bound``, docs/collections.md "batch size").
"""
from __future__ import annotations

import contextlib
import gzip
import io
import json
import os
import signal
import socket
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from rounding import assert_within_rounding, rounding_bound

from pyiqa_maclip.app.decode_bytes import decode_bytes
from pyiqa_maclip.app.images import as_float, read_image
from pyiqa_maclip.app.ray_run import resources
from pyiqa_maclip.app.ray_shards import MANIFEST, Manifest, expected_rows, plan_shards
from pyiqa_maclip.errors import UserError
from pyiqa_maclip.names import COMPONENTS

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, 'PYTHONPATH': os.pathsep.join([str(ROOT), os.environ.get('PYTHONPATH', '')]),
       'RAY_AUTH_MODE': 'disabled', 'RAY_USAGE_STATS_ENABLED': '0'}


def png(seed: int, size=(40, 52)) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (*size, 3), dtype=np.uint8)).save(buffer, 'PNG')
    return buffer.getvalue()


def write_tar(path: Path, samples: dict[str, bytes]) -> Path:
    """A WebDataset shard: ``<key>.png`` and ``<key>.txt`` per sample."""
    with tarfile.open(path, 'w') as tar:
        for key, data in samples.items():
            for name, member in ((f'{key}.png', data), (f'{key}.txt', b'caption')):
                info = tarfile.TarInfo(name)
                info.size = len(member)
                tar.addfile(info, io.BytesIO(member))
    return path


def write_parquet(path: Path, images: list[bytes]) -> Path:
    """Hugging Face's layout: an ``image`` struct {bytes, path}, no key column (keys: row numbers)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({'image': [{'bytes': b, 'path': f'{i}.png'} for i, b in enumerate(images)]}), path)
    return path


def cli(*args, env=None, timeout=600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, '-m', 'pyiqa_maclip', 'score', *map(str, args)], env=env or ENV,
                          capture_output=True, text=True, timeout=timeout)


# ---------------------------------------------------------------- without Ray


def test_bytes_decode_as_files_do(tmp_path):
    rgb = np.random.default_rng(0).integers(0, 256, (20, 30, 3), dtype=np.uint8)
    deep = np.random.default_rng(1).integers(0, 65536, (20, 30), dtype=np.uint16)
    rotated = Image.fromarray(rgb)
    exif = rotated.getexif()
    exif[0x0112] = 6  # displayed turned a quarter
    files = {'rgb.png': (Image.fromarray(rgb), {}), 'deep.png': (Image.fromarray(deep), {}),
             'rotated.jpg': (rotated, {'exif': exif})}
    for name, (image, options) in files.items():
        image.save(tmp_path / name, **options)
        expected = read_image(tmp_path / name)
        actual = decode_bytes((tmp_path / name).read_bytes())
        assert actual.dtype == expected.dtype and torch.equal(actual, expected), name
    assert decode_bytes((tmp_path / 'rotated.jpg').read_bytes()).shape == (3, 30, 20)
    data = (tmp_path / 'rgb.png').read_bytes()
    for bad, reason in ((b'', 'empty'), (b'junk', 'cannot identify'), (data[:len(data) // 2], 'truncated')):
        with pytest.raises((ValueError, OSError), match=reason):
            decode_bytes(bad)


def test_stage_scores_every_image_kind_and_reports_bad_ones(tiny_rn, tiny_metric):
    from pyiqa_maclip.app.scorers import Recipe
    from pyiqa_maclip.ray import Scorer

    stage = Scorer('maclip', backbone=str(tiny_rn), pixel_budget=3000)  # 40 x 52 = 2080 pixels: one at a time
    assert stage.fingerprint == Recipe('maclip', {'backbone': str(tiny_rn)}).fingerprint
    array = np.random.default_rng(7).integers(0, 256, (40, 52, 3), dtype=np.uint8)
    batch = pd.DataFrame({'image': [png(0), b'junk', {'bytes': png(1), 'path': '1.png'}, array, None],
                          'key': list('abcde')})
    out = stage(batch)
    assert list(out.columns) == ['image', 'key', *COMPONENTS, 'error'] and list(out['key']) == list('abcde')
    assert out['error'][[0, 2, 3]].isna().all() and out['score'][[1, 4]].isna().all()
    assert 'cannot identify' in out['error'][1] and 'no image' in out['error'][4]
    images = [decode_bytes(png(0)), decode_bytes(png(1)), torch.from_numpy(array).permute(2, 0, 1)]
    # Scored one at a time here and in score_images alike: the same numbers, bit for bit.
    expected = [tiny_metric.score_images([image]).score.item() for image in images]
    assert out['score'][[0, 2, 3]].tolist() == expected
    with pytest.raises(UserError, match='already has column'):
        stage(out)
    with pytest.raises(UserError, match="no column 'jpg'"):
        Scorer('maclip', backbone=str(tiny_rn), image_column='jpg')(batch)


def test_resources_leave_a_cpu_to_reading():
    assert resources({'CPU': 2.0}, None, 1.0, None) == {'size': 1, 'num_cpus': 1.0, 'num_gpus': 0}
    assert resources({'CPU': 16.0, 'GPU': 4.0}, None, 1.0, None) == {'size': 4, 'num_cpus': 1.0, 'num_gpus': 1}
    assert resources({'CPU': 16.0, 'GPU': 1.0}, None, 1.0, 0.5)['size'] == 2
    with pytest.raises(UserError, match='leave none to read'):
        resources({'CPU': 2.0}, 2, 1.0, None)
    with pytest.raises(UserError, match='has 0 GPU'):
        resources({'CPU': 2.0}, None, 1.0, 1.0)


def test_plan_and_manifest(tmp_path):
    write_tar(tmp_path / 'a.tar', {'x': png(0), 'y': png(1)})
    write_parquet(tmp_path / 'b.parquet', [png(2)] * 3)
    (tmp_path / 'c').mkdir()
    (tmp_path / 'c' / 'z.png').write_bytes(png(3))
    shards = plan_shards([tmp_path / 'a.tar', tmp_path / 'b.parquet', tmp_path / 'c'])
    assert [(s.kind, s.output_name, expected_rows(s)) for s in shards] == [
        ('webdataset', 'a.parquet', 2), ('parquet', 'b.parquet', 3), ('files', 'c.parquet', 1)]
    (tmp_path / 'other').mkdir()
    write_tar(tmp_path / 'other' / 'a.tar', {})
    with pytest.raises(UserError, match='would both be written to a.parquet'):
        plan_shards([tmp_path / 'a.tar', tmp_path / 'other' / 'a.tar'])
    with pytest.raises(UserError, match='reads WebDataset shards'):
        plan_shards([tmp_path / 'c' / 'z.png'])

    out = tmp_path / 'out'
    out.mkdir()
    (out / 'a.parquet').write_bytes(b'the user\'s')
    manifest = Manifest(out, {'metric': 'maclip', 'options': {'box_lam': 0.5}})
    with pytest.raises(UserError, match='in the way'):
        manifest.check_room(shards)
    (out / 'a.parquet').unlink()
    import pyarrow as pa

    manifest.write_shard(shards[0], pa.table({'key': ['x']}), failed=0)
    assert manifest.finished(shards[0]) and not manifest.finished(shards[1])
    assert sorted(p.name for p in out.iterdir()) == ['_manifest.json', 'a.parquet']  # no temporary file left
    with pytest.raises(UserError, match=r'other settings: options\.box_lam was 0\.5, now 0\.3'):
        Manifest(out, {'metric': 'maclip', 'options': {'box_lam': 0.3}})
    assert not Manifest(out, {'metric': 'maclip', 'options': {'box_lam': 0.3}}, overwrite=True).finished(shards[0])
    (out / 'a.parquet').write_bytes(b'changed')
    assert not Manifest(out, {'metric': 'maclip', 'options': {'box_lam': 0.5}}).finished(shards[0])


def test_gzip_tars_are_planned_and_a_plain_tar_named_as_gzip_is_refused(tmp_path):
    """Ray decompresses a .tar.gz or .tgz by its name: a gzip one is a shard (its rows counted through the
    gzip stream); a plain tar under such a name is refused in one line before Ray starts."""
    tar = write_tar(tmp_path / 'a.tar', {'x': png(0), 'y': png(1)})
    (tmp_path / 'b.tgz').write_bytes(gzip.compress(tar.read_bytes()))
    (tmp_path / 'c.tar.gz').write_bytes(tar.read_bytes())
    (tmp_path / 'd.tar').write_bytes(gzip.compress(tar.read_bytes()))  # tarfile in Ray tells gzip by content
    shards = plan_shards([tmp_path / 'b.tgz', tmp_path / 'd.tar'])
    assert [(s.kind, s.output_name, expected_rows(s)) for s in shards] == [
        ('webdataset', 'b.parquet', 2), ('webdataset', 'd.parquet', 2)]
    with pytest.raises(UserError, match=r'c\.tar\.gz is named as gzip-compressed but holds plain tar data'):
        plan_shards([tmp_path / 'c.tar.gz'])
    (tmp_path / 'saved').mkdir()  # a datasets folder (save_to_disk) is no folder of images to Ray
    for name in ('state.json', 'dataset_info.json'):
        (tmp_path / 'saved' / name).write_text('{}')
    with pytest.raises(UserError, match=r'saved is a datasets folder: --engine ray reads WebDataset shards'):
        plan_shards([tmp_path / 'saved'])


def test_without_ray_one_line_before_torch(tmp_path):
    code = ('import importlib.util, sys\n'
            'find = importlib.util.find_spec\n'
            "importlib.util.find_spec = lambda name, *a: None if name == 'ray' else find(name, *a)\n"
            'from pyiqa_maclip.app import cli\n'
            "status = cli.main(['score', '--engine', 'ray', sys.argv[1], '-o', sys.argv[2]])\n"
            "assert 'torch' not in sys.modules, 'torch was imported'\n"
            'sys.exit(status)\n')
    run = subprocess.run([sys.executable, '-c', code, str(tmp_path), str(tmp_path / 'out')], env=ENV,
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 2, run.stderr
    assert run.stderr == ("pyiqa-maclip score: error: --engine ray needs Ray, which is not installed: "
                          "pip install 'pyiqa-maclip[ray]'\n")


def test_ray_options_need_the_ray_engine(tmp_path):
    run = cli(tmp_path, '-o', tmp_path / 'scores.csv', '--workers', 2)
    assert run.returncode == 2 and run.stderr.strip().endswith('--workers: options of --engine ray'), run.stderr


# ---------------------------------------------------------------- with Ray


@pytest.fixture(scope='module')
def sources(tmp_path_factory):
    """Images as files (for the local engine) and the same bytes in 2 tars, a Parquet file and a folder."""
    root = tmp_path_factory.mktemp('ray_sources')
    files = root / 'files'
    files.mkdir()
    data = {f'img{i}': png(i, (40 + 8 * i, 52)) for i in range(7)}
    for key, image in data.items():
        (files / f'{key}.png').write_bytes(image)
    write_tar(root / 's0.tar', {k: data[k] for k in ('img0', 'img1')})
    tar = write_tar(root / 's1.tar', {'img2': data['img2'], 'bad': b'not an image'})
    (root / 's1.tar.gz').write_bytes(gzip.compress(tar.read_bytes()))  # Ray reads it decompressed
    tar.unlink()
    write_parquet(root / 'p.parquet', [data['img3'], data['img4']])
    (root / 'folder').mkdir()
    for key in ('img5', 'img6'):
        (root / 'folder' / f'{key}.png').write_bytes(data[key])
    return root


def local_scores(files: Path, tiny_rn: Path, output: Path) -> dict[str, dict[str, float]]:
    """The local engine's scores of the image files, by file name."""
    run = cli(files, '-o', output, '--backbone', tiny_rn, '--no-progress')
    assert run.returncode == 0, run.stderr
    return {Path(p).name: row for p, row in pd.read_csv(output).set_index('path').to_dict('index').items()}


def rows_of(out: Path) -> pd.DataFrame:
    return pd.concat([pd.read_parquet(f) for f in sorted(out.glob('*.parquet'))], ignore_index=True)


@pytest.mark.slow
@pytest.mark.ray
def test_stage_on_a_local_ray(sources, tiny_rn, tiny_metric):
    import ray

    from pyiqa_maclip.ray import Scorer

    images = [(sources / 'files' / f'img{i}.png').read_bytes() for i in range(4)] + [b'broken']
    ray.init(address='local', num_cpus=2, include_dashboard=False, logging_level='WARNING')
    try:
        scored = ray.data.from_items([{'id': i, 'image': b} for i, b in enumerate(images)]).map_batches(
            Scorer, fn_constructor_kwargs={'metric': 'maclip', 'backbone': str(tiny_rn)}, batch_format='pandas',
            batch_size=2, compute=ray.data.ActorPoolStrategy(size=1), num_cpus=1).to_pandas()
    finally:
        ray.shutdown()
    scored = scored.sort_values('id')
    assert scored['error'].iloc[:4].isna().all() and 'cannot identify' in scored['error'].iloc[4]
    rounding = rounding_bound(tiny_metric, [as_float(decode_bytes(b)) for b in images[:4]])
    for field in COMPONENTS:
        assert_within_rounding(scored[field].iloc[:4].to_numpy(), rounding, field)


@pytest.mark.slow
@pytest.mark.ray
def test_engine_ray_equals_the_local_engine_and_resumes(sources, tiny_rn, tiny_metric, tmp_path):
    out = tmp_path / 'out'
    inputs = [sources / 's0.tar', sources / 's1.tar.gz', sources / 'p.parquet', sources / 'folder']
    run = cli('--engine', 'ray', *inputs, '-o', out, '--backbone', tiny_rn, '--batch-size', 2, '--no-progress')
    assert run.returncode == 1, run.stderr  # one sample is broken
    assert '4 shards scored in this run, 0 done before' in run.stdout
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [MANIFEST, '_manifest.lock', 's0.parquet', 's1.parquet', 'p.parquet', 'folder.parquet'])
    rows = rows_of(out)
    folder = str(sources / 'folder')
    assert sorted(zip(rows['shard'], rows['key'])) == sorted([
        (str(sources / 's0.tar'), 'img0'), (str(sources / 's0.tar'), 'img1'), (str(sources / 's1.tar.gz'), 'bad'),
        (str(sources / 's1.tar.gz'), 'img2'), (str(sources / 'p.parquet'), '0'), (str(sources / 'p.parquet'), '1'),
        (folder, f'{folder}/img5.png'), (folder, f'{folder}/img6.png')])
    failed = rows[rows['error'].notna()]
    assert list(failed['key']) == ['bad'] and failed['score'].isna().all()
    assert set(rows['metric']) == {'maclip'} and set(rows['lower_better']) == {False}

    local = local_scores(sources / 'files', tiny_rn, tmp_path / 'local.csv')
    name_of = {'0': 'img3.png', '1': 'img4.png'}
    scored = rows[rows['error'].isna()].assign(file=lambda r: [name_of.get(k, Path(k).name.removesuffix('.png') + '.png')
                                                               for k in r['key']]).sort_values('file')
    names = list(scored['file'])
    assert names == [f'img{i}.png' for i in range(7)]
    rounding = rounding_bound(tiny_metric, [as_float(read_image(sources / 'files' / n)) for n in names])
    for field in COMPONENTS:  # the local engine's and Ray's numbers, each within rounding of float64
        assert_within_rounding(scored[field].to_numpy(), rounding, field)
        assert_within_rounding([local[n][field] for n in names], rounding, field)

    again = cli('--engine', 'ray', *inputs, '-o', out, '--backbone', tiny_rn, '--no-progress')
    assert again.returncode == 1 and '0 shards scored in this run, 4 done before' in again.stdout, again.stderr
    other = cli('--engine', 'ray', *inputs, '-o', out, '--backbone', tiny_rn, '--option', 'box_lam=0.3')
    assert other.returncode == 2 and 'other settings: options.box_lam was 0.5, now 0.3' in other.stderr


# On PYTHONPATH: every process that imports pyiqa_maclip.arch (the Ray workers) scores a batch a second
# slower; the others (Ray's own) import nothing more.
SLOW_WORKERS = """
import importlib.abc, importlib.machinery, os, sys, time

class SlowScoring(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name != 'pyiqa_maclip.arch':
            return None
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        load = spec.loader.exec_module
        def exec_module(module):
            load(module)
            score_images = module.MACLIP.score_images
            module.MACLIP.score_images = lambda self, images: time.sleep(1) or score_images(self, images)
        spec.loader.exec_module = exec_module
        return spec

if os.environ.get('PYIQA_MACLIP_TEST_SLOW'):
    sys.meta_path.insert(0, SlowScoring())
"""


def finished_shards(out: Path) -> int:
    with contextlib.suppress(FileNotFoundError, ValueError):
        return sum(1 for e in json.loads((out / MANIFEST).read_text())['shards'].values() if e['content'])
    return 0


@pytest.mark.slow
@pytest.mark.ray
def test_killed_run_resumes_with_the_shards_left(tiny_rn, tmp_path):
    hook = tmp_path / 'hook'
    hook.mkdir()
    (hook / 'sitecustomize.py').write_text(SLOW_WORKERS)
    shards = [write_tar(tmp_path / f's{i}.tar', {f'k{i}': png(i)}) for i in range(6)]
    out = tmp_path / 'out'
    env = {**ENV, 'PYIQA_MACLIP_TEST_SLOW': '1', 'PYTHONPATH': f'{hook}{os.pathsep}{ENV["PYTHONPATH"]}'}
    run = subprocess.Popen([sys.executable, '-m', 'pyiqa_maclip', 'score', '--engine', 'ray', *map(str, shards), '-o',
                            str(out), '--backbone', str(tiny_rn), '--batch-size', '1', '--no-progress'], env=env,
                           start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 300
    while finished_shards(out) < 2:
        assert run.poll() is None, run.stderr.read().decode()
        assert time.monotonic() < deadline, 'no shard was finished'
        time.sleep(0.05)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(run.pid, signal.SIGKILL)  # the driver and the local Ray it started
    run.wait()
    run.stderr.close()
    done = finished_shards(out)
    assert 2 <= done < 6
    named = {e['output'] for e in json.loads((out / MANIFEST).read_text())['shards'].values()}
    assert {p.name for p in out.glob('*.parquet')} <= named  # a shard file is named before it is written
    again = cli('--engine', 'ray', *shards, '-o', out, '--backbone', tiny_rn, '--no-progress')
    assert again.returncode == 0, again.stderr
    assert f'{6 - done} shards scored in this run, {done} done before' in again.stdout
    assert sorted(rows_of(out)['key']) == [f'k{i}' for i in range(6)]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(('127.0.0.1', 0))
        return probe.getsockname()[1]


@pytest.mark.slow
@pytest.mark.ray
def test_a_cluster_started_with_ray_start(sources, tiny_rn, tmp_path):
    port = free_port()
    head = subprocess.Popen([str(Path(sys.executable).with_name('ray')), 'start', '--head', f'--port={port}',
                             '--num-cpus=2', '--include-dashboard=false', '--disable-usage-stats', '--block'],
                            env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        run = cli('--engine', 'ray', '--ray-address', f'127.0.0.1:{port}', sources / 's0.tar', '-o', tmp_path / 'out',
                  '--backbone', tiny_rn, '--no-progress')
        assert run.returncode == 0, run.stderr
        assert sorted(pd.read_parquet(tmp_path / 'out' / 's0.parquet')['key']) == ['img0', 'img1']
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.table({'picture': [b'x']}), tmp_path / 'odd.parquet')
        odd = cli('--engine', 'ray', '--ray-address', f'127.0.0.1:{port}', tmp_path / 'odd.parquet', '-o',
                  tmp_path / 'out', '--backbone', tiny_rn, '--no-progress')
        # A mistake met in a Ray task is one line, as any other.
        assert odd.returncode == 2 and odd.stderr.splitlines()[-1] == (
            f"pyiqa-maclip score: error: {tmp_path}/odd.parquet has no column 'image' (it has picture); name the "
            'image column with --image-column'), odd.stderr  # the local engine's words
    finally:
        head.send_signal(signal.SIGTERM)  # --block: the head stops what it started
        try:
            head.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(head.pid, signal.SIGKILL)
            head.wait()


def test_ray_parquet_rows_refuse_null_and_repeated_keys_as_the_local_engine_does(tmp_path):
    """One key, one row, in both engines: a key column with an empty value or a value twice is refused in one
    line (the local engine's words), not keyed by row number or merged; without a key column, row numbers."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from pyiqa_maclip.app.ray_run import _parquet_rows

    images = [png(i) for i in range(3)]
    for name, ids, words in (('null.parquet', ['a', None, 'c'], "the key column 'id' has no value in row 1"),
                             ('twice.parquet', ['a', 'b', 'a'], 'the key a names two rows')):
        pq.write_table(pa.table({'id': ids, 'image': images}), tmp_path / name, row_group_size=2)
        with pytest.raises(UserError, match=words):
            list(_parquet_rows({'path': [str(tmp_path / name)]}, None, 'id'))
    rows = pd.concat(_parquet_rows({'path': [str(tmp_path / 'twice.parquet')]}, None, None))
    assert rows['key'].tolist() == ['0', '1', '2'] and rows['image'].tolist() == images
