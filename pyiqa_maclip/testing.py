"""Random CLIP checkpoints and images for tests and benchmarks (no network needed).

Checkpoints are built with pyiqa's own CLIP class and saved in the two formats users
have: OpenAI's TorchScript archive (what the official files are, and all pyiqa's own
loader reads) and a plain state dict.
"""
from __future__ import annotations

import warnings
from pathlib import Path

import torch
from pyiqa.archs.clip_model import CLIP

__all__ = ['ARCHITECTURES', 'make_clip', 'save_torchscript', 'save_state_dict', 'random_images']

# embed_dim, image_resolution, vision_layers, vision_width, vision_patch_size,
# context_length, vocab_size, transformer_width, transformer_heads, transformer_layers.
# build_model infers text heads as width // 64, so the text width is a multiple of 64.
ARCHITECTURES = {
    'RN50': (1024, 224, (3, 4, 6, 3), 64, None, 77, 49408, 512, 8, 12),
    'ViT-B/32': (512, 224, 12, 768, 32, 77, 49408, 512, 8, 12),
    'tiny-RN': (64, 224, (1, 1, 1, 1), 8, None, 77, 49408, 64, 1, 1),
    'tiny-ViT': (64, 224, 1, 64, 32, 77, 49408, 64, 1, 1),
}


def make_clip(architecture: str, seed: int = 0) -> CLIP:
    """A random float32 CLIP of the given shape whose image features depend on the image.

    pyiqa's initialisation zeroes the last BatchNorm of every residual block and
    PyTorch's default convolution init shrinks the signal layer by layer, which
    leaves image features almost constant. Here convolutions get He init, every
    BatchNorm a random affine map, and the running statistics are calibrated on
    random images (as training would), so features vary with the input.
    """
    torch.manual_seed(seed)
    model = CLIP(*ARCHITECTURES[architecture]).float()
    with torch.no_grad():
        for module in model.visual.modules():
            if isinstance(module, torch.nn.Conv2d):
                torch.nn.init.kaiming_normal_(module.weight, nonlinearity='relu')
            elif isinstance(module, torch.nn.BatchNorm2d):
                module.weight.uniform_(0.5, 1.5)
                module.bias.normal_(0, 0.1)
                module.momentum = None  # running statistics = plain average over the calibration batch
        model.visual.train()
        model.visual(random_images(8, 224, 224, seed=seed))
    return model.eval()


def save_torchscript(model: CLIP, path: Path) -> Path:
    """Save as a TorchScript archive holding every parameter, like OpenAI's files."""
    tokens = torch.zeros(1, model.context_length, dtype=torch.long)
    tokens[0, :2] = torch.tensor([49406, 49407])
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        torch.jit.trace_module(model, {'encode_text': tokens}).save(str(path))
    return path


def save_state_dict(model: CLIP, path: Path) -> Path:
    torch.save(model.state_dict(), path)
    return path


def random_images(batch: int, height: int, width: int, channels: int = 3, seed: int = 0) -> torch.Tensor:
    """Smooth random images in [0, 1]: structure at several scales, as photos have."""
    generator = torch.Generator().manual_seed(seed)
    coarse = torch.rand(batch, channels, max(1, height // 16), max(1, width // 16), generator=generator)
    image = torch.nn.functional.interpolate(coarse, size=(height, width), mode='bilinear', align_corners=False)
    image = image + 0.1 * torch.rand(batch, channels, height, width, generator=generator)
    return image.clamp(0, 1)
