"""One training step (ZO or backprop) and evaluation, as plain functions."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm


def closure_for(model: nn.Module, batch: dict, labels: torch.Tensor):
    """closure() -> cross-entropy loss (float) of model's current weights on one batch, no backward;
    closure.input_ids are the token ids its forward reads."""
    def closure():
        with torch.no_grad():
            return float(model.loss(batch, labels))
    closure.input_ids = batch.get("input_ids")  # the embedding rows it reads (MeZO's sparse_embeddings)
    return closure


def train_step(model: nn.Module, opt, sentences, labels: torch.Tensor) -> float:
    """One step on a minibatch; returns the loss at the weights before the update.

    ZO optimizers (zosci.optim) call the closure (2 forwards with the forward or
    central estimator); for an estimator without f(x) (central) the returned loss
    is the mean of the closure's values, f(x) + O(mu^2). torch optimizers do
    forward + backward + step."""
    batch = model.encode(sentences)
    if isinstance(opt, torch.optim.Optimizer) and not hasattr(opt, "estimator"):
        opt.zero_grad(set_to_none=True)
        loss = model.loss(batch, labels)
        loss.backward()
        opt.step()
        return float(loss.detach())
    closure, values = closure_for(model, batch, labels), []

    def recording():
        values.append(closure())
        return values[-1]
    recording.input_ids = closure.input_ids
    loss = opt.step(recording)
    return float(loss) if loss is not None else sum(values) / len(values)


@torch.no_grad()
def evaluate(model: nn.Module, examples, batch_size: int = 64, progress: bool = False) -> dict:
    """{'accuracy', 'loss'} of model on [(sentence, label)]."""
    correct, total_loss = 0, 0.0
    chunks = range(0, len(examples), batch_size)
    for i in tqdm(chunks, desc="eval", leave=False, disable=not progress):
        part = examples[i:i + batch_size]
        logits = model.class_logits(model.encode([s for s, _ in part])).float()
        labels = torch.tensor([y for _, y in part], device=logits.device)
        total_loss += float(torch.nn.functional.cross_entropy(logits, labels, reduction="sum"))
        correct += int((logits.argmax(dim=1) == labels).sum())
    return {"accuracy": correct / len(examples), "loss": total_loss / len(examples)}


def forward_passes(opt) -> int:
    """Closure calls of the last ZO step (1 forward for a backprop step)."""
    info = getattr(opt, "last_info", None)
    return info.evaluations if info is not None else 1


@torch.no_grad()
def sentence_features(model: nn.Module, examples, batch_size: int = 64) -> torch.Tensor:
    """h (N, D): the features the sequence-classification head reads, for [(sentence, label)]."""
    return torch.cat([model.features(model.encode([s for s, _ in examples[i:i + batch_size]])).float().cpu()
                      for i in range(0, len(examples), batch_size)])


@torch.no_grad()
def prototype_head(model: nn.Module, examples, scale: float = 10.0, features=None) -> None:
    """Set the sequence-classification head from class means of its input features (no training).

    With h the head's input (the pooled features) and m_c the mean of h over
    the examples of class c, m = mean_c m_c: W_c = scale (m_c - m) / ||m_c - m||,
    b_c = -W_c . m, so z_c grows with the projection of h - m on class c's direction.
    Fit it on the model that is trained (after quantization)."""
    head = model.head_layer()
    h = sentence_features(model, examples) if features is None else features
    labels = torch.tensor([y for _, y in examples])
    means = torch.stack([h[labels == c].mean(dim=0) for c in range(head.out_features)])
    center = means.mean(dim=0)
    w = (means - center)
    w = scale * w / w.norm(dim=1, keepdim=True).clamp_min(1e-12)
    head.weight.copy_(w.to(head.weight.dtype))
    head.bias.copy_((-(w @ center)).to(head.bias.dtype))


def best_scale(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """s > 0 minimising the cross entropy of s z (temperature scaling; convex in s):
    golden-section search on log s in [-6, 9]."""
    def loss(log_s):
        return float(F.cross_entropy(math.exp(log_s) * logits.double(), labels))
    lo, hi, r = -6.0, 9.0, (math.sqrt(5) - 1) / 2
    for _ in range(60):
        a, b = hi - r * (hi - lo), lo + r * (hi - lo)
        lo, hi = (lo, b) if loss(a) <= loss(b) else (a, hi)
    return math.exp((lo + hi) / 2)


@torch.no_grad()
def calibrate_head(model: nn.Module, examples, features=None) -> float:
    """Multiply the head (W, b) by the s of best_scale on examples (dev); returns s."""
    head = model.head_layer()
    h = sentence_features(model, examples) if features is None else features
    logits = head(h.to(head.weight.device, head.weight.dtype)).float().cpu()
    s = best_scale(logits, torch.tensor([y for _, y in examples]))
    head.weight.mul_(s)
    head.bias.mul_(s)
    return s


def fit_head(model: nn.Module, features: torch.Tensor, labels: torch.Tensor, weight_decay: float = 0.0,
             iterations: int = 100, bias_only: bool = False) -> None:
    """Linear probe: the head minimising mean CE(W h + b, y) + weight_decay / 2 ||W||^2 on frozen
    features (full-batch L-BFGS from the current head; backprop through the head only). bias_only:
    W stays, only b (the class prior) is fitted."""
    head = model.head_layer()
    w = head.weight.detach().cpu().double().requires_grad_(not bias_only)
    b = head.bias.detach().cpu().double().requires_grad_(True)
    h = features.cpu().double()
    opt = torch.optim.LBFGS([b] if bias_only else [w, b], max_iter=iterations, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(h @ w.T + b, labels.cpu()) + 0.5 * weight_decay * (w * w).sum()
        loss.backward()
        return loss
    opt.step(closure)
    with torch.no_grad():
        head.weight.copy_(w.to(head.weight.dtype))
        head.bias.copy_(b.to(head.bias.dtype))
