"""pyiqa's CLIP image encoder, prepared for inference: the same function, less work.

MA-CLIP needs only the image feature of each view, the pooled (first) token of a ResNet
CLIP's attention pool. Three things make that cheaper without changing the result beyond
float rounding (features within ~2e-6 relative, scores within 1e-6):

- BatchNorm folded into the convolutions (:func:`fold_batchnorm`), done once;
- the attention pool computes the pooled token's attention only (:func:`pooled_token`):
  pyiqa's ``AttentionPool2d`` also projects and attends for the H*W spatial tokens, which
  CLIP then discards (OpenAI's own CLIP code queries ``x[:1]`` for the same reason), and with
  a single query the keys and values need not be projected token by token;
- the convolutional trunk runs in oneDNN's blocked layout on the CPU in float32 inference
  (:func:`uses_blocked_layout`): activations stay in the layout oneDNN's convolutions use
  between layers instead of being reordered at every convolution, which is what the
  ``channels_last`` layout alone leaves on AMD hosts. Elsewhere (GPUs, autocast, gradients,
  float64) the trunk runs ``channels_last``.

Vision transformers are run as pyiqa defines them.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from pyiqa.archs.clip_model import ModifiedResNet

__all__ = ['prepare', 'fold_batchnorm', 'pooled_token', 'uses_blocked_layout', 'image_features']


def fold_batchnorm(module: nn.Module) -> nn.Module:
    """Fold every eval-mode BatchNorm into the convolution that feeds it, in place.

    pyiqa's CLIP ResNets name each pair ``convK``/``bnK`` (stem and bottlenecks) or put
    them one after the other in a Sequential (the downsample branch). The folded
    convolution computes the same function (to float rounding, ~1e-7) in one pass.
    """
    for parent in module.modules():
        children = dict(parent.named_children())
        pairs = [(f'conv{k}', f'bn{k}') for k in range(1, 4)]
        pairs += [(a, b) for a, b in zip(children, list(children)[1:]) if isinstance(parent, nn.Sequential)]
        for conv_name, bn_name in pairs:
            conv, bn = children.get(conv_name), children.get(bn_name)
            if isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d):
                setattr(parent, conv_name, fuse_conv_bn_eval(conv, bn))
                setattr(parent, bn_name, nn.Identity())
    return module


def prepare(visual: nn.Module) -> nn.Module:
    """Freeze ``visual`` for inference, in place: no gradients for its weights, eval mode,
    BatchNorm folded, weights ``channels_last``."""
    visual.requires_grad_(False)
    fold_batchnorm(visual.eval())
    return visual.to(memory_format=torch.channels_last)


def pooled_token(attnpool: nn.Module, x: torch.Tensor, pos_embedding: bool = False) -> torch.Tensor:
    """``attnpool(x, pos_embedding=pos_embedding)`` of pyiqa's ``AttentionPool2d`` for (N, C, H, W)
    feature maps, (N, D): the attention of the pooled (mean) token's query only.

    With one query q per head, no token needs projecting: q . (W_k t + b_k) = (W_k^T q) . t + a
    constant that softmax cancels, and sum_j a_j (W_v t_j + b_v) = W_v (sum_j a_j t_j) + b_v as the
    attention weights a_j sum to 1. That is ~10x fewer operations than projecting every token.
    Computed in float32 whatever the encoder's type or autocast: the attention logits of large
    feature maps overflow float16 once they are materialised (pyiqa's fused attention keeps them
    in float32 internally). Returns float32, or float64 for a float64 encoder.
    """
    with torch.autocast(x.device.type, enabled=False):
        return _pooled_token(attnpool, x.to(torch.promote_types(x.dtype, torch.float32)), pos_embedding)


def _pooled_token(attnpool: nn.Module, x: torch.Tensor, pos_embedding: bool) -> torch.Tensor:
    def weight(linear: nn.Linear) -> torch.Tensor:
        return linear.weight.to(x.dtype)

    count = x.shape[0]
    tokens = x.flatten(2).transpose(1, 2)  # (N, H*W, C)
    tokens = torch.cat([tokens.mean(dim=1, keepdim=True), tokens], dim=1)
    if pos_embedding:  # pyiqa's resize of the positional embedding to the token count
        table = attnpool.positional_embedding.to(x.dtype)[None, None]
        table = F.interpolate(table, size=(tokens.size(1), tokens.size(2)), mode='bicubic')[0, 0]
        tokens = tokens + table
    heads, width = attnpool.num_heads, tokens.shape[-1]
    depth = width // heads
    query = F.linear(tokens[:, 0], weight(attnpool.q_proj), attnpool.q_proj.bias.to(x.dtype)) * depth ** -0.5
    query = query.view(count, heads, depth).transpose(0, 1)  # (heads, N, depth)
    key_query = torch.bmm(query, weight(attnpool.k_proj).view(heads, depth, width))  # (heads, N, C)
    attention = torch.bmm(key_query.transpose(0, 1), tokens.transpose(1, 2)).softmax(dim=-1)  # (N, heads, L)
    mixed = torch.bmm(attention, tokens).transpose(0, 1)  # (heads, N, C)
    values = torch.bmm(mixed, weight(attnpool.v_proj).view(heads, depth, width).transpose(1, 2))  # (heads, N, depth)
    values = values.transpose(0, 1).reshape(count, width) + attnpool.v_proj.bias.to(x.dtype)
    return F.linear(values, weight(attnpool.c_proj), attnpool.c_proj.bias.to(x.dtype))


def _resnet_trunk(visual: ModifiedResNet, x: torch.Tensor) -> torch.Tensor:
    """``ModifiedResNet.forward`` up to the attention pool (stem, then the four stages)."""
    for conv, bn in ((visual.conv1, visual.bn1), (visual.conv2, visual.bn2), (visual.conv3, visual.bn3)):
        x = visual.relu(bn(conv(x)))
    x = visual.avgpool(x)
    return visual.layer4(visual.layer3(visual.layer2(visual.layer1(x))))


def uses_blocked_layout(visual: nn.Module, x: torch.Tensor) -> bool:
    """Whether :func:`image_features` runs the trunk in oneDNN's blocked layout: float32
    inference on a CPU with oneDNN enabled, outside autocast, no gradient wanted for ``x``."""
    return (
        x.device.type == 'cpu' and x.dtype == torch.float32
        and visual.conv1.weight.dtype == torch.float32
        and torch.backends.mkldnn.is_available() and torch.backends.mkldnn.enabled
        and not torch.is_autocast_enabled('cpu')
        and not (torch.is_grad_enabled() and x.requires_grad)
    )


def image_features(visual: nn.Module, views: torch.Tensor, pos_embedding: bool = False) -> torch.Tensor:
    """Raw CLIP image features (N, D) of normalised (N, 3, p, p) views, as
    ``visual(views, pos_embedding=pos_embedding)`` computes them once the views have the
    encoder's weight type."""
    views = views.to(visual.conv1.weight.dtype)
    if not isinstance(visual, ModifiedResNet):
        return visual(views, pos_embedding=pos_embedding)
    if uses_blocked_layout(visual, views):
        feature_maps = _resnet_trunk(visual, views.contiguous().to_mkldnn()).to_dense()
    else:
        feature_maps = _resnet_trunk(visual, views.contiguous(memory_format=torch.channels_last))
    return pooled_token(visual.attnpool, feature_maps, pos_embedding)
