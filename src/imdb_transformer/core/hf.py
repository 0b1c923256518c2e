"""A backbone as a Hugging Face ``transformers`` model folder: GPT-NeoX weights, a fast tokenizer and a
model card, loadable with ``AutoModelForCausalLM`` / ``AutoTokenizer`` and no custom code.

Our decoder is a GPT-NeoX exactly: pre-LN blocks with LayerNorm (``use_parallel_residual=False``),
rotary embeddings over the whole head (``rotary_pct=1.0``, NeoX's rotate-half pairing), a GELU (or
ReLU squared) MLP of 4x width and a tied LM head. Where we have no biases, NeoX's are zeros; its fused
query-key-value weight interleaves the three per head, where ours stacks them, so the rows are
reordered. QK-norm has no NeoX counterpart: such a backbone is refused rather than exported wrong.

The SentencePiece model becomes a ``tokenizer.json`` through ``transformers``' own converter
(:meth:`SpmConverter.build_tokenizer_from_spm_proto`), which follows the model's normaliser, dummy prefix
and byte fallback, so it gives SentencePiece's ids. ``transformers`` is the optional ``[hf]`` extra.
"""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import torch

from imdb_transformer.artifacts import atomic_path
from imdb_transformer.core.backbone import Backbone, load_backbone, tokenizer_fingerprint
from imdb_transformer.core.decoder import CausalDecoder
from imdb_transformer.errors import InputError
from imdb_transformer.text.tokenizer import BOS_ID, EOS_ID, PAD_ID, UNK_ID, Tokenizer

NEEDS = 'pip install -e ".[hf]" (transformers) to export a backbone for Hugging Face'


def _transformers():
    try:
        import transformers
    except ImportError:
        raise InputError(f"--format hf needs the transformers library: {NEEDS}") from None
    return transformers


def neox_config(decoder: CausalDecoder, tokenizer: Tokenizer) -> dict:
    """The ``config.json`` of the GPT-NeoX model our decoder is: the keys current ``transformers``
    reads (``rope_parameters``) and the older ones converters such as llama.cpp's read
    (``rotary_pct``, ``rotary_emb_base``)."""
    c = decoder.config
    if c.qk_norm:
        raise InputError(
            "this backbone normalises queries and keys (qk_norm), which GPT-NeoX models cannot: it has no "
            "Hugging Face counterpart; use it through imdb_transformer, or pretrain without --model.qk_norm"
        )
    return {
        "architectures": ["GPTNeoXForCausalLM"],
        "model_type": "gpt_neox",
        "vocab_size": c.vocab_size,
        "hidden_size": c.n_embd,
        "num_hidden_layers": c.n_layer,
        "num_attention_heads": c.n_head,
        "intermediate_size": 4 * c.n_embd,
        "hidden_act": "gelu" if c.activation == "gelu" else "relu2",
        "max_position_embeddings": c.block_size,
        "rotary_pct": 1.0,
        "rotary_emb_base": c.rope_base,
        "rope_parameters": {"rope_type": "default", "rope_theta": c.rope_base, "partial_rotary_factor": 1.0},
        "layer_norm_eps": 1e-5,
        "use_parallel_residual": False,
        "attention_bias": True,  # zeros where we have none: converters expect NeoX's biases
        "tie_word_embeddings": True,
        "attention_dropout": 0.0,
        "hidden_dropout": 0.0,
        "initializer_range": 0.02,
        "use_cache": True,
        "bos_token_id": BOS_ID,
        "eos_token_id": EOS_ID,
        "pad_token_id": PAD_ID,
        "torch_dtype": "float32",
        "imdb_transformer": {
            "reverse": c.reverse,
            "reads": "last to first (reverse the token ids)" if c.reverse else "first to last",
            "tokenizer_sha256": tokenizer_fingerprint(tokenizer),
        },
    }


def neox_weights(decoder: CausalDecoder) -> dict[str, torch.Tensor]:
    """Our weights under GPT-NeoX's names (``gpt_neox.*``, ``embed_out``), zero biases added."""
    c = decoder.config
    state = {k: v.detach().float().cpu() for k, v in decoder.state_dict().items()}
    out = {"gpt_neox.embed_in.weight": state["wte.weight"]}
    for i in range(c.n_layer):
        ours, theirs = f"blocks.{i}.", f"gpt_neox.layers.{i}."
        # ours: rows are (q|k|v, head, channel); NeoX's: (head, q|k|v, channel)
        per_head = lambda t: t.view(3, c.n_head, c.head_size, -1).transpose(0, 1).reshape(t.shape)  # noqa: E731
        out[theirs + "attention.query_key_value.weight"] = per_head(state[ours + "attn.qkv.weight"])
        qkv_bias = _bias(state, ours + "attn.qkv.bias", 3 * c.n_embd)
        out[theirs + "attention.query_key_value.bias"] = per_head(qkv_bias)
        out[theirs + "attention.dense.weight"] = state[ours + "attn.proj.weight"]
        out[theirs + "attention.dense.bias"] = _bias(state, ours + "attn.proj.bias", c.n_embd)
        for norm, name in (("ln_1", "input_layernorm"), ("ln_2", "post_attention_layernorm")):
            out[f"{theirs}{name}.weight"] = state[f"{ours}{norm}.weight"]
            out[f"{theirs}{name}.bias"] = _bias(state, f"{ours}{norm}.bias", c.n_embd)
        out[theirs + "mlp.dense_h_to_4h.weight"] = state[ours + "mlp.fc.weight"]
        out[theirs + "mlp.dense_h_to_4h.bias"] = _bias(state, ours + "mlp.fc.bias", 4 * c.n_embd)
        out[theirs + "mlp.dense_4h_to_h.weight"] = state[ours + "mlp.proj.weight"]
        out[theirs + "mlp.dense_4h_to_h.bias"] = _bias(state, ours + "mlp.proj.bias", c.n_embd)
    out["gpt_neox.final_layer_norm.weight"] = state["ln_f.weight"]
    out["gpt_neox.final_layer_norm.bias"] = _bias(state, "ln_f.bias", c.n_embd)
    return out


def _bias(state: dict[str, torch.Tensor], name: str, size: int) -> torch.Tensor:
    return state[name] if name in state else torch.zeros(size)


def fast_tokenizer(tokenizer: Tokenizer, model_max_length: int | None = None):
    """A ``PreTrainedTokenizerFast`` that encodes as our SentencePiece model does (no marks added)."""
    transformers = _transformers()
    from sentencepiece import sentencepiece_model_pb2
    from transformers.convert_slow_tokenizer import SpmConverter

    proto = sentencepiece_model_pb2.ModelProto()
    proto.ParseFromString(tokenizer.to_bytes())
    if proto.trainer_spec.model_type == proto.trainer_spec.BPE:  # the converter merges by piece score
        vocab = {piece.piece: i for i, piece in enumerate(proto.pieces)}
    else:  # unigram: each piece with its log-probability
        vocab = [(piece.piece, piece.score) for piece in proto.pieces]
    fast = SpmConverter.build_tokenizer_from_spm_proto(proto, vocab)
    if fast is None:
        raise InputError("the tokenizer's SentencePiece model could not be converted (not unigram or BPE)")
    # The spaces NFKC makes a plain space become one first: the converted charsmap drops a combining
    # mark that follows one of them ("\xa0\u0301"), where SentencePiece keeps it.
    from tokenizers import Regex, normalizers

    spaces = normalizers.Replace(Regex("[\u00a0\u2000-\u200a\u202f\u205f\u3000]"), " ")
    fast.normalizer = normalizers.Sequence([spaces, fast.normalizer])
    pieces = tokenizer.pieces([PAD_ID, UNK_ID, BOS_ID, EOS_ID])
    return transformers.PreTrainedTokenizerFast(
        tokenizer_object=fast,
        pad_token=pieces[0],
        unk_token=pieces[1],
        bos_token=pieces[2],
        eos_token=pieces[3],
        model_max_length=model_max_length,
        clean_up_tokenization_spaces=False,
    )


def run_facts(backbone: Path) -> dict[str, object]:
    """What the pretraining run beside a ``RUN/backbone`` export recorded (its best ``val/bpb``, steps
    and settings), for the model card; empty where the files are not there."""
    run = backbone.parent if backbone.is_dir() else None
    if run is None:
        return {}
    facts: dict[str, object] = {}
    metrics = run / "metrics.csv"
    if metrics.is_file():
        rows = list(csv.DictReader(metrics.open()))
        bpb = [float(r["val/bpb"]) for r in rows if r.get("val/bpb")]
        steps = [int(float(r["step"])) for r in rows if r.get("step")]
        if bpb:
            facts["val_bpb"] = min(bpb)
        if steps:
            facts["steps"] = max(steps) + 1
    config = run / "config.yaml"
    if config.is_file():
        import yaml

        settings = yaml.safe_load(config.read_text()) or {}
        model = (settings.get("model") or {}).get("init_args") or {}
        data = (settings.get("data") or {}).get("init_args") or {}
        trainer = settings.get("trainer") or {}
        facts["training"] = {
            "optimizer": model.get("optimizer", "adamw"),
            "learning_rate": model.get("learning_rate"),
            "batch_size": data.get("batch_size"),
            "block_size": data.get("block_size"),
            "precision": trainer.get("precision"),
            "max_steps": trainer.get("max_steps"),
        }
    return facts


def model_card(backbone: Backbone, facts: dict[str, object]) -> str:
    """The folder's ``README.md``: what the model is, was trained on, and is not for."""
    c = backbone.decoder.config
    params = backbone.decoder.num_parameters()
    direction = (
        "**backward**: it reads text last to first. Reverse the token ids before the model sees them, and "
        "reverse what it generates; it is meant as the second direction of a forward + backward ensemble"
        if c.reverse
        else "forward (left to right), a plain causal language model"
    )
    bpb = facts.get("val_bpb")
    bpb = f"{bpb:.4f}" if isinstance(bpb, float) else "not recorded"
    steps = f", after {facts['steps']:,} steps" if facts.get("steps") else ""
    training = facts.get("training") or {}
    settings = ", ".join(f"{k} {v}" for k, v in training.items() if v is not None) or "not recorded"
    return f"""---
library_name: transformers
pipeline_tag: text-generation
language: en
datasets: [stanfordnlp/imdb]
tags: [imdb_transformer, gpt_neox]
---

# A causal language model of IMDB movie reviews

A small GPT-NeoX decoder ({params / 1e6:.1f}M parameters: {c.n_layer} layers, {c.n_head} heads, width
{c.n_embd}, context {c.block_size} tokens) pretrained with the `imdb_transformer` package and exported
with `imdb-transformer export --format hf`.

- **Data**: the IMDB reviews of the `train` and `unsupervised` splits (75,000 English movie reviews); the
  25,000 `test` reviews were never read, so sentiment figures on them stay honest.
- **Tokenizer**: SentencePiece ({backbone.tokenizer.vocab_size:,} pieces, byte fallback: no unknown
  characters), fitted on the same reviews; `tokenizer.json` gives its ids. No marks are added when encoding;
  reviews were packed one after another, each followed by `</s>`, so a text to continue starts after `</s>`.
- **Direction**: {direction}.
- **Validation bits per byte**: {bpb} (held-out reviews of train + unsupervised){steps}.
- **Training**: {settings}.

```python
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer
model = AutoModelForCausalLM.from_pretrained("THIS_FOLDER")
tokenizer = AutoTokenizer.from_pretrained("THIS_FOLDER")
ids = torch.tensor([[tokenizer.eos_token_id, *tokenizer("This movie was").input_ids]])  # after </s>
print(tokenizer.decode(model.generate(ids, max_new_tokens=30, do_sample=False)[0], skip_special_tokens=True))
```

## What it is not for

A model of how people write about films on one website, in English, up to 2011: it writes plausible review
text, and its states are good features for review sentiment and search. It knows little else, states no facts
reliably, and repeats the tone and biases of its reviews. It is not instruction-tuned and not for chat, for
facts, or for text about people.
"""


def check_out(out: str | os.PathLike, backbone: str | os.PathLike) -> None:
    """Refuse ``out`` unless writing there loses nothing: a new or empty folder, or an earlier export of
    ours (its ``config.json`` names imdb_transformer), never the backbone's own folder or a file."""
    path = Path(out).expanduser()
    fix = "choose a new folder (--out), or remove that one yourself if you mean to replace it"
    if path.is_symlink() or (path.exists() and not path.is_dir()):
        raise InputError(f"--out {out}: not a folder (a file or a link); {fix}")
    source = Path(backbone).expanduser().resolve()
    if path.resolve() == source or path.resolve() in source.parents:
        raise InputError(f"--out {out} holds the backbone being exported; {fix}")
    if path.is_dir() and any(path.iterdir()):
        config = path / "config.json"
        try:
            ours = "imdb_transformer" in json.loads(config.read_text())
        except (OSError, ValueError, TypeError):
            ours = False
        if not ours:
            raise InputError(f"--out {out} is a folder with other files in it; {fix}")


def export_hf(backbone_path: str | os.PathLike, out: str | os.PathLike) -> Path:
    """Write the backbone at ``backbone_path`` (an export folder or a checkpoint) as a Hugging Face model
    folder at ``out``: ``config.json``, ``model.safetensors``, the tokenizer files and ``README.md``.
    The folder appears whole or not at all; the written model is loaded back and its logits checked
    against ours before it is kept."""
    transformers = _transformers()
    backbone = load_backbone(backbone_path)
    config_dict = neox_config(backbone.decoder, backbone.tokenizer)
    config = transformers.GPTNeoXConfig(**{k: v for k, v in config_dict.items() if k != "imdb_transformer"})
    model = transformers.GPTNeoXForCausalLM(config)
    missing, unexpected = model.load_state_dict(neox_weights(backbone.decoder), strict=False)
    missing = [k for k in missing if k not in ("embed_out.weight", "lm_head.weight")]  # tied to embed_in
    if missing or unexpected:
        raise RuntimeError(f"GPT-NeoX weights do not match: missing {missing}, unexpected {unexpected}")
    model.tie_weights()
    model.eval()
    with atomic_path(out, is_dir=True, overwrite=True) as tmp:
        model.save_pretrained(tmp)
        fast_tokenizer(backbone.tokenizer, backbone.decoder.config.block_size).save_pretrained(tmp)
        saved = json.loads((tmp / "config.json").read_text())
        (tmp / "config.json").write_text(json.dumps({**saved, **config_dict}, indent=2) + "\n")
        (tmp / "README.md").write_text(model_card(backbone, run_facts(Path(backbone_path))))
        check_export(backbone, tmp)
    return Path(out)


CHECK_TEXTS = (
    "A film that was not bad at all, and the acting was great!",
    "  Two  spaces,\nnew lines\n\nand tabs\t; digits 1999; café, naïve, 映画 🎬 ﬁn.",
)


def check_export(backbone: Backbone, folder: Path, atol: float = 1e-4) -> float:
    """Load ``folder`` with ``transformers`` (no custom code): its tokenizer must give SentencePiece's ids
    on a few texts, and its logits ours; the largest logit difference. Raises if they differ (the
    logits by more than ``atol``)."""
    transformers = _transformers()
    fast = transformers.AutoTokenizer.from_pretrained(folder, trust_remote_code=False)
    for text in CHECK_TEXTS:
        if fast(text, add_special_tokens=False).input_ids != backbone.tokenizer.encode(text):
            raise RuntimeError(f"the exported tokenizer's ids differ from SentencePiece's on {text!r}")
    model = transformers.AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=False).eval()
    ids = backbone.tokenizer.encode(CHECK_TEXTS[0])
    ids = torch.tensor([[EOS_ID, *ids][: backbone.decoder.config.block_size]])
    with torch.no_grad():
        ours = backbone.decoder(ids).float()
        theirs = model(ids).logits.float()
    worst = float((ours - theirs).abs().max())
    if not worst <= atol:
        raise RuntimeError(f"the exported model's logits differ from ours by {worst:.2g} (> {atol:g})")
    return worst
