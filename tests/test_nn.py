"""convext.nn modules against torch.nn's: construction, initialisation, repr, state_dict, forward
and backward; and convert() on nested models."""
import copy
import inspect

import pytest
import torch

import convext
import convext.nn as cnn

CONV_KWARGS = [
    dict(in_channels=4, out_channels=8, kernel_size=3),
    dict(in_channels=4, out_channels=8, kernel_size=(3, 2), stride=2, padding=1, dilation=(2, 1), groups=2, bias=False),
    dict(in_channels=4, out_channels=8, kernel_size=4, padding="same"),
    dict(in_channels=4, out_channels=4, kernel_size=3, padding="valid", groups=4),
    dict(in_channels=4, out_channels=6, kernel_size=3, padding=2, padding_mode="reflect"),
    dict(in_channels=4, out_channels=6, kernel_size=3, padding=(1, 2), padding_mode="replicate"),
    dict(in_channels=4, out_channels=6, kernel_size=3, padding=1, padding_mode="circular", dtype=torch.float64),
]

CONV_T_KWARGS = [
    dict(in_channels=4, out_channels=8, kernel_size=3),
    dict(in_channels=4, out_channels=8, kernel_size=(3, 2), stride=2, padding=1, output_padding=1, groups=2, bias=False),
    dict(in_channels=4, out_channels=4, kernel_size=2, stride=2, groups=4, dilation=2),
    dict(in_channels=4, out_channels=6, kernel_size=3, stride=3, padding=1, dtype=torch.float64),
]


def _pair_of_modules(torch_cls, ours_cls, kwargs):
    torch.manual_seed(0)
    theirs = torch_cls(**kwargs)
    torch.manual_seed(0)
    ours = ours_cls(**kwargs)
    return theirs, ours


@pytest.mark.parametrize("torch_cls,ours_cls", [(torch.nn.Conv2d, cnn.Conv2d),
                                                (torch.nn.ConvTranspose2d, cnn.ConvTranspose2d)])
def test_same_constructor_signature(torch_cls, ours_cls):
    assert isinstance(ours_cls(2, 2, 1), torch_cls)
    assert inspect.signature(ours_cls.__init__) == inspect.signature(torch_cls.__init__)
    assert ours_cls.__name__ == torch_cls.__name__


@pytest.mark.filterwarnings("ignore:Using padding='same'")
@pytest.mark.parametrize("torch_cls,ours_cls,kwargs",
                         [(torch.nn.Conv2d, cnn.Conv2d, k) for k in CONV_KWARGS]
                         + [(torch.nn.ConvTranspose2d, cnn.ConvTranspose2d, k) for k in CONV_T_KWARGS])
def test_module_matches_torch(torch_cls, ours_cls, kwargs):
    theirs, ours = _pair_of_modules(torch_cls, ours_cls, kwargs)
    # Same initialisation, repr and state.
    assert repr(ours) == repr(theirs)
    assert ours.state_dict().keys() == theirs.state_dict().keys()
    for key, value in theirs.state_dict().items():
        assert torch.equal(ours.state_dict()[key], value)
    # state_dicts load across, both ways.
    ours.load_state_dict(theirs.state_dict())
    theirs.load_state_dict(ours.state_dict())

    dtype = kwargs.get("dtype", torch.float32)
    x = torch.randn(2, 4, 9, 8, dtype=dtype)
    for batched in (True, False):
        xs = x if batched else x[0]
        xa, xb = xs.clone().requires_grad_(), xs.clone().requires_grad_()
        out, ref = ours(xa), theirs(xb)
        tol = dict(rtol=1e-4, atol=1e-4) if dtype == torch.float32 else {}
        torch.testing.assert_close(out, ref, **tol)
        out.square().sum().backward()
        ref.square().sum().backward()
        torch.testing.assert_close(xa.grad, xb.grad, **tol)
        for p_ours, p_theirs in zip(ours.parameters(), theirs.parameters()):
            torch.testing.assert_close(p_ours.grad, p_theirs.grad, **tol)
        ours.zero_grad()
        theirs.zero_grad()


@pytest.mark.parametrize("output_size", [[17, 18], [2, 4, 18, 17], torch.Size([18, 18])])
def test_conv_transpose_output_size(output_size):
    theirs, ours = _pair_of_modules(torch.nn.ConvTranspose2d, cnn.ConvTranspose2d,
                                    dict(in_channels=4, out_channels=2, kernel_size=3, stride=2, padding=1))
    x = torch.randn(2, 4, 9, 9)
    out = ours(x, output_size=output_size)
    torch.testing.assert_close(out, theirs(x, output_size=output_size))
    assert list(out.shape[-2:]) == list(output_size)[-2:]


def test_module_errors_match_torch():
    with pytest.raises(ValueError, match="padding='same' is not supported for strided convolutions"):
        cnn.Conv2d(4, 4, 3, stride=2, padding="same")
    with pytest.raises(ValueError, match="Invalid padding string 'full'"):
        cnn.Conv2d(4, 4, 3, padding="full")
    with pytest.raises(ValueError, match="in_channels must be divisible by groups"):
        cnn.Conv2d(5, 4, 3, groups=2)
    with pytest.raises(ValueError, match="padding_mode must be one of"):
        cnn.Conv2d(4, 4, 3, padding_mode="zero")
    with pytest.raises(ValueError, match='Only "zeros" padding mode is supported for ConvTranspose2d'):
        cnn.ConvTranspose2d(4, 4, 3, padding_mode="reflect")
    layer = cnn.ConvTranspose2d(4, 2, 3, stride=2, padding=1)
    with pytest.raises(ValueError, match=r"requested an output size of \[30, 30\], but valid sizes range from \[17, 17\] to \[18, 18\]"):
        layer(torch.randn(1, 4, 9, 9), output_size=[30, 30])
    # torch constructs these and fails in forward; so does convext.
    same_t = cnn.ConvTranspose2d(4, 2, 3, padding="same")
    with pytest.raises(TypeError):
        same_t(torch.randn(1, 4, 5, 5))
    negative = cnn.Conv2d(4, 2, 3, padding=-1)
    with pytest.raises(RuntimeError, match="negative padding is not supported"):
        negative(torch.randn(1, 4, 5, 5))


# --- convert -------------------------------------------------------------------------------

class _Block(torch.nn.Module):
    def __init__(self, channels):
        super().__init__()
        self.branches = torch.nn.ModuleList([
            torch.nn.Sequential(torch.nn.Conv2d(channels, channels, 3, padding=1), torch.nn.ReLU()),
            torch.nn.Sequential(torch.nn.Conv2d(channels, channels, 1), torch.nn.BatchNorm2d(channels)),
        ])

    def forward(self, x):
        return sum(branch(x) for branch in self.branches)


class _CustomConv(torch.nn.Conv2d):
    """A user's subclass: convert must not touch it (its forward may differ)."""

    def forward(self, x):
        return super().forward(x) * 2


class _Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = torch.nn.Conv2d(3, 8, 7, stride=2, padding=3, bias=False)
        self.blocks = torch.nn.Sequential(_Block(8), _Block(8))
        self.head = torch.nn.ModuleDict({"up": torch.nn.ConvTranspose2d(8, 4, 2, stride=2),
                                         "custom": _CustomConv(4, 4, 1)})

    def forward(self, x):
        return self.head["custom"](self.head["up"](self.blocks(self.stem(x))))


def test_convert_nested_model():
    torch.manual_seed(0)
    model = _Net().eval()
    reference = copy.deepcopy(model)
    calls = []
    model.blocks[1].branches[0][0].register_forward_hook(lambda m, i, o: calls.append(type(m)))
    stem = model.stem
    parameters = list(model.parameters())

    converted = convext.nn.convert(model)

    assert converted is model and model.stem is stem  # in place: identities kept
    assert [p is q for p, q in zip(model.parameters(), parameters)] == [True] * len(parameters)
    assert type(model.stem) is cnn.Conv2d
    assert type(model.blocks[0].branches[1][0]) is cnn.Conv2d
    assert type(model.head["up"]) is cnn.ConvTranspose2d
    assert type(model.head["custom"]) is _CustomConv
    assert type(model.blocks[0].branches[1][1]) is torch.nn.BatchNorm2d
    assert repr(model) == repr(reference)

    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(model(x), reference(x), rtol=1e-4, atol=1e-4)
    assert calls == [cnn.Conv2d]  # the hook survived the swap and still fires
    model.load_state_dict(reference.state_dict())
    reference.load_state_dict(model.state_dict())


def test_convert_root_module():
    layer = torch.nn.Conv2d(2, 2, 3)
    assert type(convext.nn.convert(layer)) is cnn.Conv2d
