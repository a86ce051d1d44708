"""Shared fixtures: CLIP checkpoints made here with pyiqa's own CLIP class (no network)."""
from __future__ import annotations

from pathlib import Path

import pytest

from pyiqa_maclip.testing import make_clip, save_state_dict, save_torchscript


@pytest.fixture(scope='session')
def checkpoints(tmp_path_factory):
    """``checkpoints(architecture, fmt='state_dict'|'torchscript', seed=0)`` -> path, cached per session."""
    root = tmp_path_factory.mktemp('clip_checkpoints')
    made: dict[tuple, Path] = {}
    models = {}  # (architecture, seed) -> the model both formats are saved from

    def get(architecture: str, fmt: str = 'state_dict', seed: int = 0) -> Path:
        key = (architecture, fmt, seed)
        if key not in made:
            if (architecture, seed) not in models:
                models[architecture, seed] = make_clip(architecture, seed)
            model = models[architecture, seed]
            name = f"{architecture.replace('/', '-')}-{seed}.{'pt' if fmt == 'torchscript' else 'pth'}"
            save = save_torchscript if fmt == 'torchscript' else save_state_dict
            made[key] = save(model, root / name)
        return made[key]

    return get


@pytest.fixture(scope='session')
def tiny_rn(checkpoints) -> Path:
    return checkpoints('tiny-RN')


@pytest.fixture(scope='session')
def tiny_metric(tiny_rn):
    """The arch on a tiny ResNet CLIP, float32 on the CPU."""
    from pyiqa_maclip import MACLIP

    return MACLIP(backbone=str(tiny_rn)).eval()
