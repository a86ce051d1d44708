"""Files written through safe_io look like files the user wrote (issue 10, point 5)."""
import os
import stat

import pytest

from pyiqa_maclip.safe_io import atomic_file, current_umask


@pytest.mark.parametrize('umask, expected', [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_atomic_file_honours_the_umask(tmp_path, umask, expected):
    previous = os.umask(umask)
    try:
        assert current_umask() == umask
        with atomic_file(tmp_path / 'out.csv') as f:
            f.write('a\n')
    finally:
        os.umask(previous)
    assert stat.S_IMODE((tmp_path / 'out.csv').stat().st_mode) == expected


def test_atomic_file_leaves_nothing_when_the_block_fails(tmp_path):
    (tmp_path / 'out.csv').write_text('old')
    with pytest.raises(RuntimeError):
        with atomic_file(tmp_path / 'out.csv') as f:
            f.write('new')
            raise RuntimeError('boom')
    assert (tmp_path / 'out.csv').read_text() == 'old'
    assert sorted(p.name for p in tmp_path.iterdir()) == ['out.csv']
