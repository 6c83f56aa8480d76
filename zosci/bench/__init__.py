"""Benchmarks: ``python -m zosci.bench NAME [options]`` (not tests).

Each prints a table whose ratios are measured side by side in one run and
says where its plots went; results are recorded in BENCHMARKS.md.
"""
BENCHMARKS = {
    "estimators": "synthetic studies of the samplers and estimators (Ma & Huang 2025)",
    "solvers": "time per solve, wrapper overhead, parallel speedup of the CFD solvers",
    "hybrid": "gradient audit through the solver and mesh adaptation against CMA-ES / Powell / FD",
    "mesh": "the DAP paper's Poisson mesh problem: hybrid vs plain ZO vs exact gradient at equal solver calls",
    "cfd_gcn": "CFD-GCN test MSE with and without the solver, fixed vs ZO-adapted mesh",
    "llm": "quantized LLM fine-tuning: accuracy, memory and step time of MeZO / QZO / HoZO",
}
