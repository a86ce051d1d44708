"""pyiqa 0.1.16's own maclip_arch, runnable on the CPU: the reference for parity and benchmarks.

Only its hard-coded CUDA device is neutralised, and only inside the reference's own calls: a
subclass whose construction gets ``load(backbone, 'cpu')`` (which also makes pyiqa keep float32,
as the official code runs) and whose ``preprocess`` keeps ``.cuda()`` / ``.to('cuda')`` on the CPU.
Nothing else runs with those patches in place: not this project's metric, whichever block it
runs in. The math is pyiqa's, untouched.
"""
import contextlib
from unittest import mock

import torch


def _is_cuda(device) -> bool:
    return (isinstance(device, str) and device.startswith('cuda')) or (
        isinstance(device, torch.device) and device.type == 'cuda'
    )


@contextlib.contextmanager
def _tensors_stay_on_the_cpu():
    original_to = torch.Tensor.to

    def to_without_cuda(self, *args, **kwargs):
        args = tuple('cpu' if _is_cuda(a) else a for a in args)
        if _is_cuda(kwargs.get('device')):
            kwargs['device'] = 'cpu'
        return original_to(self, *args, **kwargs)

    with mock.patch.object(torch.Tensor, 'cuda', lambda self, *args, **kwargs: self), \
            mock.patch.object(torch.Tensor, 'to', to_without_cuda):
        yield


def reference_class() -> type:
    """pyiqa's ``MACLIP`` class, built and run on the CPU."""
    from pyiqa.archs import clip_model, maclip_arch

    class ReferenceOnCPU(maclip_arch.MACLIP):
        def __init__(self, *args, **kwargs):
            with mock.patch.object(maclip_arch, 'load', lambda name, device: clip_model.load(name, 'cpu')):
                super().__init__(*args, **kwargs)

        def preprocess(self, img):
            with _tensors_stay_on_the_cpu():
                return super().preprocess(img)

    return ReferenceOnCPU


@contextlib.contextmanager
def reference_on_cpu():
    """Yields :func:`reference_class` (kept for callers that use it as a block)."""
    yield reference_class()
