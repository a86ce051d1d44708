"""Names the metric and its command line share, importable without torch.

The command line answers ``--help`` and checks what it can before torch loads (seconds),
so everything both sides must spell alike is defined here, once.
"""
from __future__ import annotations

from typing import NamedTuple

__all__ = [
    'METRIC_NAME', 'ARCH_NAME', 'VARIANTS', 'OfficialFile', 'OFFICIAL_CHECKPOINTS', 'PRECISIONS', 'COMPONENTS',
    'LIST_SUFFIXES', 'RESIZE_MODES', 'METRIC_COLUMNS', 'EMBEDDING_COLUMN', 'WEIGHTS_DIR_ENV', 'OFFLINE_ENV', 'MIRROR_ENV', 'DEADLINE_ENV',
    'is_maclip',
]

#: The pyiqa metric name and the arch name it builds.
METRIC_NAME = 'maclip'
ARCH_NAME = 'MACLIP'

#: The paper's other backbones as named metrics, named as pyiqa names its variants
#: (``clipiqa+_vitL14_512``, ``topiq_iaa_res50``).
VARIANTS = {
    'maclip_rn101': 'RN101',
    'maclip_vitB32': 'ViT-B/32',
    'maclip_vitB16': 'ViT-B/16',
    'maclip_vitL14': 'ViT-L/14',
}

_MiB = 1 << 20


class OfficialFile(NamedTuple):
    """One of OpenAI's CLIP files: its name, the SHA-256 OpenAI publishes in its URL, and a
    bound on its size (about 25% above the real size: a longer download is stopped)."""

    filename: str
    sha256: str
    max_bytes: int


#: Every CLIP backbone pyiqa knows, by name, with its official file.
OFFICIAL_CHECKPOINTS: dict[str, OfficialFile] = {
    'RN50': OfficialFile('RN50.pt', 'afeb0e10f9e5a86da6080e35cf09123aca3b358a0c3e3b6c78a7b63bc04b6762', 310 * _MiB),
    'RN101': OfficialFile('RN101.pt', '8fa8567bab74a42d41c5915025a8e4538c3bdbe8804a470a72f30b0d94fab599', 350 * _MiB),
    'RN50x4': OfficialFile('RN50x4.pt', '7e526bd135e493cef0776de27d5f42653e6b4c8bf9e0f653bb11773263205fdd',
                           510 * _MiB),
    'RN50x16': OfficialFile('RN50x16.pt', '52378b407f34354e150460fe41077663dd5b39c54cd0bfd2b27167a4a06ec9aa',
                            800 * _MiB),
    'RN50x64': OfficialFile('RN50x64.pt', 'be1cfb55d75a9666199fb2206c106743da0f6468c9d327f3e0d0a543a9919d9c',
                            1620 * _MiB),
    'ViT-B/32': OfficialFile('ViT-B-32.pt', '40d365715913c9da98579312b702a82c18be219cc2a73407c4526f58eba950af',
                             430 * _MiB),
    'ViT-B/16': OfficialFile('ViT-B-16.pt', '5806e77cd80f8b59890b7e101eabd078d9fb84e6937f9e85e4ecb61988df416f',
                             430 * _MiB),
    'ViT-L/14': OfficialFile('ViT-L-14.pt', 'b8cca3fd41ae0c99ba7e8951adf17d267cdb84cd88be6f7c2e0eca1737a03836',
                             1120 * _MiB),
    'ViT-L/14@336px': OfficialFile('ViT-L-14-336px.pt',
                                   '3035c92b350959924f9f00213499208652fc7ea050643e8b385c2dac08641f02', 1120 * _MiB),
}

#: What the image encoder may compute in (the ``precision`` option).
PRECISIONS = ('fp32', 'bf16', 'fp16')

#: MA-CLIP's outputs per image: the score and the means of its parts over the views.
COMPONENTS = ('score', 'q_sim', 'q_mag', 'w_sim', 'w_mag')

#: The column of a scores export holding MA-CLIP's CLIP image embedding of each image's global view
#: (``--embeddings``): L2-normalised float32 values.
EMBEDDING_COLUMN = 'embedding'

#: Columns every scores export ends with: the pyiqa metric that made the numbers and its direction
#: (``True`` when lower scores are better, as pyiqa's ``lower_better``).
METRIC_COLUMNS = ('metric', 'lower_better')

#: PIL resampling filters the ``resize`` preprocessing accepts, by name.
RESIZE_MODES = ('bicubic', 'bilinear', 'lanczos', 'nearest', 'box', 'hamming')

#: A command-line PATH ending in one of these is a text file listing paths, one a line.
LIST_SUFFIXES = ('.txt', '.lst', '.list')

#: Environment variables (see :mod:`pyiqa_maclip.weights`).
WEIGHTS_DIR_ENV = 'PYIQA_MACLIP_WEIGHTS_DIR'
OFFLINE_ENV = 'PYIQA_MACLIP_OFFLINE'
MIRROR_ENV = 'PYIQA_MACLIP_MIRROR'
DEADLINE_ENV = 'PYIQA_MACLIP_DOWNLOAD_DEADLINE'


def is_maclip(metric_opts) -> bool:
    """Whether a pyiqa metric configuration's ``metric_opts`` build MA-CLIP (this package's arch)."""
    return metric_opts.get('type') == ARCH_NAME
