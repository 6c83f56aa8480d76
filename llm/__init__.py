"""Fine-tune (quantized) language models without backpropagation.

    from zosci import llm
    model = llm.load("path/to/model", task="sequence-classification")  # local folder; "minilm" = packaged MiniLM-L6
    llm.quantize(model, bits=4, group_size=64)   # nn.Linear -> QuantLinear, in place (head kept in float)
    llm.weight_bytes(model)
    opt = llm.HoZO(model, lr=1e-3, mu=1e-2, sampler="gaussian")  # or llm.QZO, llm.MeZO (two-sided by default)
    loss = opt.step(llm.closure_for(model, batch, labels))  # loss of the current weights, no backward

A sentence-transformers folder is scored through the pooling it declares
(models.Pooling); MeZO perturbs only the embedding rows a batch reads (llm.sparse).
"""
from .data import Batches, few_shot, load_sst2
from .memory import peak_memory, weight_bytes
from .methods import METHODS, FirstOrder, HoZO, MeZO, QZO, build, float_params
from .models import LM, TASKS, Pooling, load, minilm_path
from .quant import QuantLinear, pack_int4, quantize, quantize_tensor, scales, unpack_int4
from .train import calibrate_head, closure_for, evaluate, prototype_head, sentence_features, train_step

__all__ = ["load", "quantize", "weight_bytes", "peak_memory", "MeZO", "QZO", "HoZO", "FirstOrder", "build",
           "METHODS", "LM", "TASKS", "QuantLinear", "pack_int4", "unpack_int4", "quantize_tensor", "scales",
           "float_params", "load_sst2", "few_shot", "Batches", "closure_for", "train_step", "evaluate",
           "minilm_path", "Pooling", "calibrate_head", "prototype_head", "sentence_features"]
