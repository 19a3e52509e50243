"""models/tokenizer_check.py: a tokenizer that does not read text as its own vocabulary says (what
transformers 5.17 builds from a Gemma 3 GGUF: words cut into characters) is refused with a clear
error; a sound one, and a byte-level toy vocabulary without word tokens, pass."""

from __future__ import annotations

import pytest
from tokenizers import Tokenizer, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from actqkv_llm.errors import UnsupportedModelError
from actqkv_llm.models.tokenizer_check import check_tokenizer, vocabulary_roundtrip
from tiny_models import byte_tokenizer

WORDS = ("the pass key is hidden somewhere in this long document remember it because the grass is green "
         "and the sky is blue while the sun is yellow here we go there and back again ").split()


def _trained() -> Tokenizer:
    """A word-piece BPE trained on a small English text: its vocabulary holds whole words."""
    tok = Tokenizer(models.BPE(unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    corpus = [" ".join(WORDS[i:] + WORDS[:i]) for i in range(len(WORDS))] * 20
    tok.train_from_iterator(corpus, trainers.BpeTrainer(vocab_size=400, special_tokens=["[UNK]"], show_progress=False))
    return tok


def _fast(tok: Tokenizer) -> PreTrainedTokenizerFast:
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]")


def test_a_sound_tokenizer_encodes_its_word_tokens_back_into_themselves():
    fast = _fast(_trained())
    ok, tried = vocabulary_roundtrip(fast)
    assert tried >= 20 and ok == tried
    check_tokenizer(fast, "a trained BPE")          # no error


def test_the_same_vocabulary_without_its_merges_is_refused():
    """The vocabulary kept, the merges lost: every word falls apart into characters (the failure of
    transformers 5.17 on Gemma 3 GGUFs, where ' 73360' still read as digits but 'The' as T, h, e)."""
    sound = _trained()
    vocab = sound.get_vocab()
    broken = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="[UNK]"))
    broken.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = _fast(broken)
    assert len(fast("remember", add_special_tokens=False)["input_ids"]) == len("remember")
    ok, tried = vocabulary_roundtrip(fast)
    assert tried >= 20 and ok == 0
    with pytest.raises(UnsupportedModelError, match=r"by transformers 5\.17\.0 .* 0 of \d+ of its own word tokens"):
        check_tokenizer(fast, "GGUF x.gguf", made_by="5.17.0")


def test_a_byte_level_vocabulary_without_word_tokens_gets_no_verdict():
    tok = byte_tokenizer()
    assert vocabulary_roundtrip(tok)[1] < 20
    check_tokenizer(tok, "the tests' byte tokenizer")   # no error
