"""Batches through SolverPool and Dask: ordered, complete, equal to serial, robust to a killed worker."""
import os
import signal
import time

import numpy as np
import pytest

from zosci.solvers import PotentialFlow, SolverError, SolverPool, naca_mesh, solve_batch


@pytest.fixture(scope="module")
def batch():
    solver = PotentialFlow(naca_mesh("0012", n_airfoil=40))
    x = solver.mesh.points
    rng = np.random.default_rng(0)
    interior = solver.mesh.node_type() == 0
    w = np.exp(-np.sum((x - [0.5, 0.0]) ** 2, axis=1) / 0.1) * interior
    kws = [dict(aoa=float(a), mach=0.5, coords=x + 1e-3 * rng.standard_normal(2) * w[:, None])
           for a in np.linspace(-3, 3, 10)]
    serial = solve_batch(solver, kws)
    return solver, kws, serial


def _same(results, serial):
    assert len(results) == len(serial)
    for r, s in zip(results, serial):
        assert r.cl == pytest.approx(s.cl, rel=1e-9, abs=1e-12)
        assert np.allclose(r.fields, s.fields, rtol=1e-9, atol=1e-10)


def _kill_during(executor_batch, pids_fn, first_done):
    """Run the batch in a thread, kill one worker once a first result exists."""
    import threading

    out = {}
    th = threading.Thread(target=lambda: out.setdefault("r", executor_batch()))
    th.start()
    t0 = time.time()
    while not first_done() and time.time() - t0 < 120:
        time.sleep(0.05)
    pids = pids_fn()
    assert pids and th.is_alive(), "batch finished before a worker could be killed"
    os.kill(pids[0], signal.SIGKILL)
    th.join(300)
    return out["r"]


@pytest.mark.slow
def test_solver_pool_survives_killed_worker(batch):
    solver, kws, serial = batch
    with SolverPool(solver, max_workers=2) as pool:
        _same(solve_batch(solver, kws, executor=pool), serial)  # warm-up also starts the workers
        futures = []

        def run():
            futures.extend(pool.solve(**kw) for kw in kws)
            return [f.result() for f in futures]

        results = _kill_during(run, pool.worker_pids, lambda: any(f.done() for f in futures))
        assert pool._generation >= 1  # the pool really was rebuilt
    _same(results, serial)


def test_errors_returned_or_raised(batch):
    solver, kws, serial = batch
    bad = [kws[0], dict(aoa=0.0, mach=1.5), kws[1]]
    with SolverPool(solver, max_workers=2) as pool:
        out = solve_batch(solver, bad, executor=pool)
        assert isinstance(out[1], SolverError) and "subsonic" in str(out[1])
        _same([out[0], out[2]], serial[:2])
        with pytest.raises(SolverError, match="subsonic"):
            solve_batch(solver, bad, executor=pool, errors="raise")
    assert isinstance(solve_batch(solver, bad)[1], SolverError)  # serial path too


def _keys_in_memory(dask_scheduler):
    return [str(k) for k, ts in dask_scheduler.tasks.items() if ts.state == "memory"]


@pytest.mark.slow
def test_dask_survives_killed_worker(batch):
    pytest.importorskip("dask.distributed")
    from zosci.solvers import dask_executor

    solver, kws, serial = batch
    client, ex = dask_executor(n_workers=2)
    try:
        _same(solve_batch(solver, kws, executor=ex), serial)
        pids = list(client.run(os.getpid).values())
        # Dask runs identical pure calls once; pure=False makes each of the 40 solves a task of its own
        every = client.get_executor(pure=False)
        before = set(client.run_on_scheduler(_keys_in_memory))

        def first_done():
            return bool(set(client.run_on_scheduler(_keys_in_memory)) - before)

        results = _kill_during(lambda: solve_batch(solver, kws * 4, executor=every), lambda: pids, first_done)
        assert set(client.run(os.getpid).values()) != set(pids)  # a worker was really replaced
        _same(results, serial * 4)
    finally:
        client.close()
        client.cluster.close()
