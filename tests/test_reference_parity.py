"""Same numbers as the reference: pyiqa 0.1.16's own maclip_arch, run on the CPU.

The reference is pyiqa's module itself (identical in its math to the official
zhix000/MA-CLIP code), with only its CUDA device redirected (see reference_cpu.py).
Both sides load the same full-size checkpoint file through their own loaders.
"""
import pytest
import torch

import reference_cpu
from pyiqa_maclip.testing import random_images

from pyiqa_maclip import MACLIP

# Absolute, float32 on the CPU: issue 13's bound for the float32 path. Measured on the AMD host with
# these random weights: at most 1.2e-7 (two float32 steps at scores near 0.8), RN50 and ViT-B/32.
TOLERANCE = 1e-6


@pytest.fixture
def reference_on_cpu():
    with reference_cpu.reference_on_cpu() as reference_class:
        yield reference_class


# Heights and widths: exact multiples of the stride plus the patch, and sizes that leave an
# uncovered margin, portrait and landscape.
SIZES = [(224, 224), (300, 257), (384, 512), (481, 353)]


@pytest.mark.parametrize('architecture', ['RN50', 'ViT-B/32'])
def test_scores_equal_reference(architecture, checkpoints, reference_on_cpu):
    path = str(checkpoints(architecture))
    reference = reference_on_cpu(backbone=path).eval()
    ours = MACLIP(backbone=path).eval()
    for seed, (height, width) in enumerate(SIZES):
        image = random_images(1, height, width, seed=seed)
        with torch.no_grad():
            expected = reference(image).item()
            got = ours(image)
        assert got.shape == (1,)
        assert abs(got.item() - expected) <= TOLERANCE, (architecture, height, width, got.item(), expected)


def test_batch_equals_reference_one_by_one(checkpoints, reference_on_cpu):
    """A batch of different images gives each image the reference's own score."""
    path = str(checkpoints('RN50'))
    reference = reference_on_cpu(backbone=path).eval()
    ours = MACLIP(backbone=path, chunk_size=5).eval()
    images = torch.cat([random_images(1, 300, 400, seed=s) for s in range(3)])
    with torch.no_grad():
        expected = torch.tensor([reference(image[None]).item() for image in images])
        got = ours(images)
    assert torch.allclose(got, expected, rtol=0, atol=TOLERANCE), (got, expected)
    assert expected.max() - expected.min() > 100 * TOLERANCE  # the images really score differently
