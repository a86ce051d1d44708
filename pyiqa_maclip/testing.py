"""Small random CLIP checkpoints and test images, for tests, benchmarks and a first run without
OpenAI's weights (no network needed).

Checkpoints are built with pyiqa's own CLIP class and saved in the two formats users have:
OpenAI's TorchScript archive (what the official files are, and all pyiqa's own loader reads) and
a plain state dict. :func:`save_stand_in` writes the file ``pyiqa-maclip download --stand-in``
makes: random weights of a real architecture, whose scores mean nothing. Sample photos come from
pyiqa's wheel. Importing this module loads neither torch nor pyiqa (the command line checks
architecture names with it); its functions do.
"""
from __future__ import annotations

import math
import os
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

from .safe_io import atomic_file

if TYPE_CHECKING:
    import torch
    from pyiqa.archs.clip_model import CLIP

__all__ = ['ARCHITECTURES', 'make_clip', 'save_torchscript', 'save_state_dict', 'save_stand_in', 'random_images',
           'graded_photos']

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
    import torch
    from pyiqa.archs.clip_model import CLIP

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
    import torch

    tokens = torch.zeros(1, model.context_length, dtype=torch.long)
    tokens[0, :2] = torch.tensor([49406, 49407])
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        torch.jit.trace_module(model, {'encode_text': tokens}).save(str(path))
    return path


def save_state_dict(model: CLIP, path: Path) -> Path:
    import torch

    torch.save(model.state_dict(), path)
    return path


def save_stand_in(path: str | os.PathLike, architecture: str = 'RN50') -> Path:
    """Write random weights of ``architecture`` (a key of :data:`ARCHITECTURES`) as a state dict
    in float16, as OpenAI's files hold them: a checkpoint to try the tools with when the official
    one cannot be had. Scores computed with it are meaningless. The file appears complete or not
    at all; an existing ``path`` is refused (``FileExistsError``)."""
    import torch
    from pyiqa.archs.clip_model import convert_weights

    path = Path(path)
    if path.exists():
        raise FileExistsError(f'{path} exists: delete it or choose another name')
    model = make_clip(architecture)
    convert_weights(model)
    with atomic_file(path, 'wb') as file:
        torch.save(model.state_dict(), file)
    return path


def random_images(batch: int, height: int, width: int, channels: int = 3, seed: int = 0) -> torch.Tensor:
    """Smooth random images in [0, 1]: structure at several scales, as photos have."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    coarse = torch.rand(batch, channels, max(1, height // 16), max(1, width // 16), generator=generator)
    image = torch.nn.functional.interpolate(coarse, size=(height, width), mode='bilinear', align_corners=False)
    image = image + 0.1 * torch.rand(batch, channels, height, width, generator=generator)
    return image.clamp(0, 1)


#: pyiqa's sample photos, shipped in its wheel next to the ``pyiqa`` package.
PHOTO_DIRS = ('ResultsCalibra/ref_dir', 'tests/test_efficiency_img_dir')
#: (name, kind, amount): Gaussian blur sigma in pixels, Gaussian noise std on [0, 1] values.
DEGRADATIONS = [('clean', None, 0), ('blur1.5', 'blur', 1.5), ('blur3', 'blur', 3.0),
                ('noise0.03', 'noise', 0.03), ('noise0.08', 'noise', 0.08)]


def graded_photos(count: int | None = None, size: tuple[int, int] = (512, 384)) -> list[tuple[str, torch.Tensor]]:
    """pyiqa's sample photos (the first ``count``, all by default) resized to ``size`` (W, H), each
    clean and at 2 blur and 2 noise levels: ``(photo/degradation, (3, H, W) tensor)`` pairs."""
    import sysconfig

    import torch
    from PIL import Image
    from torchvision.transforms.functional import gaussian_blur, to_tensor

    site = Path(sysconfig.get_paths()['purelib'])
    files = sorted(f for d in PHOTO_DIRS for f in (site / d).glob('*') if f.suffix.lower() in ('.bmp', '.jpg'))
    generator = torch.Generator().manual_seed(0)
    graded = []
    for file in files[:count]:
        photo = to_tensor(Image.open(file).convert('RGB').resize(size, Image.BICUBIC))
        for name, kind, amount in DEGRADATIONS:
            if kind == 'blur':
                image = gaussian_blur(photo, kernel_size=2 * math.ceil(3 * amount) + 1, sigma=amount)
            elif kind == 'noise':
                image = (photo + amount * torch.randn(photo.shape, generator=generator)).clamp(0, 1)
            else:
                image = photo
            graded.append((f'{file.stem}/{name}', image))
    return graded
