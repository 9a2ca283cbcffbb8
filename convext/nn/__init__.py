"""Drop-in modules: subclasses of torch.nn's, so construction, initialisation, repr and
state_dict are torch's own, and only the compute is convext's; plus GlobalAvgPool2d.

convert(model) swaps the torch layers of an existing model for these, in place.
"""
from .conv import Conv2d, ConvTranspose2d
from .convert import convert
from .pool import (AdaptiveAvgPool2d, AdaptiveMaxPool2d, AvgPool2d, GlobalAvgPool2d, MaxPool2d,
                   MaxUnpool2d)

__all__ = [
    "Conv2d",
    "ConvTranspose2d",
    "MaxPool2d",
    "AvgPool2d",
    "AdaptiveAvgPool2d",
    "AdaptiveMaxPool2d",
    "MaxUnpool2d",
    "GlobalAvgPool2d",
    "convert",
]
