"""Drop-in modules: subclasses of torch.nn's, so construction, initialisation, repr and
state_dict are torch's own, and only the compute is convext's.

convert(model) swaps the torch layers of an existing model for these, in place.
"""
from .conv import Conv2d, ConvTranspose2d
from .convert import convert

__all__ = ["Conv2d", "ConvTranspose2d", "convert"]
