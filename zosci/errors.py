"""Exceptions shared by the core and the black boxes it queries."""


class QueryError(RuntimeError):
    """A black-box evaluation failed (solver divergence, inverted cell, ...).

    Estimators treat it as a lost query: they resample or drop the direction,
    count it, and log it. Any other exception is a bug and propagates.
    """


class ConfigError(ValueError):
    """A case file or argument is invalid; the message names the field and the fix."""
