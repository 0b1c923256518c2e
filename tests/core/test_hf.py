"""The Hugging Face export: a tiny backbone as a GPT-NeoX folder that ``transformers`` loads without
custom code, and that computes what our decoder computes."""

from __future__ import annotations

import json
import random
import re
from pathlib import Path

import pytest
import torch
from helpers import fails, run_cli

transformers = pytest.importorskip(
    "transformers", reason="the Hugging Face export needs the hf extra: pip install -e '.[hf]'"
)

from imdb_transformer.core.backbone import BackboneError, export_backbone, load_backbone  # noqa: E402
from imdb_transformer.core.decoder import CausalDecoder, DecoderConfig  # noqa: E402
from imdb_transformer.core.hf import export_hf  # noqa: E402
from imdb_transformer.errors import InputError  # noqa: E402
from imdb_transformer.generation import generate  # noqa: E402
from imdb_transformer.text.imdb import load_reviews  # noqa: E402
from imdb_transformer.text.tokenizer import EOS_ID, PAD_ID, Tokenizer  # noqa: E402


@pytest.fixture(scope="module")
def exported(pretrained_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny pretraining run's backbone exported through the console script."""
    out = tmp_path_factory.mktemp("hf") / "model"
    printed = run_cli("export", "--backbone", str(pretrained_run / "backbone"), "--out", str(out)).stdout
    assert "Exported" in printed
    return out


def test_the_folder_loads_with_no_custom_code_and_says_what_it_is(exported: Path) -> None:
    model = transformers.AutoModelForCausalLM.from_pretrained(exported, trust_remote_code=False)
    assert type(model).__name__ == "GPTNeoXForCausalLM"
    tokenizer = transformers.AutoTokenizer.from_pretrained(exported, trust_remote_code=False)
    assert tokenizer.is_fast
    config = json.loads((exported / "config.json").read_text())
    # the keys converters read (llama.cpp's GPT-NeoX converter) beside the ones transformers reads
    assert config["rotary_pct"] == 1.0 and config["rotary_emb_base"] == 10000.0
    assert config["use_parallel_residual"] is False and config["imdb_transformer"]["reverse"] is False
    card = (exported / "README.md").read_text()
    for words in ("IMDB", "bits per byte", "SentencePiece", "forward", "not for", "test"):
        assert words in card


def test_logits_equal_ours_with_and_without_left_padding(pretrained_run: Path, exported: Path) -> None:
    ours = load_backbone(pretrained_run / "backbone").decoder
    theirs = transformers.AutoModelForCausalLM.from_pretrained(exported).eval()
    torch.manual_seed(0)
    ids = torch.randint(4, ours.config.vocab_size, (3, 20))
    mask = torch.ones_like(ids, dtype=torch.bool)
    mask[1, :5] = mask[2, :11] = False  # left padding of 5 and 11
    ids[~mask] = PAD_ID
    with torch.no_grad():
        plain = (ours(ids) - theirs(ids).logits).abs().max()
        padded_ours = ours(ids, attention_mask=mask)
        padded_theirs = theirs(ids, attention_mask=mask.long()).logits
    assert plain <= 1e-4
    assert (padded_ours - padded_theirs)[mask].abs().max() <= 1e-4  # every real token's logits


def test_greedy_generation_gives_our_cached_tokens(pretrained_run: Path, exported: Path) -> None:
    backbone = load_backbone(pretrained_run / "backbone")
    theirs = transformers.AutoModelForCausalLM.from_pretrained(exported).eval()
    prompt = [EOS_ID, *backbone.tokenizer.encode("This movie was")]  # a review starts after </s>
    ours = generate(backbone.decoder, [prompt], 30, "greedy", eos_id=None)[0]
    out = theirs.generate(
        torch.tensor([prompt]), max_new_tokens=30, min_new_tokens=30, do_sample=False, pad_token_id=PAD_ID
    )
    assert out[0, len(prompt) :].tolist() == ours


def fuzzed_texts(n: int, seed: int = 0) -> list[str]:
    """Text that stresses a tokenizer: accents, CJK, emoji, runs of spaces, tabs and newlines, control
    characters, digits, punctuation and lone combining marks."""
    rng = random.Random(seed)
    alphabet = (
        list("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.,!?'\"-()")
        + list("éèüßñçøå") + list("映画は素晴らしい") + ["😀", "🎬", "👍🏽", "\u0301", "\u200b", "\x07"]
        + [" ", " ", " ", "  ", "   ", "\n", "\n\n", "\t", "\r\n", "\u00a0", "\u2003", "\u3000"]
        + ["ﬁ", "Ⅻ", "１２"]
    )  # fmt: skip
    return ["".join(rng.choice(alphabet) for _ in range(rng.randint(1, 80))) for _ in range(n)]


# The documented gaps (docs/export.md): a combining mark after a character that is not a plain letter (a
# precomposed "é", "ﬁ", a full-width digit), which the converted normaliser (tokenizers' Precompiled) can
# drop where SentencePiece keeps it; and the spellings of the marks and byte pieces typed in a text
# ("</s>", "<0x41>"), which transformers reads as those pieces. None of the 75,000 train and
# unsupervised reviews holds either.
KNOWN_GAP = re.compile(r"[^A-Za-z\s][\u0300-\u036f]|<pad>|<unk>|</?s>|<0x[0-9A-Fa-f]{2}>")


def test_token_ids_equal_sentencepieces_on_fuzzed_text(pretrained_run: Path, exported: Path) -> None:
    ours = load_backbone(pretrained_run / "backbone").tokenizer
    theirs = transformers.AutoTokenizer.from_pretrained(exported)
    texts = [
        *fuzzed_texts(2000), "A film that was not bad at all!", "  leading and trailing  ", "a\n\n\nb", "",
        "don't stop... 1999's best", "Ünïcödé ☃ and byte-fallback: \U0001f9ff \U000e0041", "a\xa0\u0301b",
        "e\u0301 and a\u0300", "\u3000\u0301", "x\u2003\u0301y", "a </s> b", "<pad><s><unk>", "<0x41>",
    ]  # fmt: skip
    checked = [t for t in texts if not KNOWN_GAP.search(t)]
    assert len(checked) > 1500
    for text in checked:
        assert theirs(text, add_special_tokens=False).input_ids == ours.encode(text), repr(text)
    # the documented gaps, pinned: if a release closes one, this says so
    for text in ("ﬁ\u0301", "a </s> b", "<0x41>"):
        assert theirs(text, add_special_tokens=False).input_ids != ours.encode(text)


def test_the_folder_survives_saving_and_loading_again(exported: Path, tmp_path: Path) -> None:
    model = transformers.AutoModelForCausalLM.from_pretrained(exported).eval()
    tokenizer = transformers.AutoTokenizer.from_pretrained(exported)
    model.save_pretrained(tmp_path / "again")
    tokenizer.save_pretrained(tmp_path / "again")
    again = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "again").eval()
    ids = tokenizer("a wonderful film", return_tensors="pt").input_ids
    with torch.no_grad():
        assert torch.equal(model(ids).logits, again(ids).logits)
    assert transformers.AutoTokenizer.from_pretrained(tmp_path / "again")("a film").input_ids == (
        tokenizer("a film").input_ids
    )


def test_a_backward_backbone_says_so(tmp_path: Path, pretrained_run: Path) -> None:
    tokenizer = load_backbone(pretrained_run / "backbone").tokenizer
    config = DecoderConfig(
        vocab_size=tokenizer.vocab_size, block_size=32, n_layer=1, n_head=2, n_embd=16, reverse=True
    )
    export_backbone(CausalDecoder(config), tokenizer, tmp_path / "backward")
    export_hf(tmp_path / "backward", tmp_path / "out")
    assert json.loads((tmp_path / "out/config.json").read_text())["imdb_transformer"]["reverse"] is True
    assert "backward" in (tmp_path / "out/README.md").read_text()


def test_what_gpt_neox_cannot_hold_and_bad_folders_are_refused(pretrained_run: Path, tmp_path: Path) -> None:
    tokenizer = load_backbone(pretrained_run / "backbone").tokenizer
    config = DecoderConfig(
        vocab_size=tokenizer.vocab_size, block_size=32, n_layer=1, n_head=2, n_embd=16, qk_norm=True
    )
    export_backbone(CausalDecoder(config), tokenizer, tmp_path / "qk")
    with pytest.raises(InputError, match="qk_norm"):
        export_hf(tmp_path / "qk", tmp_path / "out")
    assert not (tmp_path / "out").exists()  # nothing half-written
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    backbone = str(pretrained_run / "backbone")
    assert "other files" in fails("export", "--backbone", backbone, "--out", str(tmp_path / "busy"))
    assert "holds the backbone" in fails("export", "--backbone", backbone, "--out", str(pretrained_run))
    assert (tmp_path / "busy" / "notes.txt").read_text() == "mine"


def test_our_loader_refuses_a_hugging_face_folder(exported: Path) -> None:
    with pytest.raises(BackboneError):
        load_backbone(exported)


def test_a_bpe_tokenizer_exports_with_its_merges(imdb_dir: Path, tmp_path: Path) -> None:
    texts = load_reviews(str(imdb_dir), "train").texts
    tokenizer = Tokenizer.fit(texts, tmp_path / "bpe.model", vocab_size=300, model_type="bpe")
    config = DecoderConfig(vocab_size=tokenizer.vocab_size, block_size=32, n_layer=1, n_head=2, n_embd=16)
    export_backbone(CausalDecoder(config), tokenizer, tmp_path / "bpe")
    export_hf(tmp_path / "bpe", tmp_path / "out")  # its own check compares ids on a few texts
    theirs = transformers.AutoTokenizer.from_pretrained(tmp_path / "out")
    for text in [*texts[:50], *fuzzed_texts(200, seed=4)]:
        if not KNOWN_GAP.search(text):
            assert theirs(text, add_special_tokens=False).input_ids == tokenizer.encode(text), repr(text)
