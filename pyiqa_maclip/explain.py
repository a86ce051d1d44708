"""``pyiqa-maclip explain``: where in an image MA-CLIP finds quality, and which cue decided.

Each 224x224 view gets its own Q_sim, Q_mag, fusion weights and fused score
(:meth:`pyiqa_maclip.MACLIP.quality_maps`). A per-pixel map averages the values of
the patches that cover each pixel; pixels no patch covers (the right and bottom
margins that do not fill a whole stride, as in the paper's ``nn.Unfold``) are left
blank. Colour scales are fixed (:data:`SCALES`), so maps of different images compare.
"""
from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

import numpy as np

__all__ = ['SCALES', 'pixel_map', 'draw_explanation', 'explain_command']

#: Fixed colour scales (low, high) of the maps: Q_sim and the weight lie in (0, 1); Q_mag and the
#: fused score are >= 0 and in practice below about 1.5 (see the README's "Score range").
SCALES = {'score': (0.0, 1.5), 'q_sim': (0.0, 1.0), 'q_mag': (0.0, 1.5), 'w_mag': (0.0, 1.0)}
_MAX_SIDE = 800  # pixels of the drawn maps' longer side


def pixel_map(values: np.ndarray, boxes: np.ndarray, height: int, width: int, scale: float = 1.0) -> np.ndarray:
    """Per-pixel mean of the patch ``values`` (rows, cols) over their ``boxes`` (rows, cols, 4) of
    (top, left, bottom, right) in an image of ``height`` x ``width``, sampled at ``scale``; NaN where
    no patch covers a pixel."""
    shape = (max(1, round(height * scale)), max(1, round(width * scale)))
    total, count = np.zeros(shape), np.zeros(shape)
    for value, (top, left, bottom, right) in zip(values.reshape(-1), boxes.reshape(-1, 4)):
        rows = slice(int(round(top * scale)), max(int(round(bottom * scale)), int(round(top * scale)) + 1))
        cols = slice(int(round(left * scale)), max(int(round(right * scale)), int(round(left * scale)) + 1))
        total[rows, cols] += value
        count[rows, cols] += 1
    with np.errstate(invalid='ignore', divide='ignore'):
        return np.where(count > 0, total / count, np.nan)


def draw_explanation(image: np.ndarray, qmap, title: str, output: Path) -> Path:
    """The photo, the fused-score map over it, and the Q_sim, Q_mag and magnitude-weight maps.

    ``image`` is (H, W, 3) in [0, 1]; ``qmap`` a :class:`~pyiqa_maclip.arch.QualityMap`.
    """
    from matplotlib.figure import Figure

    height, width = image.shape[:2]
    scale = min(1.0, _MAX_SIDE / max(height, width))
    boxes = qmap.boxes.cpu().numpy()
    maps = {name: pixel_map(getattr(qmap.patches, name).cpu().numpy(), boxes, height, width, scale)
            for name in SCALES}
    shown = image[::max(1, round(1 / scale)), ::max(1, round(1 / scale))]
    extent = (0, width, height, 0)
    figure = Figure(figsize=(18, 4.2 * max(0.6, min(1.6, height / width))), dpi=100, layout='constrained')
    panels = figure.subplots(1, 5)
    panels[0].imshow(shown, extent=extent)
    panels[0].set_title('image')
    captions = {'score': 'fused score Q (over the image)', 'q_sim': 'Q_sim (prompt similarity)',
                'q_mag': 'Q_mag (feature magnitude)', 'w_mag': 'weight of Q_mag in the fusion'}
    for axes, name in zip(panels[1:], SCALES):
        low, high = SCALES[name]
        if name == 'score':
            axes.imshow(shown, extent=extent)
        drawn = axes.imshow(maps[name], extent=extent, cmap='viridis' if name != 'w_mag' else 'coolwarm',
                            vmin=low, vmax=high, alpha=0.6 if name == 'score' else 1.0, interpolation='nearest')
        axes.set_title(captions[name], fontsize=10)
        figure.colorbar(drawn, ax=axes, fraction=0.046, pad=0.02)
    for axes in panels:
        axes.set_xticks([])
        axes.set_yticks([])
    figure.suptitle(title)
    output.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(output)
    return output


def _output_names(images: Sequence[str], folder: Path) -> list[Path]:
    """``<stem>_explain.png`` per image, numbered where two images share a stem."""
    stems = [Path(p).stem for p in images]
    return [folder / (f'{stem}_explain.png' if stems.count(stem) == 1 else f'{stem}_{i}_explain.png')
            for i, stem in enumerate(stems)]


def explain_command(args: argparse.Namespace) -> int:
    """``pyiqa-maclip explain IMAGE [IMAGE ...] -o FOLDER [--backbone] [--device] [--precision]``."""
    import torch

    from .arch import MACLIP
    from .safe_io import command_error
    from .scoring.command import device_mistake
    from .scoring.decoding import as_float, read_image

    def fail(message: object) -> int:
        return command_error('explain', message)

    if mistake := device_mistake(args.device):
        return fail(mistake)
    try:
        images = [as_float(read_image(path)) for path in args.images]
    except (OSError, ValueError) as error:
        return fail(error)
    try:
        metric = MACLIP(backbone=args.backbone, precision=args.precision or 'fp32').to(args.device or 'cpu').eval()
    except (OSError, ValueError) as error:
        return fail(f'--backbone {args.backbone}: {error}')
    folder = Path(args.output)
    written = []
    try:
        with torch.inference_mode():
            for path, image, output in zip(args.images, images, _output_names(args.images, folder)):
                qmap = metric.quality_maps([image])[0]
                title = (f'{Path(path).name}: MA-CLIP {float(qmap.score):.4f} '
                         f'({qmap.boxes.shape[0]}x{qmap.boxes.shape[1]} patches + the whole image; {args.backbone}, '
                         f'{args.precision or "fp32"})')
                picture = image.expand(3, -1, -1).permute(1, 2, 0).cpu().numpy()
                written.append(draw_explanation(picture, qmap, title, output))
    except OSError as error:
        return fail(f'cannot write {folder}: {error.strerror or error}')
    for output in written:
        print(output)
    return 0
