"""Same numbers as the reference: pyiqa 0.1.16's own maclip_arch, run on the CPU.

The reference is pyiqa's module itself (identical in its math to the official
zhix000/MA-CLIP code), with only its CUDA device redirected (see reference_cpu.py).
Both sides load the same full-size weights through their own loaders. Both are float32
computations of the same scores: each lies within float32 rounding of this project's metric
computed in float64 (rounding.rounding_bound in tests/rounding.py, a model of rounding that holds for any
kernel, so on any CPU).
"""
import pytest
import torch

from reference_cpu import reference_class
from rounding import assert_within_rounding, rounding_bound

from pyiqa_maclip import MACLIP
from pyiqa_maclip.testing import random_images

# Heights and widths: exactly one patch, and sizes that leave an uncovered margin (of 76 and 33, of
# 33 and 1 pixels), portrait and landscape: 2, 2 and 3 views, in chunks of 5 that straddle images.
SIZES = [(224, 224), (300, 257), (257, 353)]


@pytest.mark.slow  # full-size models in float32 and float64: ~15 s each
@pytest.mark.parametrize('architecture', ['RN50', 'ViT-B/32'])
def test_scores_equal_reference(architecture, checkpoints):
    """Images of different sizes scored together, in chunks that straddle images, give each image
    the reference's own score (computed one image at a time, as it must)."""
    # The same weights: as a TorchScript archive for pyiqa's loader (all it reads), as a state dict for
    # ours (which runs no archive but OpenAI's).
    reference = reference_class()(backbone=str(checkpoints(architecture, 'torchscript'))).eval()
    ours = MACLIP(backbone=str(checkpoints(architecture)), chunk_size=5).eval()
    images = [random_images(1, height, width, seed=seed)[0] for seed, (height, width) in enumerate(SIZES)]
    rounding = rounding_bound(ours, images, fields=['score'])
    with torch.no_grad():
        expected = torch.tensor([reference(image[None]).item() for image in images])
        got = ours.score_images(images).score
    assert_within_rounding(expected, rounding)
    assert_within_rounding(got, rounding)
    assert expected.max() - expected.min() > 100 * rounding.bound.score.max()  # the images really score differently
