"""Fine-tuning methods: thin wrappers choosing parameters and geometry for zosci.optim.

* MeZO:  every float weight w (no quantization), w <- w - lr g, g = delta v,
         delta = (f(w + mu v) - f(w)) / mu  (ZO-SGD, in-place seeded perturbation).
* QZO:   the int4/int8 scales s only (codes frozen), euclidean s <- s - lr g, with
         delta clipped to [-clip, clip] (QZO's directional-derivative clipping).
* HoZO:  the scales on the positive orthant with metric <u, w>_s = sum u w / s^2:
         perturbation s exp(mu v), update s <- Exp_s(-lr s g) = s exp(-lr g), so a
         scale never reaches 0 or changes sign.
* FirstOrder: torch.optim.Adam / SGD on every float weight, with backprop (reference).

Each ZO method returns a zosci.optim.ZOSGD (optimizer="sgd") or ZOAdam
(optimizer="adam"); any sampler (gaussian, sphere, dap, ...) and estimator
(forward, central, p1-p4) of the core works; ``opt.step(closure)``.
"""
from __future__ import annotations

import torch
from torch import nn

from zosci.errors import ConfigError
from zosci.optim import ZOAdam, ZOSGD

from .quant import quant_layers, scales

METHODS = ("mezo", "qzo", "hozo", "first-order")


def float_params(model: nn.Module) -> list[nn.Parameter]:
    """Every floating-point parameter of model, tied ones once."""
    seen, out = set(), []
    for p in model.parameters():
        if p.is_floating_point() and id(p) not in seen:
            seen.add(id(p))
            out.append(p)
    return out


def _zo(groups, optimizer: str, lr: float, mu: float, sampler, estimator, queries: int, clip, seed: int,
        **options):
    common = dict(lr=lr, sampler=sampler, estimator=estimator, mu=mu, queries=queries, clip=clip, seed=seed)
    if optimizer == "sgd":
        return ZOSGD(groups, momentum=options.get("momentum", 0.0), **common)
    if optimizer == "adam":
        return ZOAdam(groups, **common)
    raise ConfigError(f"optimizer: unknown {optimizer!r}; choose 'sgd' or 'adam'")


def _scales_or_fail(model, method: str):
    if not quant_layers(model):
        raise ConfigError(f"{method}: the model has no QuantLinear; call llm.quantize(model, bits=4) first")
    return scales(model)


def MeZO(model: nn.Module, lr: float = 1e-6, mu: float = 1e-3, sampler="gaussian", estimator="forward",
         queries: int = 1, optimizer: str = "sgd", seed: int = 0, **options):
    """ZO-SGD over every float parameter of model (MeZO)."""
    return _zo(float_params(model), optimizer, lr, mu, sampler, estimator, queries, None, seed, **options)


def QZO(model: nn.Module, lr: float = 1e-5, mu: float = 1e-3, sampler="gaussian", estimator="forward",
        queries: int = 1, clip: float | None = 100.0, optimizer: str = "sgd", seed: int = 0, **options):
    """ZO over the quantization scales only, euclidean, with delta clipped to [-clip, clip]."""
    groups = [{"params": _scales_or_fail(model, "QZO"), "manifold": "euclidean"}]
    return _zo(groups, optimizer, lr, mu, sampler, estimator, queries, clip, seed, **options)


def HoZO(model: nn.Module, lr: float = 1e-3, mu: float = 1e-2, sampler="gaussian", estimator="forward",
         queries: int = 1, clip: float | None = None, optimizer: str = "sgd", seed: int = 0, **options):
    """ZO over the quantization scales on the positive orthant (s exp(t v))."""
    groups = [{"params": _scales_or_fail(model, "HoZO"), "manifold": "orthant"}]
    return _zo(groups, optimizer, lr, mu, sampler, estimator, queries, clip, seed, **options)


def FirstOrder(model: nn.Module, lr: float = 1e-4, optimizer: str = "adam", **options) -> torch.optim.Optimizer:
    """torch.optim.Adam / SGD over every float parameter (sets requires_grad); step after loss.backward()."""
    params = float_params(model)
    for p in params:
        p.requires_grad_(True)
    if optimizer == "adam":
        return torch.optim.Adam(params, lr=lr)
    if optimizer == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=options.get("momentum", 0.0))
    raise ConfigError(f"optimizer: unknown {optimizer!r}; choose 'adam' or 'sgd'")


def build(method: str, model: nn.Module, **kwargs):
    """The optimizer of method name (one of METHODS)."""
    table = {"mezo": MeZO, "qzo": QZO, "hozo": HoZO, "first-order": FirstOrder}
    if method not in table:
        raise ConfigError(f"method: unknown {method!r}; choose one of {list(METHODS)}")
    return table[method](model, **kwargs)
