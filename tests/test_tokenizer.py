import json

import pytest

from minirlhf.lm.tokenizer import CharTokenizer, WordTokenizer, load_tokenizer


def test_special_tokens_take_ids_0_to_3():
    for tok in (CharTokenizer("ab"), WordTokenizer(["a", "b"])):
        assert (tok.pad_id, tok.bos_id, tok.eos_id, tok.unk_id) == (0, 1, 2, 3)
        assert tok.itos[:4] == ["<pad>", "<bos>", "<eos>", "<unk>"]
        assert tok.vocab_size == 6


def test_word_round_trip_and_ids():
    tok = WordTokenizer.from_corpus(["the film was good .", "the plot was dull ."])
    s = "the plot was good ."
    ids = tok.encode(s)
    assert tok.decode(ids) == s
    # most frequent first, ties alphabetical: the/was/. (2 each) then dull/film/good/plot
    assert tok.itos[4:] == [".", "the", "was", "dull", "film", "good", "plot"]
    assert ids == [5, 10, 6, 9, 4]


def test_char_round_trip():
    tok = CharTokenizer.from_corpus(["hello world"])
    assert tok.decode(tok.encode("low hero")) == "low hero"
    assert tok.vocab_size == 4 + len(set("hello world"))


def test_unknown_tokens_map_to_unk_and_stay_visible():
    tok = WordTokenizer(["good", "."])
    ids = tok.encode("very good .")
    assert ids == [tok.unk_id, 4, 5]
    assert tok.decode(ids) == "<unk> good ."
    assert CharTokenizer("ab").encode("abz") == [4, 5, 3]


def test_decode_drops_pad_bos_eos():
    tok = WordTokenizer(["good", "."])
    assert tok.decode([0, 0, 1, 4, 5, 2, 0]) == "good ."


def test_from_corpus_min_count_and_max_vocab():
    texts = ["a a a b b c"]
    assert WordTokenizer.from_corpus(texts, min_count=2).itos[4:] == ["a", "b"]
    assert WordTokenizer.from_corpus(texts, max_vocab=1).itos[4:] == ["a"]


def test_bad_vocabularies_are_rejected():
    with pytest.raises(ValueError, match="appears more than once"):
        WordTokenizer(["a", "a"])
    with pytest.raises(ValueError, match="special token"):
        WordTokenizer(["<eos>"])


def test_save_load_round_trip(tmp_path):
    for tok in (WordTokenizer(["the", "film", "."]), CharTokenizer("xyz ")):
        path = tmp_path / "tok.json"
        tok.save(path)
        back = load_tokenizer(path)
        assert type(back) is type(tok) and back.itos == tok.itos
        assert not (tmp_path / "tok.json.tmp").exists()


def test_load_rejects_other_json(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps({"kind": "bpe", "tokens": []}))
    with pytest.raises(ValueError, match="bad.json"):
        load_tokenizer(path)
