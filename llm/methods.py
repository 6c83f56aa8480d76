"""Fine-tuning methods: thin wrappers choosing parameters and geometry for zosci.optim.

* MeZO:  every float weight w (no quantization), w <- w - lr g, g = delta v, with
         the two-sided delta = (f(w + mu v) - f(w - mu v)) / (2 mu) (MeZO's
         +mu v, -2 mu v, +mu v sequence; estimator="forward" for the one-sided
         (f(w + mu v) - f(w)) / mu). Of the input embeddings only the rows the
         batch reads are perturbed (sparse_embeddings, see llm.sparse).
* QZO:   the int4/int8 scales s only (codes frozen), euclidean s <- s - lr g,
         two-sided delta clipped to [-clip, clip] (QZO's directional-derivative clipping).
* HoZO:  the scales on the positive orthant with metric <u, w>_s = sum u w / s^2:
         perturbation s exp(mu v), update s <- Exp_s(-lr s g) = s exp(-lr g), so a
         scale never reaches 0 or changes sign.
* FirstOrder: torch.optim.Adam / SGD on every float weight, or on the scales only
         (params="scales": the exact-gradient reference of QZO / HoZO), with backprop.

Each ZO method returns a zosci.optim.ZOSGD (optimizer="sgd") or ZOAdam
(optimizer="adam"); any sampler (gaussian, rademacher, sphere, dap, ...) and
estimator (forward, central, p1-p4) of the core works; ``opt.step(closure)``.
"""
from __future__ import annotations

import torch
from torch import nn

from zosci.errors import ConfigError
from zosci.optim import ZOAdam, ZOSGD

from .quant import quant_layers, scales
from .sparse import SparseZOSGD, UsedRows, tied_input_embeddings

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


def MeZO(model: nn.Module, lr: float = 1e-6, mu: float = 1e-3, sampler="gaussian", estimator="central",
         queries: int = 1, optimizer: str = "sgd", seed: int = 0, sparse_embeddings: bool | None = None,
         **options):
    """ZO-SGD over every float parameter of model (MeZO).

    sparse_embeddings: perturb and update only the input-embedding rows the
    closure reads (closure.input_ids); None = wherever valid (input embeddings
    not tied to the output head, plain SGD, a sampler without guide)."""
    hf = getattr(model, "hf", None)
    valid = (hf is not None and not tied_input_embeddings(hf) and optimizer == "sgd"
             and not options.get("momentum") and not (isinstance(sampler, str) and sampler == "dap"))
    if sparse_embeddings and not valid:
        raise ConfigError("sparse_embeddings: needs an llm.LM whose input embeddings are not tied to its output "
                          "head, optimizer 'sgd' without momentum and a sampler without guide; set it False")
    if not (valid if sparse_embeddings is None else sparse_embeddings):
        return _zo(float_params(model), optimizer, lr, mu, sampler, estimator, queries, None, seed, **options)
    embedding = hf.get_input_embeddings()
    params = [p for p in float_params(model) if p is not embedding.weight]
    return SparseZOSGD(params, UsedRows(embedding), lr=lr, sampler=sampler, estimator=estimator, mu=mu,
                       queries=queries, seed=seed, momentum=0.0)


def QZO(model: nn.Module, lr: float = 1e-5, mu: float = 1e-3, sampler="gaussian", estimator="central",
        queries: int = 1, clip: float | None = 100.0, optimizer: str = "sgd", seed: int = 0, **options):
    """ZO over the quantization scales only, euclidean, with delta clipped to [-clip, clip]."""
    groups = [{"params": _scales_or_fail(model, "QZO"), "manifold": "euclidean"}]
    return _zo(groups, optimizer, lr, mu, sampler, estimator, queries, clip, seed, **options)


def HoZO(model: nn.Module, lr: float = 1e-3, mu: float = 1e-2, sampler="gaussian", estimator="central",
         queries: int = 1, clip: float | None = None, optimizer: str = "sgd", seed: int = 0, **options):
    """ZO over the quantization scales on the positive orthant (s exp(t v))."""
    groups = [{"params": _scales_or_fail(model, "HoZO"), "manifold": "orthant"}]
    return _zo(groups, optimizer, lr, mu, sampler, estimator, queries, clip, seed, **options)


def FirstOrder(model: nn.Module, lr: float = 1e-4, optimizer: str = "adam", params: str = "all",
               **options) -> torch.optim.Optimizer:
    """torch.optim.Adam / SGD with backprop (sets requires_grad); step after loss.backward().

    params: "all" = every float parameter (full fine-tuning); "scales" = the
    quantization scales only, what QZO / HoZO train, with exact gradients."""
    if params not in ("all", "scales"):
        raise ConfigError(f"params: unknown {params!r}; choose 'all' or 'scales'")
    params = float_params(model) if params == "all" else _scales_or_fail(model, "FirstOrder(params='scales')")
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
