"""Benchmark: zeroth-order fine-tuning of MiniLM-L6 on SST-2 (MeZO, QZO, HoZO) against backprop.

    python -m zosci.bench llm [--protocol A B] [--steps 300] [--tune] [--quick] [--device cpu|cuda]

(1) Accuracy and loss on the 872 SST-2 test sentences, mean +- std over seeds,
    for two protocols (hyper-parameters chosen on dev sentences only):
    A = MeZO's few-shot protocol, k = 16 per class from train.tsv, seeds 0-4;
    B = ZO-Bench's, 1000 train sentences, seeds 0-2.
    Each seed draws its train set and 500 dev sentences from dev.tsv.
    Start (every row begins there): the checkpoint's pooled features (its
    sentence-transformers pooling), a prototype head fitted on the train
    features of the model that is trained (fp32, or after int4 quantization),
    then scaled by the s minimising the dev cross entropy (temperature
    scaling); its train loss is printed to show it is not saturated.
    Rows: the start; the start with its head bias refitted on the train
    features (the class prior alone); a linear probe (head by L-BFGS on frozen features, weight
    decay chosen on dev); first-order full fine-tuning (Adam, fp32); first-order
    on the int4 scales only (Adam: what QZO / HoZO train, with exact gradients,
    their ceiling at this budget); MeZO fp32,
    QZO int4, HoZO int4, HoZO int4 + DAP, all two-sided (2 forwards a step) with
    the same number of steps. ``--tune`` first picks each method's lr on
    protocol B seed 0 by the final dev loss. Train-loss curves (minibatch loss,
    10-step mean; PNG) go to --plots. ``--rows``/``--seed-list``/``--json`` split a
    run over processes; ``--merge`` reports the union of their seeds.
(2) Time of a step against a forward at batch 16 (median, interleaved), where
    a MeZO step's time goes (noise, moving weights, forwards), the estimate's
    delta and ||v||^2 for dense and sparse embeddings, and peak memory of a
    step against inference (llm.memory.peak_memory).
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import random
import statistics
import sys
import time
from pathlib import Path

import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from zosci import llm  # noqa: E402
from zosci.llm.case import data_root  # noqa: E402
from zosci.llm.train import (calibrate_head, fit_head, forward_passes, prototype_head,  # noqa: E402
                             sentence_features)
from zosci.plots import line_plot  # noqa: E402
from zosci.samplers import get_sampler  # noqa: E402

METHODS = {  # row -> (llm method, bits, options); lr from HYPER
    "first-order fp32": ("first-order", 0, {}),
    "first-order int4 scales": ("first-order", 4, {"params": "scales"}),
    "MeZO fp32": ("mezo", 0, {}),
    "QZO int4": ("qzo", 4, {"clip": 100.0}),
    "HoZO int4": ("hozo", 4, {}),
    "HoZO int4 + DAP": ("hozo", 4, {"sampler": "dap"}),
}
HYPER = {  # lr (chosen on dev by --tune, see BENCHMARKS.md; first-order not tuned), mu; two-sided, batch 16
    "first-order fp32": dict(lr=1e-5),
    "first-order int4 scales": dict(lr=1e-5),
    "MeZO fp32": dict(lr=3e-5, mu=1e-3),
    "QZO int4": dict(lr=3e-6, mu=1e-3),
    "HoZO int4": dict(lr=1e-2, mu=1e-2),
    "HoZO int4 + DAP": dict(lr=1e-2, mu=1e-2),
}
GRID = {"first-order fp32": [3e-6, 1e-5, 3e-5], "first-order int4 scales": [3e-6, 1e-5, 3e-5],
        "MeZO fp32": [3e-5, 1e-4, 3e-4],
        "QZO int4": [1e-6, 3e-6, 1e-5], "HoZO int4": [1e-2, 3e-2, 1e-1], "HoZO int4 + DAP": [1e-2, 3e-2, 1e-1]}
PROTOCOLS = {"A": dict(k=16, seeds=[0, 1, 2, 3, 4]), "B": dict(n=1000, seeds=[0, 1, 2])}
WEIGHT_DECAYS = [0.0, 1e-4, 1e-3, 1e-2, 1e-1]
DEV_SIZE = 500


def protocol_data(root: Path, protocol: str, seed: int, train_all, dev_all):
    """(train, dev) of one seed: k-shot (A) or n sentences (B) from train.tsv; 500 dev sentences."""
    p = PROTOCOLS[protocol]
    train = llm.few_shot(train_all, p["k"], seed) if "k" in p else random.Random(seed).sample(train_all, p["n"])
    return train, random.Random(1000 + seed).sample(dev_all, DEV_SIZE)


def start_model(base, bits: int, train, dev, device):
    """The start: base (quantized when bits), prototype head on its train features, dev-calibrated scale.
    Returns (model, {'scale', 'train_loss'}, (train, dev) features)."""
    model = copy.deepcopy(base)
    if bits:
        llm.quantize(model, bits=bits, group_size=64)
    model.to(device)
    h_train, h_dev = sentence_features(model, train), sentence_features(model, dev)
    prototype_head(model, train, scale=1.0, features=h_train)
    scale = calibrate_head(model, dev, features=h_dev)
    head = model.head_layer()
    y = torch.tensor([lab for _, lab in train])
    with torch.no_grad():
        train_loss = float(torch.nn.functional.cross_entropy(head(h_train.to(head.weight.device)).float().cpu(), y))
    return model, {"scale": scale, "train_loss": train_loss}, (h_train, h_dev)


def head_eval(model, features, examples) -> dict:
    head = model.head_layer()
    with torch.no_grad():
        logits = head(features.to(head.weight.device)).float().cpu()
    y = torch.tensor([lab for _, lab in examples])
    return {"accuracy": float((logits.argmax(1) == y).float().mean()),
            "loss": float(torch.nn.functional.cross_entropy(logits, y))}


def prior_refit(start, h_train, train):
    """The start with only its head bias b refitted on the train features (W fixed): what fitting the class
    prior alone gives, a trivial baseline for the few directions a short ZO run can follow."""
    model = copy.deepcopy(start)
    fit_head(model, h_train, torch.tensor([lab for _, lab in train]), bias_only=True)
    return model


def linear_probe(start, feats, train, dev):
    """Head fitted by L-BFGS on frozen features; weight decay chosen by dev loss."""
    (h_train, h_dev), y = feats, torch.tensor([lab for _, lab in train])
    best = None
    for wd in WEIGHT_DECAYS:
        model = copy.deepcopy(start)
        fit_head(model, h_train, y, weight_decay=wd)
        loss = head_eval(model, h_dev, dev)["loss"]
        if best is None or loss < best[0]:
            best = (loss, wd, model)
    return best[2], best[1]


def checkpoint(model, step: int, dev, test) -> dict:
    """Dev and test loss / accuracy at one step (test kept for the step chosen on dev only)."""
    d, t = llm.evaluate(model, dev), llm.evaluate(model, test)
    return {"step": step, "dev_loss": d["loss"], "dev_accuracy": d["accuracy"], "test_loss": t["loss"],
            "test_accuracy": t["accuracy"]}


def fine_tune(start, row: str, lr: float, train, steps: int, batch_size: int, seed: int, eval_every: int = 0,
              dev=None, test=None):
    """Train a copy of start with row's method; returns (model, seconds, forward passes, train-loss curve,
    checkpoints): with eval_every, dev and test loss / accuracy every eval_every steps and at the end."""
    method, _, options = METHODS[row]
    model = copy.deepcopy(start)
    hyper = {**HYPER[row], **options, "lr": lr}
    opt = llm.build(method, model, **hyper, **({} if method == "first-order" else {"seed": seed}))
    batches = llm.Batches(train, batch_size, seed)
    curve, passes, seconds = [], 0, 0.0
    checkpoints = [checkpoint(model, 0, dev, test)] if eval_every else []  # the start: step 0 may be the best
    for step in llm.train.tqdm(range(1, steps + 1), desc=f"{row} lr {lr:g}", leave=False):
        sentences, labels = batches.next()
        t = time.perf_counter()
        curve.append(llm.train_step(model, opt, sentences, labels))
        seconds += time.perf_counter() - t
        passes += forward_passes(opt)
        if eval_every and (step % eval_every == 0 or step == steps):
            checkpoints.append(checkpoint(model, step, dev, test))
    if method == "first-order":
        for p in llm.float_params(model):
            p.requires_grad_(False)
    return model, seconds, passes, curve, checkpoints


def best_step(checkpoint_lists) -> int:
    """The budget chosen on dev: the checkpoint step with the lowest dev loss averaged over the runs."""
    steps = [c["step"] for c in checkpoint_lists[0]]
    mean = [statistics.mean(cs[k]["dev_loss"] for cs in checkpoint_lists) for k in range(len(steps))]
    return steps[min(range(len(steps)), key=mean.__getitem__)]


def smooth(curve, window: int = 10):
    """(steps, moving average of the minibatch losses over `window` steps)."""
    out = [sum(curve[max(0, i - window + 1):i + 1]) / len(curve[max(0, i - window + 1):i + 1])
           for i in range(len(curve))]
    return list(range(1, len(curve) + 1)), out


def tune(args, root, train_all, dev_all, base):
    """lr of each method: the grid value with the lowest final dev loss, protocol B seed 0."""
    train, dev = protocol_data(root, "B", 0, train_all, dev_all)
    starts = {bits: start_model(base, bits, train, dev, args.device)[0] for bits in (0, 4)}
    table, chosen = [], {}
    for row in args.tune_rows or list(METHODS):
        bits, curves = METHODS[row][1], {}
        start_loss = llm.evaluate(starts[bits], dev)["loss"]
        for lr in GRID[row]:
            model, _, _, curve, checkpoints = fine_tune(starts[bits], row, lr, train, args.tune_steps or args.steps,
                                                        args.batch_size, 0, args.eval_every, dev, dev)
            ev = llm.evaluate(model, dev)
            if checkpoints:  # the best checkpoint on dev (the budget is chosen with the lr)
                best = min(checkpoints, key=lambda c: c["dev_loss"])
                ev = {"accuracy": best["dev_accuracy"], "loss": best["dev_loss"], "step": best["step"]}
            table.append((row, lr, ev["accuracy"], ev["loss"], start_loss))
            print(f"[tune] {row} lr {lr:g}: dev {ev['accuracy']:.4f} / {ev['loss']:.4f} (start loss "
                  f"{start_loss:.4f}){' at step %d' % ev['step'] if 'step' in ev else ''}", flush=True)
            curves[f"lr {lr:g}"] = smooth(curve)
            if row not in chosen or ev["loss"] < chosen[row][1]:
                chosen[row] = (lr, ev["loss"])
        if args.plots:
            line_plot(Path(args.plots) / f"tune_{row.replace(' ', '_').replace('+', 'plus')}.png", curves,
                      xlabel="step", ylabel="train minibatch loss (10-step mean)",
                      title=f"{row}: lr grid (protocol B, seed 0)")
    return {**{row: h["lr"] for row, h in HYPER.items()}, **{row: lr for row, (lr, _) in chosen.items()}}, table


def run_protocol(args, protocol, root, train_all, dev_all, test, base, lrs):
    """{row: [per-seed result dicts]} for one protocol."""
    results: dict[str, list] = {}
    curves: dict[str, dict] = {}
    rows = args.rows or ["start", "linear probe fp32", *METHODS]
    for seed in (args.seed_list or PROTOCOLS[protocol]["seeds"][:args.seeds]):
        if args.deadline and time.perf_counter() - args.t0 > args.deadline and results:
            print(f"[{protocol}] deadline reached: seeds after {seed - 1} skipped", flush=True)
            break
        train, dev = protocol_data(root, protocol, seed, train_all, dev_all)
        starts = {}
        needed = {0, 4} if {"start", "linear probe fp32"} & set(rows) else {METHODS[r][1] for r in rows if r in METHODS}
        for bits in sorted(needed):
            model, info, feats = start_model(base, bits, train, dev, args.device)
            starts[bits] = model
            name = f"start (prototype head) {'int4' if bits else 'fp32'}"
            h_test = sentence_features(model, test) if {"start", "linear probe fp32"} & set(rows) else None
            if "start" in rows:
                results.setdefault(name, []).append({**head_eval(model, h_test, test), **info, "seconds": 0.0,
                                                     "passes": 0, "steps": 0, "seed": seed})
                results.setdefault(f"prior refit {'int4' if bits else 'fp32'}", []).append(
                    {**head_eval(prior_refit(model, feats[0], train), h_test, test), "seconds": 0.0, "passes": 0,
                     "steps": 0, "seed": seed})
            if not bits and "linear probe fp32" in rows:
                t = time.perf_counter()
                probe, wd = linear_probe(model, feats, train, dev)
                results.setdefault("linear probe fp32", []).append(
                    {**head_eval(probe, h_test, test), "seconds": time.perf_counter() - t, "passes": 0,
                     "steps": 0, "weight_decay": wd, "seed": seed})
        for row in [r for r in METHODS if r in rows]:
            bits = METHODS[row][1]
            for lr in GRID[row] if args.grid else [lrs[row]]:
                model, seconds, passes, curve, checkpoints = fine_tune(starts[bits], row, lr, train, args.steps,
                                                                       args.batch_size, seed, args.eval_every, dev,
                                                                       test)
                results.setdefault(row, []).append({**llm.evaluate(model, test), "seconds": seconds,
                                                    "passes": passes, "steps": args.steps, "seed": seed, "lr": lr,
                                                    "checkpoints": checkpoints,
                                                    "train_loss_end": statistics.mean(curve[-10:])})
                curves.setdefault(row, {})[f"seed {seed} lr {lr:g}"] = smooth(curve)
                print(f"[{protocol} seed {seed}] {row} lr {lr:g}: test {results[row][-1]['accuracy']:.4f}",
                      flush=True)
        if args.json:  # after every seed, so that a stopped run keeps its finished seeds
            Path(args.json).write_text(json.dumps({"lrs": lrs, "steps": args.steps, "results": {protocol: results}}))
    if args.plots:
        dev_curves_plot(Path(args.plots) / f"{protocol}_dev_loss.png", protocol, results)
        for row, series in curves.items():
            seeds = "".join(sorted({name.split()[1] for name in series}))
            line_plot(Path(args.plots) / f"{protocol}_seeds{seeds}_{row.replace(' ', '_').replace('+', 'plus')}.png",
                      series,
                      xlabel="step", ylabel="train minibatch loss (10-step mean)",
                      title=f"protocol {protocol}: {row}")
    return results


def _ms(values):
    return (statistics.mean(values), statistics.stdev(values) if len(values) > 1 else 0.0)


def chosen_on_dev(rs):
    """The runs of the lr with the lowest dev loss (mean over seeds, at its best checkpoint when there are
    checkpoints, else the test records' order is kept: one lr)."""
    by_lr: dict = {}
    for r in rs:
        by_lr.setdefault(r.get("lr"), []).append(r)
    if len(by_lr) == 1 or not rs[0].get("checkpoints"):
        return rs

    def score(group):
        step = best_step([r["checkpoints"] for r in group])
        return statistics.mean(next(c["dev_loss"] for c in r["checkpoints"] if c["step"] == step) for r in group)
    return min(by_lr.values(), key=score)


def at_budget(rs):
    """Each seed's record at the lr and budget chosen on dev (best_step of the mean dev-loss curve), when the
    runs have checkpoints; the record at the last step otherwise."""
    if not rs[0].get("checkpoints"):
        return rs
    rs = chosen_on_dev(rs)
    step = best_step([r["checkpoints"] for r in rs])
    out = []
    for r in rs:
        c = next(c for c in r["checkpoints"] if c["step"] == step)
        out.append({**r, "accuracy": c["test_accuracy"], "loss": c["test_loss"], "budget": step,
                    "final_accuracy": r["accuracy"], "passes": r["passes"] * step // r["steps"],
                    "seconds": r["seconds"] * step / r["steps"]})
    return out


def dev_curves_plot(path, protocol, results):
    """Dev loss (mean over seeds) against steps, one line per fine-tuned row: the curves the budgets are read from."""
    curves = {}
    for row, rs in results.items():
        rs = chosen_on_dev(rs)
        if rs and rs[0].get("checkpoints"):
            steps = [c["step"] for c in rs[0]["checkpoints"]]
            curves[row] = (steps, [statistics.mean(r["checkpoints"][k]["dev_loss"] for r in rs)
                                   for k in range(len(steps))])
    if curves:
        line_plot(path, curves, xlabel="step", ylabel="dev loss (500 sentences, mean over seeds)",
                  title=f"protocol {protocol}: dev loss along training")


def accuracy_report(protocol, results, args) -> list[str]:
    p = PROTOCOLS[protocol]
    what = f"k = {p['k']} per class" if "k" in p else f"{p['n']} train sentences"
    results = {row: sorted(at_budget(rs), key=lambda r: r.get("seed", 0)) for row, rs in results.items()}
    n = len(next(iter(results.values())))
    budget = any("budget" in rs[0] for rs in results.values())
    lines = [f"### Protocol {protocol}: {what}, {n} seeds, at most {args.steps} steps of batch {args.batch_size} "
             f"(ZO: {2 * args.steps} forward passes)"
             + (", each row at the step chosen on dev (lowest mean dev loss)" if budget else "")
             + ", test = 872 sentences", "",
             "| row | accuracy | test loss | row - its start, paired by seed | train time (s) | forward passes | note |",
             "|---|---|---|---|---|---|---|"]
    order = ["start (prototype head) fp32", "prior refit fp32", "linear probe fp32", "start (prototype head) int4",
             "prior refit int4", *METHODS]
    results = {row: results[row] for row in sorted(results, key=lambda r: order.index(r) if r in order else 99)}
    for row, rs in results.items():
        acc, loss, sec = _ms([r["accuracy"] for r in rs]), _ms([r["loss"] for r in rs]), _ms([r["seconds"] for r in rs])
        note = ""
        if "train_loss_end" in rs[0]:
            note = f"train loss, last 10 steps {_ms([r['train_loss_end'] for r in rs])[0]:.3f}"
        if "lr" in rs[0] and "budget" not in rs[0]:
            note = f"lr {rs[0]['lr']:g}; " + note
        if "budget" in rs[0]:
            fin = _ms([r["final_accuracy"] for r in rs])
            note = (f"lr {rs[0].get('lr', 0):g}, step {rs[0]['budget']} of {rs[0]['steps']} (chosen on dev); at the last "
                    f"step {fin[0]:.4f} +- {fin[1]:.4f}; " + note)
        if "scale" in rs[0]:
            note = (f"scale {_ms([r['scale'] for r in rs])[0]:.1f}, train loss "
                    f"{_ms([r['train_loss'] for r in rs])[0]:.3f}")
        if "weight_decay" in rs[0]:
            note = "weight decay " + ", ".join(f"{r['weight_decay']:g}" for r in rs)
        start = results.get("start (prototype head) " + ("int4" if "int4" in row else "fp32"))
        gain = ""
        if start and not row.startswith("start"):  # paired by seed
            by_seed = {b.get("seed", k): b for k, b in enumerate(start)}
            pairs = [(r, by_seed[r.get("seed", k)]) for k, r in enumerate(rs) if r.get("seed", k) in by_seed]
            d_acc = _ms([r["accuracy"] - b["accuracy"] for r, b in pairs])
            d_loss = _ms([r["loss"] - b["loss"] for r, b in pairs])
            gain = (f"{d_acc[0]:+.4f} +- {d_acc[1]:.4f}; loss {d_loss[0]:+.4f} +- {d_loss[1]:.4f} "
                    f"(n {len(pairs)})")
        lines.append(f"| {row} | {acc[0]:.4f} +- {acc[1]:.4f} | {loss[0]:.4f} +- {loss[1]:.4f} | {gain} | "
                     f"{sec[0]:.1f} | {rs[0]['passes']} | {note} |")
    lines.append("")
    per_seed = ["Per seed (accuracy): " + "; ".join(f"{row}: " + " ".join(f"{r['accuracy']:.3f}" for r in rs)
                                                    for row, rs in results.items()), ""]
    return lines + per_seed


# (2) speed and memory ----------------------------------------------------------------------------------------------

def _interleaved(fns: dict, repeats: int) -> dict:
    """Median seconds of each fn, calls interleaved round-robin (one warm-up each)."""
    for fn in fns.values():
        fn()
    times = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            t = time.perf_counter()
            fn()
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            times[name].append(time.perf_counter() - t)
    return {name: statistics.median(ts) for name, ts in times.items()}


def noise_costs(n: int, repeats: int) -> dict:
    """Seconds to draw n Gaussian / Rademacher values through the core samplers (one direction, all chunks)."""
    like = [torch.empty(n)]
    out = {}
    for name in ("gaussian", "rademacher"):
        sampler = get_sampler(name)

        def draw(sampler=sampler):
            d = sampler.draw(0, 0, 1, like)
            for _ in d.chunks(0):
                pass
        out[name] = _interleaved({name: draw}, repeats)[name]
    return out


def speed_and_memory(base, train, args) -> dict:
    sentences = [s for s, _ in train[:args.batch_size]]
    labels = torch.tensor([y for _, y in train[:args.batch_size]])
    fp32 = copy.deepcopy(base).to(args.device)
    int4 = llm.quantize(copy.deepcopy(base), bits=4, group_size=64).to(args.device)
    out = {"weights_fp32": llm.weight_bytes(fp32), "weights_int4": llm.weight_bytes(int4),
           "linear_fp32": llm.weight_bytes(fp32, linear_only=True),
           "linear_int4": llm.weight_bytes(int4, linear_only=True)}
    c32 = llm.closure_for(fp32, fp32.encode(sentences), labels)
    c4 = llm.closure_for(int4, int4.encode(sentences), labels)
    out["used_rows"] = int(torch.unique(c32.input_ids).numel())
    variants = {  # name -> (closure, optimizer)
        "MeZO dense gaussian (previous path)": (c32, llm.MeZO(fp32, lr=0.0, sparse_embeddings=False)),
        "MeZO sparse gaussian": (c32, llm.MeZO(fp32, lr=0.0, sampler="gaussian")),
        "MeZO sparse rademacher": (c32, llm.MeZO(fp32, lr=0.0, sampler="rademacher")),
        "QZO int4": (c4, llm.QZO(int4, lr=0.0)),
        "HoZO int4": (c4, llm.HoZO(int4, lr=0.0)),
    }
    out["dims"] = {name: sum(p.numel() for g in opt.param_groups for p in g["params"]) for name, (_, opt) in
                   variants.items()}
    fns = {"forward fp32": c32, "forward int4": c4}
    fns.update({name: (lambda c=c, o=o: o.step(c)) for name, (c, o) in variants.items()})
    out["times"] = _interleaved(fns, args.repeats)
    # where a MeZO step goes: two forwards + the rest (noise + moving weights); and the noise alone
    n_sparse = sum(p.numel() for p in llm.float_params(fp32)) - fp32.hf.get_input_embeddings().weight.numel()
    out["n_sparse"] = n_sparse + out["used_rows"] * fp32.hf.config.hidden_size
    out["noise"] = noise_costs(n_sparse, args.repeats)
    # the estimate: delta^2 and ||v||^2 over repeated steps on one batch (E||g||^2 = E[delta^2 ||v||^2])
    stats = {}
    for name in ("MeZO dense gaussian (previous path)", "MeZO sparse gaussian"):
        c, opt = variants[name]
        d2 = []
        for _ in range(args.variance_repeats):
            opt.step(c)
            d2.append(opt.last_info.kept[0].delta ** 2)
        stats[name] = _ms(d2)
    out["delta2"] = stats
    out["memory"] = {"inference fp32": llm.peak_memory(c32, fp32, args.device),
                     "inference int4": llm.peak_memory(c4, int4, args.device)}
    for name, (c, opt) in variants.items():
        model = fp32 if name.startswith("MeZO") else int4
        out["memory"][name] = llm.peak_memory(lambda c=c, opt=opt: opt.step(c), model, args.device)
    fo = copy.deepcopy(base).to(args.device)
    opt = llm.FirstOrder(fo, lr=1e-5)
    batch = fo.encode(sentences)

    def backprop():
        opt.zero_grad(set_to_none=False)
        fo.loss(batch, labels).backward()
        opt.step()
    out["memory"]["first-order fp32"] = llm.peak_memory(backprop, fo, args.device)
    out["times"]["first-order fp32"] = _interleaved({"fo": backprop}, args.repeats)["fo"]
    return out


def speed_report(s, args) -> list[str]:
    mb, t = 1e6, s["times"]
    lines = [f"### Time and memory (batch {args.batch_size}, {args.device}, {torch.get_num_threads()} threads; "
             f"medians of {args.repeats} interleaved repeats)", "",
             f"Weights: fp32 {s['weights_fp32'] / mb:.1f} MB, int4 {s['weights_int4'] / mb:.1f} MB; Linear weight "
             f"matrices fp32 {s['linear_fp32'] / mb:.1f} MB, int4 {s['linear_int4'] / mb:.1f} MB "
             f"(x{s['linear_int4'] / s['linear_fp32']:.3f}). The batch reads {s['used_rows']} of the embedding rows.",
             "", "| measurement | values perturbed | time (ms) | x forward | peak (MB) | x inference |",
             "|---|---|---|---|---|---|"]
    for name in ("forward fp32", "MeZO dense gaussian (previous path)", "MeZO sparse gaussian",
                 "MeZO sparse rademacher", "first-order fp32", "forward int4", "QZO int4", "HoZO int4"):
        int4 = "int4" in name
        fwd = t["forward int4" if int4 else "forward fp32"]
        mem_key = name.replace("forward", "inference")
        mem, inf = s["memory"].get(mem_key), s["memory"]["inference int4" if int4 else "inference fp32"]
        lines.append(f"| {name} | {s['dims'].get(name, '')} | {t[name] * 1e3:.0f} | {t[name] / fwd:.2f} | "
                     f"{mem['peak'] / mb:.1f} | {mem['peak'] / inf['peak']:.3f} |")
    n = s["n_sparse"]
    lines += ["", f"Where a sparse MeZO step goes: 2 forwards = {2 * t['forward fp32'] * 1e3:.0f} ms; the rest "
              f"(noise, moving and restoring weights, update) = "
              f"{(t['MeZO sparse gaussian'] - 2 * t['forward fp32']) * 1e3:.0f} ms with Gaussian, "
              f"{(t['MeZO sparse rademacher'] - 2 * t['forward fp32']) * 1e3:.0f} ms with Rademacher noise. "
              f"Drawing one direction over the {n:,} non-embedding values: Gaussian "
              f"{s['noise']['gaussian'] * 1e3:.0f} ms, "
              f"Rademacher {s['noise']['rademacher'] * 1e3:.0f} ms (a step draws it 3 times: the walk to x + mu v, "
              f"on to x - mu v through x, back to x with the update in the same pass).", ""]
    d, ds = s["dims"]["MeZO dense gaussian (previous path)"], s["dims"]["MeZO sparse gaussian"]
    (m1, s1), (m2, s2) = s["delta2"]["MeZO dense gaussian (previous path)"], s["delta2"]["MeZO sparse gaussian"]
    lines += [f"Estimator on one batch, {args.variance_repeats} steps each: E[delta^2] dense {m1:.4g} "
              f"(sd {s1:.3g}), sparse {m2:.4g} (sd {s2:.3g}): delta does not depend on the unused rows' noise, so "
              f"both are draws of one distribution. E||g||^2 = E[delta^2 ||v||^2] ~ E[delta^2] d: d = {d:,} dense, "
              f"{ds:,} sparse (variance x{ds / d:.3f}).", ""]
    return lines


def merge(args) -> str:
    """Accuracy tables over the union of the seeds in several --json files (same steps and lrs)."""
    parts = [json.loads(Path(f).read_text()) for f in args.merge]
    args.steps = parts[0]["steps"]
    lines = []
    for protocol in ("A", "B"):
        merged: dict[str, list] = {}
        for part in parts:
            for row, rs in part["results"].get(protocol, {}).items():
                merged.setdefault(row, []).extend(rs)
        if merged:
            lines += accuracy_report(protocol, merged, args)
            if args.plots:
                Path(args.plots).mkdir(parents=True, exist_ok=True)
                dev_curves_plot(Path(args.plots) / f"{protocol}_dev_loss.png", protocol, merged)
    return "\n".join(lines)


def run_cells(args) -> list[str]:
    """Run the (protocol, seed, row) cells of this benchmark in args.jobs processes; returns their --json files.

    The start and linear-probe rows of a seed are one cell, each fine-tuned row another; cells not started
    by --deadline are skipped (and reported as missing seeds)."""
    import subprocess
    from concurrent.futures import ThreadPoolExecutor

    work = Path(args.cells)
    work.mkdir(parents=True, exist_ok=True)
    rows = args.rows or ["start", "linear probe fp32", *METHODS]
    common = ["--steps", str(args.steps), "--batch-size", str(args.batch_size), "--data", args.data, "--model",
              args.model, "--device", args.device, "--eval-every", str(args.eval_every), "--no-speed"]
    common += ["--grid"] * args.grid + ["--quick"] * args.quick + (["--lr", *args.lr] if args.lr else [])
    cells = []
    heads = [r for r in ("start", "linear probe fp32") if r in rows]
    for protocol in args.protocol:  # in the order given; the longest rows first within a protocol
        for part in [[r] for r in METHODS if r in rows] + ([heads] if heads else []):
            for seed in args.seed_list or PROTOCOLS[protocol]["seeds"][:args.seeds]:
                name = f"{protocol}_{seed}_{part[-1]}".replace(" ", "_").replace("+", "plus")
                cells.append((name, ["--protocol", protocol, "--seed-list", str(seed), "--rows", *part]))

    def run(cell):
        name, extra = cell
        if args.deadline and time.perf_counter() - args.t0 > args.deadline:
            print(f"[jobs] deadline: {name} not started", flush=True)
            return None
        out = work / f"{name}.json"
        with open(work / f"{name}.log", "w") as log:
            code = subprocess.call([sys.executable, "-m", "zosci.bench", "llm", *common, *extra, "--json", str(out)],
                                   stdout=log, stderr=subprocess.STDOUT)
        print(f"[jobs] {name}: exit {code} at {time.perf_counter() - args.t0:.0f} s", flush=True)
        return str(out) if out.exists() else None

    with ThreadPoolExecutor(args.jobs) as pool:
        return [f for f in pool.map(run, cells) if f]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m zosci.bench llm", description=__doc__.split("\n")[0])
    p.add_argument("--protocol", nargs="*", default=["A", "B"], choices=["A", "B"])
    p.add_argument("--steps", type=int, default=300, help="steps of every fine-tuning method (ZO: 2 passes each)")
    p.add_argument("--seeds", type=int, default=5, help="at most this many seeds per protocol")
    p.add_argument("--tune", action="store_true", help="choose each lr on protocol B seed 0 dev first")
    p.add_argument("--tune-steps", type=int, default=0, help="steps of each tuning run; 0 = --steps")
    p.add_argument("--only-tune", action="store_true", help="stop after --tune")
    p.add_argument("--tune-rows", nargs="*", default=[], choices=list(METHODS), help="rows to tune (default all)")
    p.add_argument("--rows", nargs="*", default=[], choices=["start", "linear probe fp32", *METHODS],
                   help="rows to run (default all)")
    p.add_argument("--seed-list", nargs="*", type=int, default=[], help="run these seeds (default: the protocol's)")
    p.add_argument("--json", default=None, help="write the per-seed results (JSON) here, for --merge")
    p.add_argument("--merge", nargs="*", default=[], help="report the union of these --json files and exit")
    p.add_argument("--quick", action="store_true", help="smoke run: 4 steps, 1 seed, 64 test sentences")
    p.add_argument("--no-accuracy", action="store_true", help="only time and memory")
    p.add_argument("--no-speed", action="store_true", help="only accuracy")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--lr", nargs="*", default=[], metavar="ROW=LR", help="override HYPER, e.g. 'QZO int4=1e-5'")
    p.add_argument("--data", default="../shared/data/sst2")
    p.add_argument("--model", default="minilm", help="sentence-transformers folder; 'minilm' = the packaged one")
    p.add_argument("--device", default="cpu")
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--variance-repeats", type=int, default=20)
    p.add_argument("--plots", default=None, help="folder for the loss curves (PNG)")
    p.add_argument("--grid", action="store_true",
                   help="run every lr of GRID for each fine-tuned row and seed; the report takes the lr (and, with "
                        "--eval-every, the step) with the lowest mean dev loss over the seeds")
    p.add_argument("--jobs", type=int, default=1,
                   help="run the (protocol, seed, row) cells in this many processes of this benchmark, then merge")
    p.add_argument("--cells", default="runs/bench-llm-cells", help="folder of the cells' logs and --json files "
                                                                   "(with --jobs)")
    p.add_argument("--eval-every", type=int, default=0,
                   help="dev and test loss every N steps; each row is then reported at the step with the lowest "
                        "mean dev loss (the budget chosen on dev) and --tune picks the lr by its best checkpoint")
    p.add_argument("--out", default=None, help="also write the report (markdown) to this file")
    p.add_argument("--deadline", type=float, default=0, help="start no new seed after this many seconds; 0 = off")
    args = p.parse_args(argv)
    argv_text = " ".join(argv if argv is not None else sys.argv[1:])
    if args.merge:
        print(merge(args))
        return 0
    if args.quick:
        args.steps, args.seeds, args.repeats, args.variance_repeats = 4, 1, 2, 2
    if args.jobs > 1 and not args.no_accuracy:
        args.t0 = time.perf_counter()
        args.merge = run_cells(args)
        report = merge(args) if args.merge else "no cell finished"
        print(report)
        if args.out:
            Path(args.out).write_text(report + "\n")
        return 0
    if args.plots:
        Path(args.plots).mkdir(parents=True, exist_ok=True)
    t0 = args.t0 = time.perf_counter()
    root = data_root(args.data)
    train_all, dev_all = llm.load_sst2(root, "train"), llm.load_sst2(root, "dev")
    test = llm.load_sst2(root, "test")[:64 if args.quick else None]
    base = llm.load(args.model, task="sequence-classification")
    lines = ["## LLM: zeroth-order fine-tuning on SST-2 (`zosci.llm`)", "",
             f"Command: `python -m zosci.bench llm {argv_text}` ({args.device}, torch {torch.__version__}, "
             f"{torch.get_num_threads()} threads)", ""]
    lrs = {row: h["lr"] for row, h in HYPER.items()}
    for item in args.lr:
        row, _, value = item.rpartition("=")
        if row not in lrs:
            p.error(f"--lr: unknown row {row!r}; choose one of {list(lrs)}")
        lrs[row] = float(value)
    if args.tune and not args.no_accuracy:
        lrs, table = tune(args, root, train_all, dev_all, base)
        lines += [f"### lr chosen on dev (protocol B seed 0, {args.tune_steps or args.steps} steps, final dev loss "
                  f"of 500 sentences)",
                  "", "| row | lr | dev accuracy | dev loss (start) |", "|---|---|---|---|"]
        lines += [f"| {row} | {lr:g} | {acc:.4f} | {loss:.4f} ({start:.4f}) |" for row, lr, acc, loss, start in table]
        lines += ["", "Chosen: " + ", ".join(f"{row} {lr:g}" for row, lr in lrs.items()), ""]
        args.protocol = [] if args.only_tune else args.protocol
        if args.json and args.only_tune:
            Path(args.json).write_text(json.dumps({"lrs": lrs, "tune": table}))
        print("\n".join(lines), flush=True)
    if not args.no_accuracy:
        dump = {}
        for protocol in args.protocol:
            results = dump[protocol] = run_protocol(args, protocol, root, train_all, dev_all, test, base, lrs)
            lines += accuracy_report(protocol, results, args)
            print("\n".join(accuracy_report(protocol, results, args)), flush=True)
        if args.json and len(dump) > 1:
            Path(args.json).write_text(json.dumps({"lrs": lrs, "steps": args.steps, "results": dump}))
    if not args.no_speed:
        train = llm.few_shot(train_all, 16, 0)
        lines += speed_report(speed_and_memory(base, train, args), args)
    lines.append(f"Total {time.perf_counter() - t0:.0f} s.")
    report = "\n".join(lines)
    print(report)
    if args.out:
        Path(args.out).write_text(report + "\n")
        print(f"written: {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
