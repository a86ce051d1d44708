"""Same numbers as the reference: pyiqa 0.1.16's own maclip_arch, run on the CPU.

The reference is pyiqa's module itself (identical in its math to the official
zhix000/MA-CLIP code). Only its hard-coded CUDA device is neutralised: its
``load(backbone, 'cuda')`` gets the CPU (which also makes pyiqa keep float32,
as the official code runs), and ``.cuda()`` / ``.to('cuda')`` stay on the CPU.
Both sides load the same full-size checkpoint file through their own loaders.
"""
import pytest
import torch

from conftest import random_images

from pyiqa_maclip import MACLIP

TOLERANCE = 1e-5  # absolute, float32 on the CPU


def _is_cuda(device) -> bool:
    return (isinstance(device, str) and device.startswith('cuda')) or (
        isinstance(device, torch.device) and device.type == 'cuda'
    )


@pytest.fixture
def reference_on_cpu(monkeypatch):
    """pyiqa's MACLIP class with its CUDA device redirected to the CPU, for this test only."""
    from pyiqa.archs import clip_model, maclip_arch

    monkeypatch.setattr(maclip_arch, 'load', lambda name, device: clip_model.load(name, 'cpu'))
    monkeypatch.setattr(torch.Tensor, 'cuda', lambda self, *args, **kwargs: self)
    original_to = torch.Tensor.to

    def to_without_cuda(self, *args, **kwargs):
        args = tuple('cpu' if _is_cuda(a) else a for a in args)
        if _is_cuda(kwargs.get('device')):
            kwargs['device'] = 'cpu'
        return original_to(self, *args, **kwargs)

    monkeypatch.setattr(torch.Tensor, 'to', to_without_cuda)
    return maclip_arch.MACLIP


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
