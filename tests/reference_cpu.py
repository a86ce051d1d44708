"""pyiqa 0.1.16's own maclip_arch, runnable on the CPU: the reference for parity and benchmarks.

Only its hard-coded CUDA device is neutralised: its ``load(backbone, 'cuda')`` gets the
CPU (which also makes pyiqa keep float32, as the official code runs), and ``.cuda()`` /
``.to('cuda')`` stay on the CPU. The math is pyiqa's, untouched.
"""
import contextlib
from unittest import mock

import torch


def _is_cuda(device) -> bool:
    return (isinstance(device, str) and device.startswith('cuda')) or (
        isinstance(device, torch.device) and device.type == 'cuda'
    )


@contextlib.contextmanager
def reference_on_cpu():
    """Yields pyiqa's ``MACLIP`` class; inside the block it builds and runs on the CPU."""
    from pyiqa.archs import clip_model, maclip_arch

    original_to = torch.Tensor.to

    def to_without_cuda(self, *args, **kwargs):
        args = tuple('cpu' if _is_cuda(a) else a for a in args)
        if _is_cuda(kwargs.get('device')):
            kwargs['device'] = 'cpu'
        return original_to(self, *args, **kwargs)

    with mock.patch.object(maclip_arch, 'load', lambda name, device: clip_model.load(name, 'cpu')), \
            mock.patch.object(torch.Tensor, 'cuda', lambda self, *args, **kwargs: self), \
            mock.patch.object(torch.Tensor, 'to', to_without_cuda):
        yield maclip_arch.MACLIP
