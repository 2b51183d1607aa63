import json
from math import comb

import numpy as np
import pytest

from minirlhf.lm.data import (collate, encode_pair, encode_prompt, load_corpus, load_preferences, load_sft,
                              ranking_pairs, write_corpus, write_jsonl, write_sft)
from minirlhf.lm.tokenizer import WordTokenizer

TOK = WordTokenizer(["the", "film", "was", "good", "dull", "."])  # ids 4..9


def test_encode_prompt_and_pair():
    assert encode_prompt(TOK, "the film was") == [1, 4, 5, 6]
    ids, mask = encode_pair(TOK, "the film was", "good .")
    assert ids == [1, 4, 5, 6, 7, 9, 2]
    assert mask == [False, False, False, False, True, True, True]


def test_collate_left_pads_into_the_batch_layout():
    pairs = [encode_pair(TOK, "the film was", "good ."), encode_pair(TOK, "the film was", ".")]
    input_ids, attention_mask, response_mask = collate(pairs, TOK.pad_id)
    assert input_ids.dtype == np.int64 and attention_mask.dtype == bool and response_mask.dtype == bool
    assert input_ids.tolist() == [[1, 4, 5, 6, 7, 9, 2], [0, 1, 4, 5, 6, 9, 2]]
    assert attention_mask.tolist()[1] == [False] + [True] * 6
    assert response_mask.tolist()[1] == [False] * 5 + [True, True]
    # the last column always holds each sequence's <eos>
    assert (input_ids[:, -1] == TOK.eos_id).all()


def test_collate_rejects_mismatched_mask():
    with pytest.raises(ValueError, match="sequence 1 has 3 ids and 2 mask"):
        collate([([1, 2], [False, True]), ([1, 2, 3], [False, True])], 0)


def test_ranking_pairs_are_all_ordered_pairs():
    pairs = ranking_pairs([2, 0, 3, 1])
    assert pairs == [(2, 0), (2, 3), (2, 1), (0, 3), (0, 1), (3, 1)]
    assert len(ranking_pairs(list(range(7)))) == comb(7, 2)


def test_jsonl_round_trips(tmp_path):
    sft = [("the film was", "good ."), ("a \"quoted\" é", "x")]
    write_sft(tmp_path / "sft.jsonl", sft)
    assert load_sft(tmp_path / "sft.jsonl") == sft

    pairwise = [{"prompt": "p", "chosen": "a", "rejected": "b"},
                {"prompt": "p", "chosen": "a", "rejected": "b", "margin": 2, "annotator": "ann-1"}]
    kwise = [{"prompt": "p", "responses": ["a", "b", "c"], "ranking": [1, 2, 0], "annotator": "x"}]
    write_jsonl(tmp_path / "pw.jsonl", pairwise)
    write_jsonl(tmp_path / "kw.jsonl", kwise)
    write_jsonl(tmp_path / "mixed.jsonl", pairwise + kwise)
    assert load_preferences(tmp_path / "pw.jsonl") == pairwise
    assert load_preferences(tmp_path / "kw.jsonl") == kwise
    assert load_preferences(tmp_path / "mixed.jsonl") == pairwise + kwise

    docs = ["the film was good .", "the film was dull ."]
    for name in ("c.txt", "c.jsonl"):
        write_corpus(tmp_path / name, docs)
        assert load_corpus(tmp_path / name) == docs


@pytest.mark.parametrize("line, loader, message", [
    ('{"prompt": "p", "completion": 3}', load_sft, "line 2: field 'completion' must be a string"),
    ('{"prompt": "p"}', load_sft, "line 2: missing field 'completion'"),
    ('{"prompt": "p", "completion": "c", "extra": 1}', load_sft, "line 2: unknown field 'extra'"),
    ('not json', load_sft, "line 2: not valid JSON"),
    ('[1, 2]', load_sft, "line 2: expected a JSON object"),
    ('', load_sft, "line 2: empty line"),
    ('{"prompt": "p", "chosen": "a", "rejected": "b", "margin": -1}', load_preferences,
     "line 2: field 'margin' must be a finite number >= 0"),
    ('{"prompt": "p", "chosen": "a", "rejected": "b", "margin": true}', load_preferences, "field 'margin'"),
    ('{"prompt": "p", "chosen": "a", "rejected": "b", "annotator": 7}', load_preferences,
     "line 2: field 'annotator' must be a string"),
    ('{"prompt": "p", "responses": ["a", "b"], "ranking": [0, 0]}', load_preferences,
     "line 2: field 'ranking' must be a permutation of 0..1"),
    ('{"prompt": "p", "responses": ["a"], "ranking": [0]}', load_preferences,
     "line 2: field 'responses' must be a list of at least 2"),
    ('{"prompt": "p", "responses": ["a", "b"]}', load_preferences, "line 2: missing field 'ranking'"),
])
def test_malformed_line_names_file_line_and_field(tmp_path, line, loader, message):
    good = {load_sft: '{"prompt": "p", "completion": "c"}',
            load_preferences: '{"prompt": "p", "chosen": "a", "rejected": "b"}'}[loader]
    path = tmp_path / "bad.jsonl"
    path.write_text(good + "\n" + line + "\n" + good + "\n")
    with pytest.raises(ValueError, match="bad.jsonl") as err:
        loader(path)
    assert message in str(err.value)


def test_corpus_txt_rejects_empty_documents(tmp_path):
    path = tmp_path / "c.txt"
    path.write_text("one doc\n\nanother\n")
    with pytest.raises(ValueError, match="c.txt, line 2: empty document"):
        load_corpus(path)
    with pytest.raises(ValueError, match="document 0"):
        write_corpus(tmp_path / "d.txt", ["two\nlines"])


def test_written_files_are_plain_json_lines(tmp_path):
    write_sft(tmp_path / "s.jsonl", [("p", "c")])
    assert json.loads((tmp_path / "s.jsonl").read_text()) == {"prompt": "p", "completion": "c"}
    assert not (tmp_path / "s.jsonl.tmp").exists()
