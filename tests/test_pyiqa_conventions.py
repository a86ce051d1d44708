"""The plugin through pyiqa.create_metric, as upstream's tests/test_metric_general.py treats every metric,
and as a loss inside a training model (checkpoints, dtype and device moves, DistributedDataParallel)."""
import pytest
import torch
import torch.distributed as dist
from PIL import Image
from pyiqa.utils.img_util import imread2tensor
from torch import nn

import pyiqa
from pyiqa_maclip import MACLIP
from pyiqa_maclip.testing import assert_within_rounding, random_images, rounding_bound


@pytest.fixture(scope='module')
def metric(tiny_rn):
    return pyiqa.create_metric('maclip', backbone=str(tiny_rn), device='cpu')


def test_properties(metric):
    assert metric.lower_better is False
    assert metric.metric_mode == 'NR'
    assert metric.score_range == '0, ~1.5'
    assert isinstance(metric.net, MACLIP)


def test_forward_on_a_file_path(metric, tmp_path):
    """pyiqa reads the file (imread2tensor, RGB in [0, 1]); the score is that tensor's."""
    array = (random_images(1, 240, 320, seed=1)[0].permute(1, 2, 0) * 255).round().byte().numpy()
    path = tmp_path / 'photo.png'
    Image.fromarray(array).save(path)
    from_file = metric(str(path))
    assert from_file.shape == (1,) and torch.isfinite(from_file).all()
    assert torch.equal(from_file, metric(imread2tensor(str(path), rgb=True)[None]))  # the same computation


def test_forward_on_a_batch_as_upstream(metric):
    """Upstream's test_forward: rand (2, 3, 224, 224), called with a second tensor as for every metric."""
    x, y = torch.rand(2, 3, 224, 224), torch.rand(2, 3, 224, 224)
    score = metric(x, y)
    assert score.shape == (2,) and torch.isfinite(score).all()
    torch.testing.assert_close(score, metric(x), rtol=0, atol=0)  # NR: the second tensor is not used


def test_batch_equals_single_images(metric):
    """Both within float32 rounding of the float64 computation (batches round otherwise)."""
    images = torch.cat([random_images(1, 250, 300, seed=s) for s in range(3)])
    rounding = rounding_bound(metric.net, images, fields=['score'])
    batch = metric(images)
    single = torch.cat([metric(image[None]) for image in images])
    assert_within_rounding(batch, rounding)
    assert_within_rounding(single, rounding)
    assert batch.max() - batch.min() > 100 * rounding.bound.score.max()  # the images score differently


def test_gradient_through_as_loss_as_upstream(tiny_rn):
    """Upstream's test_gradient_backward: randn input (outside [0, 1]), as_loss=True, no NaN gradient."""
    x = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(0)).requires_grad_()
    loss_fn = pyiqa.create_metric('maclip', as_loss=True, backbone=str(tiny_rn), device='cpu')
    score = loss_fn(x)
    score.sum().backward()
    assert torch.isfinite(score) and torch.isnan(x.grad).sum() == 0 and x.grad.abs().sum() > 0


class _Enhancer(nn.Module):
    """A trainable image-to-image model with MA-CLIP as its (negated) loss."""

    def __init__(self, backbone: str):
        super().__init__()
        self.head = nn.Conv2d(3, 3, 3, padding=1)
        self.quality = pyiqa.create_metric('maclip', as_loss=True, backbone=backbone, device='cpu')

    def forward(self, x):
        return -self.quality(torch.sigmoid(self.head(x)))


def test_a_model_with_the_loss_saves_no_clip_weights(tiny_rn, tmp_path):
    torch.manual_seed(0)
    model = _Enhancer(str(tiny_rn))
    state = model.state_dict()
    assert set(state) == {'head.weight', 'head.bias', 'quality.dummy_param'}  # the last one is pyiqa's, empty
    path = tmp_path / 'checkpoint.pth'
    torch.save(state, path)
    assert path.stat().st_size < 10_000
    torch.manual_seed(1)
    restored = _Enhancer(str(tiny_rn))
    restored.load_state_dict(torch.load(path, weights_only=True), strict=True)
    x = random_images(2, 224, 240, seed=2)
    torch.testing.assert_close(restored(x), model(x), rtol=0, atol=0)


@pytest.mark.parametrize('dtype', [torch.float64, torch.float16, torch.bfloat16])
def test_a_model_with_the_loss_converts_dtype(tiny_rn, dtype):
    model = _Enhancer(str(tiny_rn)).to(dtype)
    assert model.quality.net.visual.conv1.weight.dtype == dtype  # the hidden encoder follows
    image = random_images(1, 224, 224, seed=3).to(dtype).requires_grad_()
    loss = model.quality(image)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(image.grad).all() and image.grad.abs().sum() > 0


@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs CUDA')
def test_a_model_with_the_loss_moves_to_cuda(tiny_rn):
    model = _Enhancer(str(tiny_rn)).cuda()
    assert model.quality.net.visual.conv1.weight.device.type == 'cuda'
    model(random_images(1, 224, 224).cuda()).backward()


def test_distributed_data_parallel_gloo(tiny_rn, tmp_path):
    """DDP on the CPU (gloo, world size 1), two training steps. pyiqa's wrapper holds an empty
    ``dummy_param`` that no loss uses, which DDP refuses from the second step on:
    ``requires_grad_(False)`` on the loss (the README's recipe) leaves DDP the model's own parameters."""
    torch.manual_seed(0)
    model = _Enhancer(str(tiny_rn))
    model.quality.requires_grad_(False)
    dist.init_process_group('gloo', init_method=f'file://{tmp_path / "store"}', rank=0, world_size=1)
    try:
        ddp = nn.parallel.DistributedDataParallel(model)
        optimiser = torch.optim.SGD(ddp.parameters(), lr=0.1)
        losses = []
        for step in range(2):
            optimiser.zero_grad()
            loss = ddp(random_images(2, 224, 240, seed=step))
            loss.backward()
            optimiser.step()
            losses.append(loss.item())
        assert all(torch.isfinite(torch.tensor(losses)))
        assert set(ddp.state_dict()) == {'module.head.weight', 'module.head.bias', 'module.quality.dummy_param'}
    finally:
        dist.destroy_process_group()
