"""The shared image reader (issue 10, point 6): real range, orientation, strictness."""
import io
import multiprocessing
import os
import signal

import numpy as np
import pytest
import torch
from PIL import Image, ImageFile

from pyiqa_maclip.app.images import as_float, read_image


def save(tmp_path, name, image: Image.Image, **options):
    path = tmp_path / name
    image.save(path, **options)
    return path


def test_sixteen_bit_images_are_scaled_not_clipped(tmp_path):
    flat = save(tmp_path, 'g16.png', Image.fromarray(np.full((6, 7), 20000, np.uint16)))
    assert Image.open(flat).mode == 'I;16'  # what PIL makes of it (pyiqa's .convert('RGB') gives 255)
    image = read_image(flat)
    assert image.dtype == torch.float32 and image.shape == (1, 6, 7)
    # 20000 / 65535 divided in float32 and the float64 quotient rounded to float32: both correctly
    # rounded, at most one float32 ulp apart.
    torch.testing.assert_close(image, torch.full((1, 6, 7), 20000 / 65535), rtol=2 ** -23, atol=0)
    white = read_image(save(tmp_path, 'w16.png', Image.fromarray(np.full((6, 7), 65535, np.uint16))))
    assert float(white.max()) == 1.0


def test_float_images_in_range_are_kept_and_out_of_range_refused(tmp_path):
    values = np.linspace(0, 1, 42, dtype=np.float32).reshape(6, 7)
    image = read_image(save(tmp_path, 'f.tiff', Image.fromarray(values)))
    np.testing.assert_allclose(image[0].numpy(), values, rtol=0, atol=0)
    with pytest.raises(ValueError, match=r'expected values in \[0, 1\]'):
        read_image(save(tmp_path, 'hdr.tiff', Image.fromarray(values * 4)))


def test_eight_bit_images_stay_uint8_rgb(tmp_path):
    gray = read_image(save(tmp_path, 'g.png', Image.fromarray(np.full((5, 4), 7, np.uint8))))
    assert gray.dtype == torch.uint8 and gray.shape == (3, 5, 4) and int(gray.max()) == 7
    assert float(as_float(gray).max()) == pytest.approx(7 / 255, rel=2 ** -24)  # one float32 rounding


def test_exif_orientation_is_applied(tmp_path):
    pixels = np.zeros((4, 6, 3), np.uint8)
    pixels[0, 0] = 255  # a white top-left corner on a 6-wide, 4-high image
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    path = save(tmp_path, 'r.jpg', Image.fromarray(pixels), exif=exif, quality=100)
    image = read_image(path)
    assert image.shape == (3, 6, 4)  # displayed upright: 4 wide, 6 high
    assert int(image[:, 0, -1].min()) > 200  # the corner is now top-right


def test_truncated_files_fail_even_when_pyiqa_allowed_them(tmp_path, monkeypatch):
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(buffer, 'PNG')
    path = tmp_path / 'cut.png'
    path.write_bytes(buffer.getvalue()[:900])
    monkeypatch.setattr(ImageFile, 'LOAD_TRUNCATED_IMAGES', True)  # as pyiqa's AVA dataset module does
    with pytest.raises(OSError, match='truncated'):
        read_image(path)
    assert ImageFile.LOAD_TRUNCATED_IMAGES is True  # restored


def test_resize_for_the_benchmark(tmp_path):
    path = save(tmp_path, 'a.png', Image.fromarray(np.full((30, 40, 3), 128, np.uint8)))
    assert read_image(path, resize=(12, 20)).shape == (3, 12, 20)
    deep = save(tmp_path, 'd.png', Image.fromarray(np.full((30, 40), 30000, np.uint16)))
    resized = read_image(deep, resize=(12, 20), resize_mode='lanczos')
    assert resized.shape == (1, 12, 20)
    # A constant stays constant: the weights of each output pixel sum to 1. Lanczos-3 downscaling 2.5x
    # mixes at most 2 * 3 * 2.5 + 1 = 16 taps per axis, |weights| summing to at most 1.3: float32 sums
    # along both axes round by at most 2 * 16 u * 1.3 of the value (Higham's bound).
    value = 30000 / 65535
    torch.testing.assert_close(resized, torch.full((1, 12, 20), value), rtol=0, atol=2 * 16 * 2 ** -24 * 1.3 * value)


def test_special_files_are_refused_without_blocking(tmp_path):
    import os

    os.mkfifo(tmp_path / 'fifo.png')
    with pytest.raises(ValueError, match='not a regular file'):
        read_image(tmp_path / 'fifo.png')
    with pytest.raises(FileNotFoundError):
        read_image(tmp_path / 'missing.png')
    (tmp_path / 'empty.png').write_bytes(b'')
    with pytest.raises(ValueError, match='empty file'):
        read_image(tmp_path / 'empty.png')


@pytest.mark.skipif(multiprocessing.get_start_method() != 'fork', reason='the workers must inherit the patch')
def test_a_decoding_process_that_dies_is_replaced_and_its_image_reported(tmp_path, monkeypatch):
    """Issue 27, point 2: a worker killed on an image (as the out-of-memory killer would) is noticed at
    once: that image is an error naming the signal, a fresh worker decodes the rest, nothing hangs."""
    from pyiqa_maclip.app import images as decoding

    paths = []
    for i in range(7):
        paths.append(str(tmp_path / (f'{i}.png' if i not in (2, 5) else f'{i}_killer.png')))
        Image.new('RGB', (20 + i, 16), (i, 0, 0)).save(paths[-1])
    read = decoding.read_image

    def deadly(path, *args, **kwargs):
        if path.endswith('killer.png'):
            os.kill(os.getpid(), signal.SIGKILL)
        return read(path, *args, **kwargs)

    monkeypatch.setattr(decoding, 'read_image', deadly)
    items = [item for batch in decoding.decoded_batches(paths, batch_size=2, num_workers=2) for item in batch]
    assert [item.index for item in items] == list(range(7))
    for item in items:
        if item.index in (2, 5):
            assert item.image is None and item.error == 'the decoding process died (signal 9)'
        else:
            assert item.error is None and item.image.shape == (3, 16, 20 + item.index)
            assert int(item.image[0, 0, 0]) == item.index


def test_decoding_processes_end_when_the_main_process_is_killed():
    """kill -9 of a run: its decoding processes end too (each waited for ever, some 450 MB apiece, on a pipe
    whose other end it held itself). A worker forked later (a replacement) holds the earlier ones' pipes too."""
    import subprocess
    import sys
    import time

    code = ('import os, signal, time\nfrom pyiqa_maclip.app.workers import WorkerPool\n'
            'pool = WorkerPool(2, os.getpid)\nfor k in range(2): pool.submit(k)\n'
            'first = pool.result(0)\npool.result(1)\nos.kill(first, signal.SIGKILL)\ntime.sleep(0.5)\n'
            'pool.submit(2)\npool.result(2)\n'  # the dead worker is replaced by one forked now
            'print(flush=True)\ntime.sleep(600)\n')
    run = subprocess.Popen([sys.executable, '-c', code], stdout=subprocess.PIPE, text=True)
    try:
        run.stdout.readline()
        with open(f'/proc/{run.pid}/task/{run.pid}/children') as file:
            workers = [int(pid) for pid in file.read().split()]
    finally:
        run.kill()
        run.wait()
    assert len(workers) == 2, workers

    def alive(pid: int) -> bool:
        try:
            with open(f'/proc/{pid}/stat') as file:
                return file.read().rsplit(')', 1)[1].split()[0] != 'Z'
        except FileNotFoundError:
            return False

    deadline = time.monotonic() + 10
    while any(map(alive, workers)) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(map(alive, workers))
