"""The plugin through pyiqa.create_metric, as upstream's tests/test_metric_general.py treats every metric,
and as a loss inside a training model (checkpoints, dtype and device moves, DistributedDataParallel)."""
import pytest
import torch
import torch.distributed as dist
from PIL import Image
from pyiqa.utils.img_util import imread2tensor
from torch import nn

import pyiqa
from rounding import UNIT_ROUNDOFF, rounding_bound

from pyiqa_maclip import MACLIP
from pyiqa_maclip.testing import random_images


@pytest.fixture(scope='module')
def metric(tiny_rn):
    import pyiqa_maclip

    pyiqa_maclip.register()  # what importing the plugin after pyiqa does: its score range, its variants
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
    assert from_file.shape == (1, 1) and torch.isfinite(from_file).all()
    assert torch.equal(from_file, metric(imread2tensor(str(path), rgb=True)[None]))  # the same computation


def test_forward_on_a_batch_as_upstream(metric):
    """Upstream's test_forward: rand (2, 3, 224, 224), called with a second tensor as for every metric."""
    x, y = torch.rand(2, 3, 224, 224), torch.rand(2, 3, 224, 224)
    score = metric(x, y)
    assert score.shape == (2, 1) and torch.isfinite(score).all()
    torch.testing.assert_close(score, metric(x), rtol=0, atol=0)  # NR: the second tensor is not used


def test_scores_have_the_shape_of_pyiqas_own_nr_metrics(metric, monkeypatch):
    """(B, 1), as pyiqa's CLIP-IQA gives: its arch run on a random tiny CLIP (no weights to download)."""
    from pyiqa.archs import clipiqa_arch

    from pyiqa_maclip.testing import make_clip

    monkeypatch.setattr(clipiqa_arch, 'load', lambda *args, **kwargs: make_clip('tiny-RN'))
    clipiqa = clipiqa_arch.CLIPIQA(model_type='clipiqa', backbone='RN50', pretrained=False).eval()
    with torch.no_grad():
        assert clipiqa(torch.rand(3, 3, 224, 224)).shape == (3, 1)
    assert metric(torch.rand(3, 3, 224, 224)).shape == (3, 1)
    parts = metric(torch.rand(3, 3, 224, 224), return_components=True)
    assert all(part.shape == (3, 1) for part in parts)


@pytest.mark.parametrize('reduction', ['mean', 'sum', 'none'])
def test_as_loss_with_loss_weight_and_reduction_as_pyiqas_metrics(tiny_rn, reduction):
    """pyiqa's weight_reduce_loss needs a 2-D result: weighted and reduced as for CLIP-IQA, MUSIQ, TOP-IQ."""
    x = random_images(3, 224, 240, seed=4)
    weight = torch.tensor([[1.0], [0.0], [2.0]])
    plain = pyiqa.create_metric('maclip', backbone=str(tiny_rn), device='cpu')(x)
    loss_fn = pyiqa.create_metric('maclip', as_loss=True, loss_weight=weight, loss_reduction=reduction,
                                  backbone=str(tiny_rn), device='cpu')
    loss = loss_fn(x.clone().requires_grad_())
    weighted = plain * weight
    # pyiqa's rule: 'mean' divides by the sum of the weights (times the score's width, 1).
    expected = {'mean': weighted.sum() / weight.sum(), 'sum': weighted.sum(), 'none': weighted}[reduction]
    # The loss's scores come from the autograd path, the plain ones from inference: each within its
    # rounding bound b of the float64 score, so they differ by up to 2 b, weighted and reduced alike;
    # the weighting and the sum of 3 round a few more times (4 u of the result).
    spread = 2 * rounding_bound(loss_fn.net, x, fields=['score']).bound.score.float()[:, None] * weight.abs()
    tolerance = {'mean': spread.sum() / weight.sum(), 'sum': spread.sum(), 'none': spread}[reduction]
    tolerance = tolerance + 4 * UNIT_ROUNDOFF[torch.float32] * expected.abs()
    assert ((loss.detach() - expected).abs() <= tolerance).all()


@pytest.mark.parametrize('option, text, value', [('box_lam', '0.3', 0.3), ('alpha', ' 2 ', 2.0), ('base_norm', '-1e-1', -0.1),
                                                  ('patch_size', '160', 160), ('pos_embedding', 'True', True)])
def test_options_given_as_text_by_pyiqas_scripts(tiny_rn, option, text, value):
    """pyiqa's --extra_metric_opts passes text; numbers in it are taken (issue 20, point 5)."""
    from_text = pyiqa.create_metric('maclip', backbone=str(tiny_rn), device='cpu', **{option: text})
    assert getattr(from_text.net, option) == value
    x = random_images(1, 224, 240, seed=5)
    expected = pyiqa.create_metric('maclip', backbone=str(tiny_rn), device='cpu', **{option: value})(x)
    torch.testing.assert_close(from_text(x), expected, rtol=0, atol=0)


@pytest.mark.parametrize('option, text, words', [('box_lam', '0.3x', "box_lam must be a real number in [-10, 10], got '0.3x'"),
                                                 ('box_lam', 'nan', "got 'nan'"), ('alpha', '', "got ''"),
                                                 ('patch_size', '160.5', "patch_size must be a positive integer, got '160.5'"),
                                                 ('pos_embedding', 'yes', "pos_embedding must be True or False, got 'yes'")])
def test_other_text_is_refused_with_the_same_message(tiny_rn, option, text, words):
    with pytest.raises(ValueError) as raised:
        MACLIP(backbone=str(tiny_rn), **{option: text})
    assert str(raised.value) == words or words in str(raised.value)


def test_gradient_through_as_loss_as_upstream(tiny_rn):
    """Upstream's test_gradient_backward: randn input (outside [0, 1]), as_loss=True: one finite loss, a
    finite gradient that reaches the input."""
    x = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(0)).requires_grad_()
    loss_fn = pyiqa.create_metric('maclip', as_loss=True, backbone=str(tiny_rn), device='cpu')
    loss = loss_fn(x)
    loss.backward()
    assert loss.dim() == 0 and torch.isfinite(loss)
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


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
    assert model.quality.net.state_dict() == {} and list(model.quality.net.parameters()) == []
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
