"""Batches of solves through any `concurrent.futures.Executor`.

`SolverPool(solver, max_workers)` is a local process-pool Executor whose workers
(spawned, one thread each) unpickle the solver once in their initializer and keep it.
If a worker dies, the inner pool is rebuilt and every unfinished task is resubmitted,
so a batch loses no result. `solve_batch(solver, kwargs_list, executor)` returns results
in input order; with a foreign executor (e.g. Dask's `client.get_executor()`, whose
scheduler retries tasks of dead workers) the lazily-picklable solver travels with each
task and workers cache the built solver by its token.
"""
import functools
import multiprocessing
import os
import pickle
import threading
import uuid
from concurrent.futures import Executor, Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool

from zosci.parallel import evaluate

from .errors import SolverError

_WORKER_SOLVER = None
_CACHE = {}
_THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


def _init_worker(payload):
    global _WORKER_SOLVER
    _WORKER_SOLVER = pickle.loads(payload)


def _pool_solve(kwargs):
    """Runs in a SolverPool worker: solve with the worker's own solver."""
    return _WORKER_SOLVER.solve(**kwargs)


def _solve_with(token, solver, kwargs):
    """Runs in any worker: reuse the solver built for `token` in this process."""
    cached = _CACHE.get(token)
    if cached is None:
        _CACHE.clear()
        _CACHE[token] = cached = solver
    return cached.solve(**kwargs)


class _SolveIn:
    """kwargs -> solver.solve(**kwargs), serially in this process."""

    def __init__(self, solver):
        self.solver = solver

    def __call__(self, kwargs):
        return self.solver.solve(**kwargs)


def solver_token(solver):
    """A per-object token so workers build each solver once (assigned on first use)."""
    tok = getattr(solver, "_pool_token", None)
    if tok is None:
        tok = solver._pool_token = uuid.uuid4().hex
    return tok


class SolverPool(Executor):
    """Process pool whose workers each hold one solver; survives worker deaths.

    submit(fn, *args) runs fn(*args) in a worker (fn=None or `solve_kwargs(...)` runs a
    solve); `pool.solve(**kwargs)` submits one solve. Tasks of a dead worker are retried
    (up to `max_retries` times each) on a rebuilt pool.
    """

    def __init__(self, solver, max_workers=2, max_retries=3):
        if callable(solver) and not hasattr(solver, "solve"):
            solver = solver()
        self._payload = pickle.dumps(solver)
        self.max_workers = max_workers
        self.max_retries = max_retries
        self._lock = threading.RLock()
        self._pending = {}  # outer future -> (fn, args, tries)
        self._generation = 0
        self._shutdown = False
        for var in _THREAD_VARS:  # spawned workers inherit this: one BLAS/OpenMP thread per worker
            os.environ.setdefault(var, "1")
        self._pool = self._new_pool()

    def _new_pool(self):
        return ProcessPoolExecutor(self.max_workers, mp_context=multiprocessing.get_context("spawn"),
                                   initializer=_init_worker, initargs=(self._payload,))

    def worker_pids(self):
        """PIDs of the current worker processes (started lazily by the first tasks)."""
        with self._lock:
            return [p.pid for p in (self._pool._processes or {}).values()]

    def submit(self, fn, /, *args, **kwargs):
        if kwargs:
            raise TypeError("SolverPool.submit takes positional arguments; use pool.solve(**kwargs) for solves")
        with self._lock:
            if self._shutdown:
                raise RuntimeError("cannot submit to a SolverPool after shutdown")
            outer = Future()
            self._pending[outer] = [fn, args, 0]
            self._dispatch(outer)
            return outer

    def solve(self, **kwargs):
        """Submit one `solver.solve(**kwargs)` to a worker."""
        return self.submit(_pool_solve, kwargs)

    def _dispatch(self, outer):
        fn, args, _ = self._pending[outer]
        gen = self._generation
        try:
            inner = self._pool.submit(fn, *args)
        except (BrokenProcessPool, RuntimeError):
            self._restart(gen)
            inner = self._pool.submit(fn, *args)
            gen = self._generation
        inner.add_done_callback(lambda f, o=outer, g=gen: self._done(o, f, g))

    def _restart(self, gen):
        """Replace a broken inner pool (once per generation)."""
        with self._lock:
            if gen == self._generation and not self._shutdown:
                old = self._pool
                self._generation += 1
                self._pool = self._new_pool()
                old.shutdown(wait=False, cancel_futures=True)

    def _done(self, outer, inner, gen):
        exc = inner.exception()
        with self._lock:
            if isinstance(exc, BrokenProcessPool) and not self._shutdown:
                item = self._pending[outer]
                item[2] += 1
                if item[2] <= self.max_retries:
                    self._restart(gen)
                    self._dispatch(outer)
                    return
            self._pending.pop(outer, None)
        if exc is None:
            outer.set_result(inner.result())
        else:
            outer.set_exception(exc)

    def shutdown(self, wait=True, *, cancel_futures=False):
        with self._lock:
            self._shutdown = True
            pool = self._pool
        pool.shutdown(wait=wait, cancel_futures=cancel_futures)


def solve_batch(solver, kwargs_list, executor=None, errors="return"):
    """Run `solver.solve(**kw)` for every kw, in order.

    executor: None (serial, in this process), a `SolverPool` (its own solver is used),
    or any concurrent.futures.Executor (e.g. Dask's). errors: "return" puts the
    SolverError object in the result list, "raise" re-raises the first one.
    Exceptions other than SolverError always propagate (they are bugs).
    """
    if errors not in ("return", "raise"):
        raise ValueError(f"errors={errors!r}: use 'return' or 'raise'")
    kwargs_list = list(kwargs_list)
    if executor is None:
        fn = _SolveIn(solver)
    elif isinstance(executor, SolverPool):
        fn = _pool_solve  # the pool's workers hold their own solver
    else:
        fn = functools.partial(_solve_with, solver_token(solver), solver)
    out = evaluate(fn, kwargs_list, executor)
    if errors == "raise":
        for r in out:
            if isinstance(r, SolverError):
                raise r
    return out


def dask_executor(n_workers=2):
    """A local Dask cluster (processes, one thread each) and its Executor: returns (client, executor).

    Dask treats submitted calls as pure: identical calls (same solver, same kwargs) share one task.
    `client.get_executor(pure=False)` runs every call.
    """
    from dask.distributed import Client, LocalCluster

    cluster = LocalCluster(n_workers=n_workers, processes=True, threads_per_worker=1, dashboard_address=None)
    client = Client(cluster)
    return client, client.get_executor()
