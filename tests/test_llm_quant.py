"""Quantization: packing, round-trip bound, QuantLinear forward, weight bytes."""
import os

import pytest
import torch
import torch.nn.functional as F
from torch import nn

os.environ["HF_HUB_OFFLINE"] = "1"
from zosci import llm  # noqa: E402
from zosci.errors import ConfigError  # noqa: E402


def test_pack_unpack_exact():
    q = torch.randint(-8, 8, (7, 128), generator=torch.Generator().manual_seed(0)).to(torch.int8)
    packed = llm.pack_int4(q)
    assert packed.dtype == torch.uint8 and packed.shape == (7, 64)
    assert torch.equal(llm.unpack_int4(packed), q)
    every = torch.arange(-8, 8, dtype=torch.int8).repeat(2)[None]
    assert torch.equal(llm.unpack_int4(llm.pack_int4(every)), every)


@pytest.mark.parametrize("bits,group", [(4, 64), (4, 128), (8, 64)])
def test_round_trip_error_bound(bits, group):
    lin = nn.Linear(200, 33)  # 200 is not a multiple of the group: padded
    with torch.no_grad():
        lin.weight[3, :group] = 0.0  # an all-zero group
    ql = llm.QuantLinear(lin, bits, group)
    assert bool((ql.scales > 0).all())
    w = lin.weight.detach()
    err = (w - ql.dequantize()).abs()
    s = ql.scales.repeat_interleave(group, dim=1)[:, :200]
    qmin, qmax = llm.quant.RANGES[bits]
    inside = w.abs() <= s * (qmax + 0.5)  # not clipped by the searched scale
    assert bool((err[inside] <= s[inside] / 2 * (1 + 1e-6)).all())
    # the searched scale's squared error per group never exceeds absmax scaling's (c = 1 is a candidate)
    wp = torch.nn.functional.pad(w, (0, -200 % group)).reshape(33, -1, group)
    s_abs = (wp.abs().amax(-1, keepdim=True) / qmax).clamp_min(torch.finfo(w.dtype).tiny)
    err_abs = ((wp - s_abs * torch.clamp(torch.round(wp / s_abs), qmin, qmax)) ** 2).sum(-1)
    wq = torch.nn.functional.pad(ql.dequantize(), (0, -200 % group)).reshape(33, -1, group)
    assert bool((((wp - wq) ** 2).sum(-1) <= err_abs * (1 + 1e-6) + 1e-12).all())
    codes = ql.int_codes()
    assert int(codes.min()) >= qmin and int(codes.max()) <= qmax
    assert torch.equal(ql.dequantize()[3, :group], torch.zeros(group))


def test_quantlinear_forward_equals_linear_with_dequantized_weight():
    lin = nn.Linear(128, 48)
    ql = llm.QuantLinear(lin, 4, 64)
    x = torch.randn(5, 7, 128)
    assert torch.equal(ql(x), F.linear(x, ql.dequantize(), lin.bias))
    err = (lin.weight - ql.dequantize()).abs()  # |y - y_q| <= |x| |w - s q| elementwise
    assert bool(((ql(x) - lin(x)).abs() <= x.abs() @ err.T + 1e-5).all())


def _mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(256, 512), nn.ReLU(), nn.Linear(512, 256), nn.ReLU(), nn.Linear(256, 2))


def test_quantize_in_place_and_weight_bytes():
    model = _mlp()
    fp32 = llm.weight_bytes(model, linear_only=True)
    assert fp32 == 4 * (256 * 512 + 512 * 256 + 256 * 2)
    total_fp32 = llm.weight_bytes(model)
    assert llm.quantize(model, bits=4, group_size=64) is model
    assert isinstance(model[0], llm.QuantLinear) and isinstance(model[2], llm.QuantLinear)
    assert isinstance(model[4], llm.QuantLinear)  # a plain Sequential has no named head
    int4 = llm.weight_bytes(model, linear_only=True)
    assert int4 <= 0.2 * fp32, (int4, fp32)
    assert llm.weight_bytes(model) < total_fp32
    assert all(isinstance(s, nn.Parameter) and bool((s > 0).all()) for s in llm.scales(model))


def test_quantize_errors():
    with pytest.raises(ConfigError, match="bits"):
        llm.quantize(_mlp(), bits=3)
    with pytest.raises(ConfigError, match="group_size"):
        llm.quantize(_mlp(), group_size=7)
    model = llm.quantize(_mlp())
    with pytest.raises(ConfigError, match="already quantized"):
        llm.quantize(model)


def test_scale_search_lowers_the_error_on_heavy_tailed_weights():
    """Weights with outliers (Student t, 3 degrees of freedom): clipping the scale below absmax lowers the
    total squared error (measured 18 % lower at int4, group 64; asserted: more than 10 %)."""
    g = torch.Generator().manual_seed(0)
    z = torch.randn(256, 256, generator=g)
    chi = torch.randn(256, 256, 3, generator=g).pow(2).sum(-1)
    w = z / (chi / 3).sqrt()  # Student t with 3 degrees of freedom, from a seeded generator
    lin = nn.Linear(256, 256)
    with torch.no_grad():
        lin.weight.copy_(w)
    ql = llm.QuantLinear(lin, 4, 64)
    wp = w.reshape(256, -1, 64)
    s_abs = wp.abs().amax(-1, keepdim=True) / 7
    absmax_err = float(((wp - s_abs * torch.clamp(torch.round(wp / s_abs), -8, 7)) ** 2).sum())
    searched_err = float(((w - ql.dequantize()) ** 2).sum())
    assert searched_err < 0.9 * absmax_err, (searched_err, absmax_err)
