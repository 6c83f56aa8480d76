"""Benchmark: quantized zeroth-order fine-tuning (MeZO, QZO, HoZO) against backprop.

    python -m zosci.bench llm [--passes 200] [--quick] [--device cpu|cuda] [--model-config minilm|opt-1.3b]

(1) accuracy on SST-2 test after the same number of forward passes (a ZO
    step with the forward estimator = 2 passes; a backprop step = 1 pass, its
    backward not counted), from the same start: the MiniLM-L6 checkpoint with a
    prototype head built from the 16-shot features (the checkpoint has no
    classifier); "zero-shot" rows are that start, before any step;
(2) peak memory of one step against inference (llm.memory.peak_memory: glibc
    heap in use sampled after every aten op, plus the weights' bytes), and
    weight bytes int4 / fp32;
(3) time of a ZO step over one forward pass (median of repeats).
With --device cuda --model-config opt-1.3b, (2) and (3) run on a randomly
initialised OPT-1.3B-sized causal LM (no accuracy).
"""
from __future__ import annotations

import argparse
import copy
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from zosci import llm  # noqa: E402
from zosci.llm.case import data_root  # noqa: E402
from zosci.llm.train import forward_passes, prototype_head  # noqa: E402

HYPER = {  # the shipped cases' settings
    "mezo": dict(lr=1e-4, mu=1e-3),
    "qzo": dict(lr=1e-6, mu=2e-4, clip=100.0),  # dev-tuned: 1e-4 diverges, 1e-5 raises dev loss
    "hozo": dict(lr=5e-2, mu=1e-2),
    "first-order": dict(lr=1e-4),
}


def _to(batch, device):
    return {k: v.to(device) for k, v in batch.items()}


def _timed(fn, repeats):
    fn()  # warm up
    out = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        out.append(time.perf_counter() - t)
    return statistics.median(out)


def accuracy_table(model_fp32, train, test, passes, batch_size, seed):
    rows = []
    int4 = llm.quantize(copy.deepcopy(model_fp32), bits=4, group_size=64)
    rows.append(("zero-shot fp32", 0, llm.evaluate(model_fp32, test, progress=True)))
    rows.append(("zero-shot int4", 0, llm.evaluate(int4, test, progress=True)))
    for method, base in (("mezo", model_fp32), ("qzo", int4), ("hozo", int4), ("first-order", model_fp32)):
        model = copy.deepcopy(base)
        opt = llm.build(method, model, **HYPER[method], **({} if method == "first-order" else {"seed": seed}))
        batches = llm.Batches(train, batch_size, seed)
        spent, steps = 0, 0
        t = time.perf_counter()
        bar = llm.train.tqdm(total=passes, desc=method, leave=False)
        while spent < passes:
            sentences, labels = batches.next()
            llm.train_step(model, opt, sentences, labels)
            steps += 1
            spent += forward_passes(opt)
            bar.update(forward_passes(opt))
        bar.close()
        seconds = time.perf_counter() - t
        label = f"{method} {'int4' if method in ('qzo', 'hozo') else 'fp32'}"
        rows.append((label, steps, {**llm.evaluate(model, test, progress=True), "seconds": seconds}))
    return rows


def memory_and_speed(model_fp32, sentences, labels, device, repeats):
    """Peak memory and times of inference, ZO steps and a backprop step."""
    out = {}
    int4 = llm.quantize(copy.deepcopy(model_fp32), bits=4, group_size=64)
    out["weights_fp32"] = llm.weight_bytes(model_fp32)
    out["weights_int4"] = llm.weight_bytes(int4)
    out["linear_fp32"] = llm.weight_bytes(model_fp32, linear_only=True)
    out["linear_int4"] = llm.weight_bytes(int4, linear_only=True)
    labels = labels.to(device)
    for name, model, method in (("fp32", model_fp32, "mezo"), ("int4", int4, "hozo"), ("int4", int4, "qzo")):
        batch = _to(model.encode(sentences), device)
        closure = llm.closure_for(model, batch, labels)
        opt = llm.build(method, model, **HYPER[method])
        out[f"infer_{name}"] = llm.peak_memory(closure, model, device)
        out[f"step_{method}"] = llm.peak_memory(lambda: opt.step(closure), model, device)
        out[f"t_forward_{name}"] = _timed(closure, repeats)
        out[f"t_step_{method}"] = _timed(lambda: opt.step(closure), repeats)
    fo_model = copy.deepcopy(model_fp32)
    opt = llm.FirstOrder(fo_model, **HYPER["first-order"])
    batch = _to(fo_model.encode(sentences), device)

    def backprop():
        opt.zero_grad(set_to_none=False)
        fo_model.loss(batch, labels).backward()
        opt.step()
    out["step_first-order"] = llm.peak_memory(backprop, fo_model, device)
    out["t_step_first-order"] = _timed(backprop, repeats)
    return out


def format_report(args, acc, mem, elapsed) -> str:
    mb = 1e6
    lines = ["## LLM: quantized zeroth-order fine-tuning (`zosci.llm`)", "",
             f"Command: `{' '.join(['python -m zosci.bench llm'] + (args.argv or []))}` "
             f"({args.device}, torch {torch.__version__}, {torch.get_num_threads()} threads; {elapsed:.0f} s).", ""]
    if acc:
        lines += [f"### Accuracy on SST-2 {args.eval_split} ({acc[0][2].get('n', '')} sentences), "
                  f"{args.passes} forward passes, 16-shot, batch {args.batch_size}, seed {args.seed}", "",
                  "| method | steps | accuracy | test loss | train time (s) |", "|---|---|---|---|---|"]
        for label, steps, r in acc:
            lines.append(f"| {label} | {steps} | {r['accuracy']:.4f} | {r['loss']:.4f} | "
                         f"{r.get('seconds', 0):.1f} |")
        lines.append("")
    lines += [f"### Memory and time ({args.model_config}, batch {args.batch_size})", "",
              f"Weights: fp32 {mem['weights_fp32'] / mb:.1f} MB, int4 {mem['weights_int4'] / mb:.1f} MB "
              f"(x{mem['weights_int4'] / mem['weights_fp32']:.3f}; embeddings, LayerNorms, biases and the head "
              f"stay float). Linear weight matrices only: fp32 {mem['linear_fp32'] / mb:.1f} MB, int4 "
              f"{mem['linear_int4'] / mb:.1f} MB (x{mem['linear_int4'] / mem['linear_fp32']:.3f}; target <= 0.2).",
              "", "| measurement | peak (MB) | above weights (MB) | x inference | time (ms) | x forward |",
              "|---|---|---|---|---|---|"]
    for key, infer, tkey, fkey in (("infer_fp32", "infer_fp32", "t_forward_fp32", "t_forward_fp32"),
                                   ("step_mezo", "infer_fp32", "t_step_mezo", "t_forward_fp32"),
                                   ("step_first-order", "infer_fp32", "t_step_first-order", "t_forward_fp32"),
                                   ("infer_int4", "infer_int4", "t_forward_int4", "t_forward_int4"),
                                   ("step_qzo", "infer_int4", "t_step_qzo", "t_forward_int4"),
                                   ("step_hozo", "infer_int4", "t_step_hozo", "t_forward_int4")):
        m = mem[key]
        lines.append(f"| {key} | {m['peak'] / mb:.1f} | {m['extra'] / mb:.1f} | {m['peak'] / mem[infer]['peak']:.3f} "
                     f"| {mem[tkey] * 1e3:.0f} | {mem[tkey] / mem[fkey]:.2f} |")
    lines += ["", "Targets: ZO step peak <= 1.1x inference; int4 Linear weights <= 0.2x fp32; ZO step time "
              "<= 2.2x a forward pass.", ""]
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m zosci.bench llm", description=__doc__.split("\n")[0])
    p.add_argument("--passes", type=int, default=200, help="forward-pass budget of each fine-tuning method")
    p.add_argument("--steps", type=int, default=None, help="ZO steps (sets --passes to 2 x steps)")
    p.add_argument("--quick", action="store_true", help="40 passes, 200 test sentences")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--eval-split", default="test", choices=["test", "dev"])
    p.add_argument("--eval-limit", type=int, default=0, help="first N evaluation sentences; 0 = all")
    p.add_argument("--data", default="../shared/data/sst2")
    p.add_argument("--device", default="cpu")
    p.add_argument("--model-config", default="minilm", choices=["minilm", *llm.models.CONFIGS])
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="also write the report (markdown) to this file")
    args = p.parse_args(argv)
    args.argv = list(argv if argv is not None else sys.argv[1:])
    if args.steps:
        args.passes = 2 * args.steps
    if args.quick:
        args.passes, args.eval_limit = 40, args.eval_limit or 200
    t0 = time.perf_counter()
    root = data_root(args.data)
    train = llm.few_shot(llm.load_sst2(root, "train"), 16, args.seed)
    acc = []
    if args.model_config == "minilm":
        model = llm.load("minilm", task="sequence-classification", seed=args.seed)
        prototype_head(model, train)
        test = llm.load_sst2(root, args.eval_split)
        test = test[:args.eval_limit] if args.eval_limit else test
        if args.device == "cpu":
            acc = accuracy_table(model, train, test, args.passes, args.batch_size, args.seed)
            for row in acc:
                row[2]["n"] = len(test)
    else:
        folder = llm.models.random_model(Path(tempfile.mkdtemp()) / args.model_config, "opt", args.model_config)
        model = llm.load(folder, task="causal-lm")
    model.to(args.device)
    sentences = [s for s, _ in train[:args.batch_size]]
    labels = torch.tensor([y for _, y in train[:args.batch_size]])
    mem = memory_and_speed(model, sentences, labels, args.device, args.repeats)
    report = format_report(args, acc, mem, time.perf_counter() - t0)
    print(report)
    if args.out:
        Path(args.out).write_text(report)
        print(f"written: {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
