"""One training step (ZO or backprop) and evaluation, as plain functions."""
from __future__ import annotations

import torch
from torch import nn
from tqdm.auto import tqdm


def closure_for(model: nn.Module, batch: dict, labels: torch.Tensor):
    """closure() -> cross-entropy loss (float) of model's current weights on one batch, no backward."""
    def closure():
        with torch.no_grad():
            return float(model.loss(batch, labels))
    return closure


def train_step(model: nn.Module, opt, sentences, labels: torch.Tensor) -> float:
    """One step on a minibatch; returns the loss at the weights before the update.

    ZO optimizers (zosci.optim) call the closure (2 forwards with the forward
    estimator); torch optimizers do forward + backward + step."""
    batch = model.encode(sentences)
    if isinstance(opt, torch.optim.Optimizer) and not hasattr(opt, "estimator"):
        opt.zero_grad(set_to_none=True)
        loss = model.loss(batch, labels)
        loss.backward()
        opt.step()
        return float(loss.detach())
    loss = opt.step(closure_for(model, batch, labels))
    return float(loss) if loss is not None else float("nan")


@torch.no_grad()
def evaluate(model: nn.Module, examples, batch_size: int = 64, progress: bool = False) -> dict:
    """{'accuracy', 'loss'} of model on [(sentence, label)]."""
    correct, total_loss = 0, 0.0
    chunks = range(0, len(examples), batch_size)
    for i in tqdm(chunks, desc="eval", leave=False, disable=not progress):
        part = examples[i:i + batch_size]
        labels = torch.tensor([y for _, y in part])
        logits = model.class_logits(model.encode([s for s, _ in part])).float()
        total_loss += float(torch.nn.functional.cross_entropy(logits, labels, reduction="sum"))
        correct += int((logits.argmax(dim=1) == labels).sum())
    return {"accuracy": correct / len(examples), "loss": total_loss / len(examples)}


def forward_passes(opt) -> int:
    """Closure calls of the last ZO step (1 forward for a backprop step)."""
    info = getattr(opt, "last_info", None)
    return info.evaluations if info is not None else 1


@torch.no_grad()
def prototype_head(model: nn.Module, examples, scale: float = 10.0) -> None:
    """Set a sequence-classification head from class means of its input features (no training).

    With h the head's input (the pooled features) and m_c the mean of h over
    the examples of class c, m = mean_c m_c: W_c = scale (m_c - m) / ||m_c - m||,
    b_c = -W_c . m, so z_c grows with the projection of h - m on class c's direction."""
    from zosci.errors import ConfigError
    head = getattr(model.hf, "classifier", None)
    if model.task != "sequence-classification" or not isinstance(head, nn.Linear):
        raise ConfigError("model.head_init: 'prototype' needs task = 'sequence-classification' with a Linear "
                          "`classifier` (BERT-like); use head_init = 'random'")
    feats = []
    hook = head.register_forward_hook(lambda mod, args, out: feats.append(args[0].detach()))
    try:
        model.class_logits(model.encode([s for s, _ in examples]))
    finally:
        hook.remove()
    h, labels = feats[0].float(), torch.tensor([y for _, y in examples])
    means = torch.stack([h[labels == c].mean(dim=0) for c in range(head.out_features)])
    center = means.mean(dim=0)
    w = (means - center)
    w = scale * w / w.norm(dim=1, keepdim=True).clamp_min(1e-12)
    head.weight.copy_(w.to(head.weight.dtype))
    head.bias.copy_((-(w @ center)).to(head.bias.dtype))
