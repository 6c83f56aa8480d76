"""zosci: scientific optimization through black boxes.

Backpropagate through everything differentiable, estimate only the black box's
Jacobian with zeroth-order estimators (zosci.samplers, zosci.estimators).
"""
from . import estimators, optim, orthant, samplers
from .errors import ConfigError, QueryError
from .audit import audit
from .gradient import estimate_gradient
from .hybrid import BlackBox
from .orthant import estimate_orthant_gradient

__version__ = "0.1.0"
__all__ = ["estimate_gradient", "BlackBox", "audit", "estimate_orthant_gradient", "optim", "orthant", "samplers", "estimators",
           "QueryError", "ConfigError"]
