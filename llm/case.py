"""Case kind ``llm_finetune``: few-shot SST-2 fine-tuning of a (quantized) model by MeZO, QZO, HoZO or backprop.

Each step draws a minibatch of the k-shot training set and calls
llm.train_step; every ``eval_every`` steps the model is evaluated on the
evaluation split. metrics.csv rows: step, forward_passes (cumulative closure
calls; one per backprop step), train_loss (the minibatch loss at the weights
before the step), eval_accuracy and eval_loss (blank between evaluations).
Checkpoints hold only what changes: the scales (QZO/HoZO) or the float
weights (MeZO, first-order), the optimizer state (with the ZO generator) and
the minibatch RNG; a resumed run equals an uninterrupted one.
Plots: loss.png and accuracy.png in the run folder.
"""
from __future__ import annotations

import random
from pathlib import Path

import torch

from zosci.config import Field, Schema
from zosci.errors import ConfigError
from zosci.estimators import ESTIMATORS
from zosci.plots import line_plot
from zosci.samplers import SAMPLERS

from . import data as D
from .memory import weight_bytes
from .methods import METHODS, build, float_params
from .models import TASKS, load
from .quant import quantize, scales
from .train import calibrate_head, evaluate, forward_passes, prototype_head, train_step

SCHEMA = Schema({
    "model": {
        "path": Field(str, "minilm", doc="local HF model folder; 'minilm' = the packaged MiniLM-L6"),
        "task": Field(str, "sequence-classification", choices=list(TASKS), doc="head used to score the labels"),
        "bits": Field(int, 4, choices=[0, 4, 8], doc="weight quantization of the Linear layers; 0 = float"),
        "group_size": Field(int, 64, choices=[32, 64, 128], doc="inputs per quantization scale"),
        "head_init": Field(str, "prototype", choices=["random", "prototype"],
                           doc="new classification head: seeded random, or class means of the k-shot features "
                               "of the (quantized) model that is trained"),
        "head_scale": Field(float, 0.0, min=0, doc="prototype head's logit scale (inverse temperature); 0 = the "
                                                    "one minimising the cross entropy on data.dev_size dev sentences"),
        "max_length": Field(int, 64, min=8, doc="tokens per prompt (truncation)"),
    },
    "data": {
        "root": Field(str, "../shared/data/sst2", doc="folder with SST-2 train/dev/test .tsv (relative: to cwd, "
                                                      "then to the project root)"),
        "k": Field(int, 16, min=1, doc="training examples per class (few-shot, seeded)"),
        "batch_size": Field(int, 16, min=1, doc="minibatch size"),
        "eval_split": Field(str, "test", choices=list(D.SPLITS), doc="split evaluated every eval_every steps"),
        "eval_limit": Field(int, 0, min=0, doc="evaluate on the first N sentences only; 0 = all"),
        "dev_size": Field(int, 500, min=1, doc="dev.tsv sentences (seeded sample) that fit the head's scale"),
    },
    "method": {
        "name": Field(str, "hozo", choices=list(METHODS), doc="mezo (float weights), qzo / hozo (scales), "
                                                               "first-order (backprop)"),
        "optimizer": Field(str, "sgd", choices=["sgd", "adam"], doc="update rule"),
        "lr": Field(float, 1e-3, min=0, min_exclusive=True, doc="learning rate"),
        "momentum": Field(float, 0.0, min=0, max=1, max_exclusive=True, doc="sgd momentum"),
        "mu": Field(float, 1e-2, min=0, min_exclusive=True, doc="ZO perturbation size"),
        "sampler": Field(str, "gaussian", choices=sorted(SAMPLERS), doc="ZO direction sampler"),
        "estimator": Field(str, "central", choices=sorted(ESTIMATORS),
                           doc="ZO estimator; central = two-sided (MeZO's +mu, -2 mu, +mu)"),
        "queries": Field(int, 1, min=1, doc="ZO directions per step"),
        "clip": Field(float, 0.0, min=0, doc="clip the directional derivative to [-clip, clip]; 0 = off"),
        "sparse_embeddings": Field(bool, True, doc="mezo: perturb only the embedding rows each batch reads "
                                                   "(where valid: untied embeddings, sgd, no momentum)"),
    },
    "train": {
        "steps": Field(int, 200, min=1, doc="optimizer steps"),
        "eval_every": Field(int, 50, min=1, doc="steps between evaluations (and the last step)"),
        "checkpoint_every": Field(int, 50, min=1, doc="steps between checkpoints"),
    },
})


def data_root(root: str) -> Path:
    p = Path(root)
    if p.is_absolute() or p.is_dir():
        return p
    return Path(__file__).resolve().parents[1] / p


def check(config):
    root = data_root(config["data"]["root"])
    if not (root / "train.tsv").is_file():
        raise ConfigError(f"data.root: no train.tsv in {str(root)!r}; point it at a folder holding SST-2 as "
                          f"train/dev/test.tsv (GLUE's SST-2, gluebenchmark.com; see the README's Data section)")
    m = config["method"]["name"]
    if m in ("qzo", "hozo") and config["model"]["bits"] == 0:
        raise ConfigError(f"model.bits: method {m!r} perturbs quantization scales; set bits = 4 or 8")


def build_model(cfg: dict, seed: int, train, dev):
    """The model of cfg (loaded, quantized, head initialised on it) and the tensors a checkpoint must hold."""
    mc, method = cfg["model"], cfg["method"]["name"]
    model = load(mc["path"], task=mc["task"], seed=seed, max_length=mc["max_length"])
    if mc["bits"]:
        quantize(model, bits=mc["bits"], group_size=mc["group_size"])
    if mc["task"] == "sequence-classification" and mc["head_init"] == "prototype":
        prototype_head(model, train, scale=mc["head_scale"] or 1.0)
        if not mc["head_scale"]:
            calibrate_head(model, dev)
    trained = scales(model) if method in ("qzo", "hozo") else float_params(model)
    return model, trained


def make_optimizer(model, mc: dict, seed: int):
    name = mc["name"]
    if name == "first-order":
        return build(name, model, lr=mc["lr"], optimizer="adam" if mc["optimizer"] == "adam" else "sgd",
                     momentum=mc["momentum"])
    kwargs = dict(lr=mc["lr"], mu=mc["mu"], sampler=mc["sampler"], estimator=mc["estimator"],
                  queries=mc["queries"], optimizer=mc["optimizer"], seed=seed, momentum=mc["momentum"])
    if name == "mezo":
        kwargs["sparse_embeddings"] = None if mc["sparse_embeddings"] else False
    if name in ("qzo", "hozo"):
        kwargs["clip"] = mc["clip"] or None
    return build(name, model, **kwargs)


def run(run):
    cfg, seed = run.config, run.config["seed"]
    dc, tc = cfg["data"], cfg["train"]
    root = data_root(dc["root"])
    train = D.few_shot(D.load_sst2(root, "train"), dc["k"], seed)
    evalset = D.load_sst2(root, dc["eval_split"])
    evalset = evalset[:dc["eval_limit"]] if dc["eval_limit"] else evalset
    dev_all = D.load_sst2(root, "dev")
    dev = random.Random(1000 + seed).sample(dev_all, min(dc["dev_size"], len(dev_all)))
    model, trained = build_model(cfg, seed, train, dev)
    opt = make_optimizer(model, cfg["method"], seed)
    batches = D.Batches(train, dc["batch_size"], seed)
    # MeZO checkpoints its seeds: each step's (seed, [(query, delta)]), replayed on the initial weights;
    # QZO/HoZO checkpoint the scales they train, first-order everything it trains
    seeded = cfg["method"]["name"] == "mezo"
    state, start, passes, records = run.load_checkpoint(), 0, 0, []
    if state is not None:
        if seeded:
            records = list(state["records"])
            for record in records:
                opt.apply_record(record)
            opt.generator.set_state(state["zo_generator"])
        else:
            with torch.no_grad():
                for p, saved in zip(trained, state["trained"]):
                    p.copy_(saved)
            opt.load_state_dict(state["optimizer"])
        batches.set_state(state["batches"])
        start, passes = state["step"], state["forward_passes"]
        run.logger.info("resuming at step %d of %d", start, tc["steps"])
    run.logger.info("%s %s, %d-bit, weights %.1f MB, %d trained tensors (%d values), %d train / %d eval sentences",
                    cfg["method"]["name"], cfg["model"]["path"], cfg["model"]["bits"] or 32,
                    weight_bytes(model) / 1e6, len(trained), sum(p.numel() for p in trained), len(train),
                    len(evalset))
    if start == 0:
        ev = evaluate(model, evalset)
        run.log_metrics(0, forward_passes=0, train_loss=None, eval_accuracy=ev["accuracy"], eval_loss=ev["loss"])
    bar = run.progress(total=tc["steps"], initial=start, desc=f"{cfg['method']['name']} fine-tune")
    for step in range(start + 1, tc["steps"] + 1):
        sentences, labels = batches.next()
        loss = train_step(model, opt, sentences, labels)
        if seeded:
            records.append(opt.last_record)
        passes += forward_passes(opt)
        ev = evaluate(model, evalset) if step % tc["eval_every"] == 0 or step == tc["steps"] else None
        run.log_metrics(step, forward_passes=passes, train_loss=loss,
                        eval_accuracy=ev and ev["accuracy"], eval_loss=ev and ev["loss"])
        if ev:
            run.logger.info("step %d: eval accuracy %.4f, loss %.4f", step, ev["accuracy"], ev["loss"])
        if step % tc["checkpoint_every"] == 0 or step == tc["steps"]:
            changed = ({"records": records, "zo_generator": opt.generator.get_state()} if seeded else
                       {"optimizer": opt.state_dict(), "trained": [p.detach().clone() for p in trained]})
            run.save_checkpoint({"step": step, "forward_passes": passes, "batches": batches.state(), **changed},
                                step)
        bar.update()
    bar.close()
    report(run)


def report(run):
    rows = run.read_metrics()
    train = [(int(r["forward_passes"]), float(r["train_loss"])) for r in rows if r["train_loss"]]
    evals = [(int(r["forward_passes"]), float(r["eval_accuracy"]), float(r["eval_loss"]))
             for r in rows if r["eval_accuracy"]]
    line_plot(run.plot_path("loss"), {"train (minibatch)": tuple(zip(*train)) if train else ((), ()),
                                      "eval": ([e[0] for e in evals], [e[2] for e in evals])},
              xlabel="forward passes", ylabel="cross-entropy loss", title=run.config["name"])
    line_plot(run.plot_path("accuracy"), {"eval": ([e[0] for e in evals], [e[1] for e in evals])},
              xlabel="forward passes", ylabel="accuracy", title=run.config["name"])
    if evals:
        run.logger.info("final eval accuracy %.4f (start %.4f); plots in %s", evals[-1][1], evals[0][1], run.path)
