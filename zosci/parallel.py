"""Evaluate a black box at many points, serially or through an Executor.

Any ``concurrent.futures.Executor`` works: a ``ProcessPoolExecutor`` locally,
``dask.distributed.Client(...).get_executor()`` on a cluster. Results come
back in order; a ``QueryError`` raised by one evaluation is returned in its
place (the estimators drop or resample that query), anything else propagates.
All randomness is drawn before evaluation, so results never depend on the
executor.
"""
from __future__ import annotations

from concurrent.futures import Executor
from typing import Any, Callable, Sequence

from .errors import QueryError


def _call(fn, arg):
    try:
        return fn(arg)
    except QueryError as err:
        return err


def evaluate(fn: Callable[[Any], Any], points: Sequence[Any], executor: Executor | None = None) -> list:
    """[fn(p) for p in points], with QueryError instances in place of failures."""
    if executor is None:
        return [_call(fn, p) for p in points]
    futures = [executor.submit(fn, p) for p in points]
    out = []
    for fut in futures:
        try:
            out.append(fut.result())
        except QueryError as err:
            out.append(err)
    return out
