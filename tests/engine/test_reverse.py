"""The reverse pass's steps (reverse.py): unpooling with and without the switches, and the filter step, on
examples worked by hand, and every unpooling choice against a hand-written autograd oracle (tests/oracle.py)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from oracle import rel_err, unpool_by_loops, unpool_oracle
from torch import nn

import deconvviz
from deconvviz.engine.forward import forward_chain
from deconvviz.engine.layers import chain_of
from deconvviz.engine.reverse import UNPOOLS, filter_, get_unpool, unpool, upsample
from deconvviz.errors import SelectionError

Y = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]]])
RULE_NAMES = ["deconvnet", "guided", "gradient", "linear"]


def test_nearest_upsampling_by_2_worked_by_hand():
    """Each value fills its 2x2 window (UpSampling2D's default)."""
    want = torch.tensor([[1.0, 1, 2, 2], [1, 1, 2, 2], [3, 3, 4, 4], [3, 3, 4, 4]])
    assert torch.equal(upsample(Y, nn.MaxPool2d(2), (4, 4), how="nearest")[0, 0], want)


def test_nearest_upsampling_by_2_3_worked_by_hand():
    """Windows of 2 rows and 3 columns: a 4x6 plane."""
    want = torch.tensor([[1.0, 1, 1, 2, 2, 2], [1, 1, 1, 2, 2, 2], [3, 3, 3, 4, 4, 4], [3, 3, 3, 4, 4, 4]])
    assert torch.equal(upsample(Y, nn.MaxPool2d((2, 3)), (4, 6), how="nearest")[0, 0], want)


def test_nearest_overlapping_windows_add_and_padding_gets_nothing():
    """3x3 windows, stride 2, padding 1 on a 4x4 plane: windows start at -1 and 1; the rows and columns 1 of
    both windows (overlap) get both values; the padded row and column -1 are dropped."""
    got = upsample(torch.ones(1, 1, 2, 2), nn.MaxPool2d(3, 2, padding=1), (4, 4), how="nearest")[0, 0]
    want = torch.tensor([[1.0, 2, 1, 1], [2, 4, 2, 2], [1, 2, 1, 1], [1, 2, 1, 1]])
    assert torch.equal(got, want)


def test_bilinear_upsampling_worked_by_hand():
    """align_corners=False: output row r samples input row (r + 0.5) / 2 - 0.5 = -0.25 (clamped to 0), 0.25, 0.75,
    1.25 (clamped to the last row), so each axis blends as [1, 0.75 + 0.25, 0.25 + 0.75, 1]; the input is
    1 + column + 2 row, so the output is 1 + [0, .25, .75, 1] (columns) + 2 [0, .25, .75, 1] (rows)."""
    want = torch.tensor(
        [[1.0, 1.25, 1.75, 2.0], [1.5, 1.75, 2.25, 2.5], [2.5, 2.75, 3.25, 3.5], [3.0, 3.25, 3.75, 4.0]]
    )
    assert torch.equal(upsample(Y, nn.MaxPool2d(2), (4, 4), how="bilinear")[0, 0], want)


def test_fixed_position_worked_by_hand():
    """Offset (k - 1) // 2 from each window's start: the top-left cell of 2x2 windows, the centre of 3x3 ones;
    a 3x3 window that starts in the padding puts its value at the plane's corner (0, 0)."""
    two = torch.tensor([[1.0, 0, 2, 0], [0, 0, 0, 0], [3, 0, 4, 0], [0, 0, 0, 0]])
    assert torch.equal(upsample(Y, nn.MaxPool2d(2), (4, 4), how="fixed")[0, 0], two)
    three = torch.zeros(6, 6)
    three[1, 1], three[1, 4], three[4, 1], three[4, 4] = 1, 2, 3, 4
    assert torch.equal(upsample(Y, nn.MaxPool2d(3), (6, 6), how="fixed")[0, 0], three)
    padded = torch.zeros(4, 4)
    padded[0, 0], padded[0, 2], padded[2, 0], padded[2, 2] = 1, 2, 3, 4
    assert torch.equal(upsample(Y, nn.MaxPool2d(3, 2, padding=1), (4, 4), how="fixed")[0, 0], padded)
    # a 2x2 window at -1 (padding 1) puts its value at offset 0: in the padding, so it is lost
    corner = upsample(Y, nn.MaxPool2d(2, 2, padding=1), (2, 2), how="fixed")[0, 0]
    assert torch.equal(corner, torch.tensor([[0.0, 0], [0, 4]]))


def test_one_by_one_transposed_convolution_stride_2_worked_by_hand():
    """The filter step of a 1x1 conv with stride 2, weight 1, bias 0: values spread onto every other position."""
    conv = nn.Conv2d(1, 1, 1, stride=2, bias=False)
    conv.weight.data.fill_(1.0)
    want = torch.tensor([[1.0, 0, 2, 0], [0, 0, 0, 0], [3, 0, 4, 0], [0, 0, 0, 0]])
    assert torch.equal(filter_(conv, Y, torch.Size((1, 1, 4, 4)))[0, 0], want)


def test_unpool_with_switches_a_tie_and_overlapping_windows():
    """x = [[1, 5, 5], [0, 2, 0], [3, 0, 4]], 2x2 windows, stride 1 (they overlap). Maxima: window (0, 0) the 5
    at (0, 1); window (0, 1) a tie of 5s, the first in scan order, (0, 1) again; (1, 0) the 3 at (2, 0); (1, 1)
    the 4 at (2, 2). The signal [[1, 2], [3, 4]] then lands 1 + 2 at (0, 1), 3 at (2, 0) and 4 at (2, 2)."""
    x = torch.tensor([[[[1.0, 5, 5], [0, 2, 0], [3, 0, 4]]]])
    steps = chain_of(nn.Sequential(nn.MaxPool2d(2, stride=1)))
    record = forward_chain(steps, x, 0)
    switches = record.switches[steps[0].name]
    assert switches.indices.flatten().tolist() == [1, 1, 6, 8] and switches.overlapping
    got = unpool(Y, switches, torch.tensor([0]))[0, 0]
    assert torch.equal(got, torch.tensor([[0.0, 3, 0], [0, 0, 0], [3, 0, 4]]))


def _transpose_by_zero_insertion(conv: nn.Conv2d, y: torch.Tensor, in_shape: tuple) -> torch.Tensor:
    """The textbook identity: a transposed convolution is a direct convolution, with filters transposed (in, out)
    and flipped, over y with stride - 1 zeros between values, padded by d (k - 1) - p (negative: cropped) and by
    the output padding on the far side."""
    (s, t), (p, q), (d, e), (k, m) = conv.stride, conv.padding, conv.dilation, conv.kernel_size
    b, c, ho, wo = y.shape
    z = y.new_zeros(b, c, (ho - 1) * s + 1, (wo - 1) * t + 1)
    z[:, :, ::s, ::t] = y
    extra_r = in_shape[-2] - ((ho - 1) * s - 2 * p + d * (k - 1) + 1)
    extra_c = in_shape[-1] - ((wo - 1) * t - 2 * q + e * (m - 1) + 1)
    pr, pc = d * (k - 1) - p, e * (m - 1) - q
    z = F.pad(z, (pc, pc + extra_c, pr, pr + extra_r))
    return F.conv2d(z, conv.weight.transpose(0, 1).flip(2, 3), dilation=conv.dilation)


@pytest.mark.parametrize("stride", [1, 2, 3])
@pytest.mark.parametrize("padding", [0, 1, 2])
@pytest.mark.parametrize("dilation", [1, 2])
def test_filter_step_is_a_convolution_over_a_zero_inserted_padded_input(stride, padding, dilation):
    torch.manual_seed(stride * 100 + padding * 10 + dilation)
    conv = nn.Conv2d(3, 5, (3, 2), stride=stride, padding=padding, dilation=dilation).double()
    x = torch.randn(2, 3, 13, 11, dtype=torch.double)
    y = torch.randn_like(conv(x))
    want = _transpose_by_zero_insertion(conv, y, x.shape)
    assert want.shape == x.shape
    with torch.no_grad():
        assert torch.allclose(filter_(conv, y, x.shape), want, atol=1e-12)
        assert torch.allclose(filter_(conv, y, x.shape, flips={}), want, atol=1e-12)  # the flipped-filters fast path


def test_unpool_names_are_checked_in_one_place():
    assert [get_unpool(n) for n in UNPOOLS] == ["switches", "nearest", "bilinear", "fixed"]
    with pytest.raises(SelectionError, match=r"unknown unpool 'nearst'; did you mean 'nearest'\? Valid: switches"):
        get_unpool("nearst")
    with pytest.raises(SelectionError, match="unknown unpool"):
        deconvviz.Deconvnet(nn.Sequential(nn.MaxPool2d(2)), unpool="centre")


def _chain() -> nn.Module:
    """Overlapping padded ceil-mode pools, a dilated pool, strided and dilated convs, odd sizes."""
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(3, stride=2, padding=1, ceil_mode=True),
        nn.Conv2d(6, 8, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2, ceil_mode=True),
        nn.Conv2d(8, 8, 3, padding=2, dilation=2),
        nn.ReLU(),
        nn.MaxPool2d(3, stride=1, dilation=2),
    )
    for p in model.parameters():
        p.data.normal_(0, 0.5)
    return model.eval()


X = torch.randn(2, 3, 37, 45, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("how", list(UNPOOLS))
@pytest.mark.parametrize("rule", RULE_NAMES)
def test_every_unpooling_on_chains_and_windows_against_the_oracle(how, rule):
    model = _chain()
    for layer in ["2", "5", "8"]:
        for crop, mode in ((False, "max"), (False, "map"), (True, "max"), (True, "map")):
            dn = deconvviz.Deconvnet(model, rule=rule, unpool=how, crop=crop)
            out = dn.project(X, layer, top=2, mode=mode)
            assert out.unpool == how and out.rule == rule
            sel = out.selections
            want = unpool_oracle(model, layer, X, sel.channels, sel.positions if mode == "max" else None, rule, how)
            assert want.abs().max() > 0, "degenerate test: the oracle projected nothing"
            assert rel_err(out.images, want) <= 1e-5, (layer, crop, mode)


def test_oracle_loops_agree_with_upsample_on_odd_overlapping_ceil_pools():
    """The oracle's loops and reverse.upsample, written apart, on pools with every geometry at once."""
    g = torch.randn(2, 3, 5, 6, dtype=torch.double, generator=torch.Generator().manual_seed(2))
    for pool in (
        nn.MaxPool2d(3, 2, 1, ceil_mode=True),
        nn.MaxPool2d((2, 3), (1, 2), (1, 0), (2, 1)),
        nn.MaxPool2d(2, ceil_mode=True),
    ):
        for size in ((9, 11), (10, 12), (11, 13)):
            x = torch.zeros(1, 1, *size)
            if pool(x).shape[-2:] != (5, 6):
                continue
            for how in ("nearest", "bilinear", "fixed"):
                want = unpool_by_loops(g, pool, size, how)
                assert torch.allclose(upsample(g, pool, size, how=how), want, atol=1e-12), (pool, size, how)


def test_switches_stay_bit_for_bit_what_they_were():
    """unpool="switches", given or not, on the full-plane, window and stage paths: the same bits."""
    model = _chain()
    for kwargs in ({"crop": False}, {"crop": True}, {}):
        plain = deconvviz.Deconvnet(model, **kwargs).project(X, "8", top=3)
        named = deconvviz.Deconvnet(model, unpool="switches", **kwargs).project(X, "8", top=3)
        late = deconvviz.Deconvnet(model, unpool="fixed", **kwargs).project(X, "8", top=3, unpool="switches")
        assert torch.equal(plain.images, named.images) and torch.equal(plain.images, late.images)
    staged = deconvviz.Deconvnet(model).project(X, "8", top=1, keep_stages=True)
    again = deconvviz.Deconvnet(model, unpool="switches").project(X, "8", top=1, keep_stages=True)
    assert all(torch.equal(a.tensor, b.tensor) for a, b in zip(staged.stages, again.stages, strict=True))


def test_bilinear_takes_the_full_plane_path():
    """Bilinear resizing reaches beyond a unit's receptive-field window: crop=True must not cut it off."""
    model = _chain()
    cropped = deconvviz.Deconvnet(model, unpool="bilinear", crop=True).project(X, "8", top=2)
    full = deconvviz.Deconvnet(model, unpool="bilinear", crop=False).project(X, "8", top=2)
    assert torch.equal(cropped.images, full.images)


def test_stages_name_the_unpooling_steps_for_every_choice():
    model = _chain()
    for how in UNPOOLS:
        out = deconvviz.Deconvnet(model, unpool=how).project(X, "8", top=1, keep_stages=True)
        assert [s.name for s in out.stages if s.kind == "unpool"] == ["unpool3", "unpool2", "unpool1"]
        assert out.stages[-1].tensor.shape[-2:] == X.shape[-2:]
