"""Weight-only symmetric quantization with per-group positive scales.

For a weight row split into groups of ``group_size`` inputs, each group g has
one scale s_g > 0 and integer codes q with

    w ~ s_g * q,   q = clamp(round(w / s_g), qmin, qmax),

with (qmin, qmax) = (-8, 7) for int4 and (-128, 127) for int8. The scale is
searched over clipping ratios: s_g = c max_i |w_i| / qmax for c in CLIP_RATIOS
(1, 0.95, ..., 0.5), the one with the least squared error sum_i (w_i - s_g q_i)^2
(c = 1 is absmax scaling, so the error never exceeds absmax's; on MiniLM-L6
int4 / group 64 it is 11 % lower, BENCHMARKS.md). |w - s q| <= s / 2 for every
element inside the range (|w| <= s (qmax + 1/2)). An all-zero group gets the smallest normal
positive scale, so every scale is > 0 (HoZO perturbs them on the positive
orthant). int4 codes are stored offset by 8 and packed two per uint8 byte
(low nibble = even column, high nibble = odd column); int8 codes as int8.
``QuantLinear`` dequantizes on the fly in its forward: y = x (s q)^T + b.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from zosci.errors import ConfigError

RANGES = {4: (-8, 7), 8: (-128, 127)}
CLIP_RATIOS = [1.0 - 0.05 * k for k in range(11)]  # candidate s / (max|w| / qmax)


def pack_int4(q: torch.Tensor) -> torch.Tensor:
    """int codes in [-8, 7], last dim even -> uint8 with half the columns."""
    u = (q.to(torch.int16) + 8).to(torch.uint8)
    return u[..., 0::2] | (u[..., 1::2] << 4)


def unpack_int4(packed: torch.Tensor) -> torch.Tensor:
    """Inverse of pack_int4: uint8 -> int8 codes in [-8, 7], twice the columns."""
    low = (packed & 15).to(torch.int8) - 8
    high = (packed >> 4).to(torch.int8) - 8
    return torch.stack((low, high), dim=-1).flatten(-2)


def quantize_tensor(w: torch.Tensor, bits: int = 4, group_size: int = 64):
    """w (out, in) -> (codes int8 (out, in_padded), scales (out, groups)); in is zero-padded to groups."""
    if bits not in RANGES:
        raise ConfigError(f"bits: {bits!r} is not supported; choose 4 or 8")
    if not (isinstance(group_size, int) and group_size >= 2 and group_size % 2 == 0):
        raise ConfigError(f"group_size: must be an even integer >= 2 (e.g. 64 or 128), got {group_size!r}")
    qmin, qmax = RANGES[bits]
    out, n_in = w.shape
    groups = -(-n_in // group_size)
    wp = F.pad(w.detach(), (0, groups * group_size - n_in)).reshape(out, groups, group_size)
    absmax = wp.abs().amax(dim=-1)
    scales, best = None, None
    for c in CLIP_RATIOS:
        s = (c * absmax / qmax).clamp_min(torch.finfo(w.dtype).tiny)
        err = ((wp - s[..., None] * torch.clamp(torch.round(wp / s[..., None]), qmin, qmax)) ** 2).sum(-1)
        if scales is None:
            scales, best = s, err
        else:
            better = err < best
            scales, best = torch.where(better, s, scales), torch.where(better, err, best)
    codes = torch.clamp(torch.round(wp / scales[..., None]), qmin, qmax).to(torch.int8)
    return codes.reshape(out, groups * group_size), scales


class QuantLinear(nn.Module):
    """Drop-in nn.Linear with weight = s * q (per-group scales, int4 packed or int8 codes)."""

    def __init__(self, linear: nn.Linear, bits: int = 4, group_size: int = 64):
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.bits, self.group_size = bits, group_size
        codes, scales = quantize_tensor(linear.weight.data, bits, group_size)
        self.register_buffer("codes", pack_int4(codes) if bits == 4 else codes)
        self.scales = nn.Parameter(scales.contiguous(), requires_grad=False)
        self.bias = None if linear.bias is None else nn.Parameter(linear.bias.data.clone(), requires_grad=False)

    def int_codes(self) -> torch.Tensor:
        """The integer codes q, (out, in_padded) int8."""
        return unpack_int4(self.codes) if self.bits == 4 else self.codes

    def dequantize(self) -> torch.Tensor:
        """W = s * q, (out, in), in the scales' dtype."""
        q = self.int_codes().reshape(self.out_features, -1, self.group_size).to(self.scales.dtype)
        w = (q * self.scales[..., None]).reshape(self.out_features, -1)
        return w[:, :self.in_features]

    def forward(self, x):
        return F.linear(x, self.dequantize().to(x.dtype), None if self.bias is None else self.bias.to(x.dtype))

    def extra_repr(self):
        return (f"in_features={self.in_features}, out_features={self.out_features}, bits={self.bits}, "
                f"group_size={self.group_size}, bias={self.bias is not None}")


def head_names(model: nn.Module) -> set[str]:
    """Qualified names of the output head's Linear layers (classifier, LM head, tied decoders)."""
    names = set()
    hf = getattr(model, "hf", model)
    prefix = "hf." if hf is not model else ""
    get_out = getattr(hf, "get_output_embeddings", None)
    out = get_out() if get_out is not None else None
    if isinstance(getattr(model, "head", None), nn.Module):  # LM's head on pooled sentence features
        names.add("head")
    for name, module in hf.named_modules():
        leaf = name.rsplit(".", 1)[-1]
        if module is out or leaf in ("classifier", "score", "lm_head", "decoder", "out_proj") \
                and "classifier" in name or leaf in ("classifier", "score", "lm_head"):
            names.add(prefix + name)
    return names


def quantize(model: nn.Module, bits: int = 4, group_size: int = 64, skip_head: bool = True) -> nn.Module:
    """Replace every nn.Linear of model by a QuantLinear, in place; returns model.

    The output head (sequence classifier / LM head; see head_names) stays in
    float by default (skip_head=True): it is small, or tied to the input
    embeddings, which stay in float too (only Linear layers are quantized)."""
    skip = head_names(model) if skip_head else set()
    targets = [(name, m) for name, m in model.named_modules()
               if isinstance(m, nn.Linear) and name not in skip
               and not any(name.startswith(s + ".") for s in skip)]
    if not targets:
        raise ConfigError("model: has no nn.Linear layer to quantize (already quantized?)")
    for name, linear in targets:
        parent_name, _, leaf = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, leaf, QuantLinear(linear, bits, group_size))
    return model


def quant_layers(model: nn.Module) -> list[QuantLinear]:
    return [m for m in model.modules() if isinstance(m, QuantLinear)]


def scales(model: nn.Module) -> list[nn.Parameter]:
    """The scales of every QuantLinear of model (what QZO/HoZO perturb)."""
    return [m.scales for m in quant_layers(model)]
