"""Where a model's weights live, asked of its first parameter.

diffusers' `ModelMixin.device` and `.dtype` walk every submodule for offloading hooks: about
1 ms each on an SD UNet (measured on this project's CPU), paid several times per image — some
10% of a 64 px LCM image. Our models sit whole on one device in one dtype, so the first
floating-point parameter gives the same answer in microseconds.
"""

from __future__ import annotations

import torch


def placement(module: torch.nn.Module) -> tuple[torch.device, torch.dtype]:
    """(device, dtype) of ``module``'s first floating-point parameter."""
    for p in module.parameters():
        if p.is_floating_point():
            return p.device, p.dtype
    raise ValueError(f"{type(module).__name__} has no floating-point parameters")
