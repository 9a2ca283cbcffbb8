import torch

from .conv import Conv2d, ConvTranspose2d
from .pool import AdaptiveAvgPool2d, AdaptiveMaxPool2d, AvgPool2d, MaxPool2d, MaxUnpool2d

# torch layer type -> convext subclass. Exact types only: a user's subclass of a torch layer may
# override forward, and swapping its class would drop that.
_REPLACEMENTS = {
    torch.nn.Conv2d: Conv2d,
    torch.nn.ConvTranspose2d: ConvTranspose2d,
    torch.nn.MaxPool2d: MaxPool2d,
    torch.nn.AvgPool2d: AvgPool2d,
    torch.nn.AdaptiveAvgPool2d: AdaptiveAvgPool2d,
    torch.nn.AdaptiveMaxPool2d: AdaptiveMaxPool2d,
    torch.nn.MaxUnpool2d: MaxUnpool2d,
}


def convert(module: torch.nn.Module) -> torch.nn.Module:
    """Makes every torch layer in ``module`` (at any depth, ``module`` itself included) that
    convext implements compute with convext, and returns ``module``.

    The swap is in place: each layer keeps its identity, parameters, buffers, hooks and
    attributes (the convext layers are subclasses of torch's with no state of their own), so
    optimizers, state_dicts and references into the model stay valid. Other layers are left as
    they are.
    """
    for m in module.modules():
        replacement = _REPLACEMENTS.get(type(m))
        if replacement is not None:
            m.__class__ = replacement
    return module
