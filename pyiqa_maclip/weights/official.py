"""OpenAI's CLIP files: their names, checksums and size bounds, and where they are cached."""
from __future__ import annotations

import difflib
import hashlib
import os
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from .environment import mirror_base, weights_dir

__all__ = ['OFFICIAL_BASE_URL', 'Checkpoint', 'OFFICIAL_CHECKPOINTS', 'official_checkpoint', 'did_you_mean',
           'search_dirs', 'sha256sum', 'find_cached']

OFFICIAL_BASE_URL = 'https://openaipublic.azureedge.net/clip/models'
_MiB = 1 << 20
_CHUNK = 1 << 20


@dataclass(frozen=True)
class Checkpoint:
    """One official CLIP file: its name on disk, the SHA-256 OpenAI publishes in its URL,
    and an upper bound of its size (a longer download is stopped)."""

    filename: str
    sha256: str
    max_bytes: int = 2048 * _MiB

    @property
    def url(self) -> str:
        """OpenAI's URL, or the same layout under ``$PYIQA_MACLIP_MIRROR`` if set."""
        return f'{mirror_base() or OFFICIAL_BASE_URL}/{self.sha256}/{self.filename}'

    @property
    def url_label(self) -> str:
        return 'mirror URL' if mirror_base() else 'official URL'


# Size caps are about 25% above the sizes of OpenAI's files (244 MiB for RN50 ... 1.26 GiB for RN50x64).
#: Every CLIP backbone pyiqa knows, with the official file's checksum.
OFFICIAL_CHECKPOINTS: dict[str, Checkpoint] = {
    'RN50': Checkpoint('RN50.pt', 'afeb0e10f9e5a86da6080e35cf09123aca3b358a0c3e3b6c78a7b63bc04b6762', 310 * _MiB),
    'RN101': Checkpoint('RN101.pt', '8fa8567bab74a42d41c5915025a8e4538c3bdbe8804a470a72f30b0d94fab599', 350 * _MiB),
    'RN50x4': Checkpoint('RN50x4.pt', '7e526bd135e493cef0776de27d5f42653e6b4c8bf9e0f653bb11773263205fdd',
                         510 * _MiB),
    'RN50x16': Checkpoint('RN50x16.pt', '52378b407f34354e150460fe41077663dd5b39c54cd0bfd2b27167a4a06ec9aa',
                          800 * _MiB),
    'RN50x64': Checkpoint('RN50x64.pt', 'be1cfb55d75a9666199fb2206c106743da0f6468c9d327f3e0d0a543a9919d9c',
                          1620 * _MiB),
    'ViT-B/32': Checkpoint('ViT-B-32.pt', '40d365715913c9da98579312b702a82c18be219cc2a73407c4526f58eba950af',
                           430 * _MiB),
    'ViT-B/16': Checkpoint('ViT-B-16.pt', '5806e77cd80f8b59890b7e101eabd078d9fb84e6937f9e85e4ecb61988df416f',
                           430 * _MiB),
    'ViT-L/14': Checkpoint('ViT-L-14.pt', 'b8cca3fd41ae0c99ba7e8951adf17d267cdb84cd88be6f7c2e0eca1737a03836',
                           1120 * _MiB),
    'ViT-L/14@336px': Checkpoint(
        'ViT-L-14-336px.pt', '3035c92b350959924f9f00213499208652fc7ea050643e8b385c2dac08641f02', 1120 * _MiB
    ),
}


def search_dirs() -> list[Path]:
    """Where official files are looked for, in order; downloads go to the first."""
    own = weights_dir()
    return ([own] if own is not None else []) + [Path(torch.hub.get_dir()) / 'clip']


#: SHA-256 of files already hashed in this process, by (device, inode, size, mtime, ctime).
_HASHED: dict[tuple, str] = {}


def _identity(f) -> tuple:
    status = os.fstat(f.fileno())
    return status.st_dev, status.st_ino, status.st_size, status.st_mtime_ns, status.st_ctime_ns


def sha256sum(path: str | os.PathLike) -> str:
    """SHA-256 of a file's contents. One run checks a checkpoint in several places (fingerprint,
    cache, loader); a file unchanged since this process last hashed it is not read again. Any
    write changes its ctime, which no user can set back, so a changed file is always re-read;
    a file changed in the last 2 s is not remembered (coarse file-system clocks)."""
    with open(path, 'rb') as f:
        before = _identity(f)
        if before in _HASHED:
            return _HASHED[before]
        settled = time.time_ns() - before[-1] > 2_000_000_000
        digest = hashlib.sha256()
        for block in iter(lambda: f.read(_CHUNK), b''):
            digest.update(block)
        if settled and _identity(f) == before:  # not written to while being read
            if len(_HASHED) >= 64:
                _HASHED.pop(next(iter(_HASHED)))
            _HASHED[before] = digest.hexdigest()
    return digest.hexdigest()


def official_checkpoint(name: str) -> Checkpoint:
    try:
        return OFFICIAL_CHECKPOINTS[name]
    except KeyError:
        raise ValueError(
            f'unknown CLIP backbone {name!r}{did_you_mean(name)}: expected one of {", ".join(OFFICIAL_CHECKPOINTS)}, '
            'or the path of a local checkpoint file'
        ) from None


def did_you_mean(name: str) -> str:
    same_letters = [known for known in OFFICIAL_CHECKPOINTS if known.lower() == name.strip().lower()]
    close = same_letters or difflib.get_close_matches(name, OFFICIAL_CHECKPOINTS, n=1, cutoff=0.6)
    return f' (did you mean {close[0]}?)' if close else ''


def find_cached(name: str, directories: list[Path] | None = None) -> tuple[Path | None, list[Path]]:
    """The first intact file for ``name`` in ``directories`` (default :func:`search_dirs`),
    and any corrupted ones (wrong SHA-256) met on the way."""
    checkpoint = official_checkpoint(name)
    corrupted = []
    for directory in search_dirs() if directories is None else directories:
        path = directory / checkpoint.filename
        if path.is_file():
            if sha256sum(path) == checkpoint.sha256:
                return path, corrupted
            corrupted.append(path)
    return None, corrupted
