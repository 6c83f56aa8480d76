"""Zeroth-order optimizers in the torch.optim style."""
from .adam import ZOAdam
from .base import ZOOptimizer
from .sgd import ZOSGD

__all__ = ["ZOSGD", "ZOAdam", "ZOOptimizer"]
