"""CLIP tokenizer vs goldens from OpenAI's reference tokenizer (see tests/golden/tokenizer/README.md).

No network, no reference code: the goldens hold the reference's ids for a small trained vocabulary.
"""

from __future__ import annotations

import gzip
import importlib.util
import json
import random
import warnings
from pathlib import Path

import pytest
import torch

from ovss.text.tokenizer import (
    EOT,
    MAX_MERGES,
    SOT,
    Tokenizer,
    clean_text,
    read_merges,
    train_bpe,
    write_merges,
)

GOLDEN = Path(__file__).resolve().parents[1] / "golden"
SMALL_VOCAB = GOLDEN / "tokenizer" / "small_vocab.txt.gz"


@pytest.fixture(scope="module")
def golden() -> dict:
    return json.loads((GOLDEN / "tokenizer" / "reference_ids.json").read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def tok() -> Tokenizer:
    return Tokenizer(SMALL_VOCAB)


@pytest.fixture(scope="module")
def texts(golden) -> list[str]:
    return [c["text"] for c in golden["cases"]]


def _long_case(golden) -> dict:
    return next(c for c in golden["cases"] if len(c["ids"]) + 2 > 77 and len(c["text"]) > 100)


def _write_hf(tok: Tokenizer, folder: Path, vocab: dict[str, int] | None = None) -> Path:
    """Hugging Face layout from the small gz: vocab.json + merges.txt with a '#version' header."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps(vocab or tok.encoder, ensure_ascii=False), encoding="utf-8")
    lines = gzip.decompress(SMALL_VOCAB.read_bytes()).decode("utf-8").split("\n")[1:]
    (folder / "merges.txt").write_text("\n".join(["#version: 0.2", *lines]) + "\n", encoding="utf-8")
    return folder


# -- equality with the reference ------------------------------------------------------------------


def test_golden_covers_what_it_should(golden):
    cases = golden["cases"]
    assert len(cases) >= 300
    assert any(c["text"] == "" for c in cases)
    assert sum(len(c["ids"]) + 2 > 77 for c in cases) >= 3


def test_special_tokens_and_vocab_size(tok, golden):
    assert tok.vocab_size == golden["vocab_size"] == len(read_merges(SMALL_VOCAB)) + 512 + 2
    assert tok.sot_token == golden["sot_token"] == tok.vocab_size - 2
    assert tok.eot_token == golden["eot_token"] == tok.vocab_size - 1


def test_encode_matches_reference(tok, golden):
    bad = [(c["text"], tok.encode(c["text"]), c["ids"]) for c in golden["cases"]
           if tok.encode(c["text"]) != c["ids"]]
    assert not bad, f"{len(bad)} mismatches, first: {bad[0]}"


def test_padded_rows_match_reference_tokenize(tok, golden, texts):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        rows = tok(texts)
    assert rows.dtype == torch.long and rows.shape == (len(texts), 77)
    assert rows.tolist() == [c["row"] for c in golden["cases"]]


def test_single_string_and_other_context_length(tok, golden):
    case = golden["cases"][10]
    row = tok(case["text"])
    assert row.shape == (1, 77) and row[0].tolist() == case["row"]
    short = tok([case["text"]], context_length=len(case["ids"]) + 2)
    assert short[0].tolist() == [tok.sot_token, *case["ids"], tok.eot_token]


# -- truncation -------------------------------------------------------------------------------


def test_truncation_warns_and_keeps_first_tokens(tok, golden):
    case = _long_case(golden)
    n = len(case["ids"]) + 2
    with pytest.warns(UserWarning) as record:
        row = tok(case["text"])
    assert row[0].tolist() == case["row"]
    assert row[0, -1].item() == tok.eot_token and row[0, :-1].tolist() == [tok.sot_token, *case["ids"][:75]]
    msg = str(record[0].message)
    assert f"{n} tokens" in msg and "77" in msg
    assert case["text"][:30] in msg and case["text"] not in msg  # named, but shortened


def test_truncate_false_raises(tok, golden):
    case = _long_case(golden)
    with pytest.raises(ValueError, match=f"{len(case['ids']) + 2} tokens") as err:
        tok([case["text"]], truncate=False)
    assert case["text"][:30] in str(err.value)


def test_no_warning_up_to_the_context_length(tok):
    exact = "a " * 75  # 75 ids + sot + eot = 77
    assert len(tok.encode(exact)) == 75
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        row = tok(exact, truncate=False)
    assert row[0, -1].item() == tok.eot_token
    with pytest.warns(UserWarning, match="78 tokens"):
        tok("a " * 76)


# -- loading routes -------------------------------------------------------------------------------


def test_hf_vocab_json_route_gives_identical_ids(tok, texts, tmp_path):
    folder = _write_hf(tok, tmp_path / "hf")
    for hf in (Tokenizer.from_dir(folder), Tokenizer(folder / "merges.txt", folder / "vocab.json"),
               Tokenizer.from_file(folder / "vocab.json"), Tokenizer(folder)):
        assert hf.vocab_size == tok.vocab_size and hf.merges == tok.merges
        assert (hf.sot_token, hf.eot_token) == (tok.sot_token, tok.eot_token)
        assert [hf.encode(t) for t in texts] == [tok.encode(t) for t in texts]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert torch.equal(Tokenizer.from_dir(folder)(texts), tok(texts))


def test_hf_ids_come_from_vocab_json(tok, texts, tmp_path):
    ids = list(tok.encoder.values())
    random.Random(0).shuffle(ids)
    permuted = dict(zip(tok.encoder, ids))
    old_to_new = {tok.encoder[k]: v for k, v in permuted.items()}
    hf = Tokenizer.from_dir(_write_hf(tok, tmp_path / "perm", permuted))
    assert hf.sot_token == permuted[SOT] and hf.eot_token == permuted[EOT]
    for t in texts[:100]:
        assert hf.encode(t) == [old_to_new[i] for i in tok.encode(t)]
        assert hf.decode(hf.encode(t)) == tok.decode(tok.encode(t))


def test_hf_vocab_without_specials_is_rejected(tok, tmp_path):
    vocab = {k: v for k, v in tok.encoder.items() if k != EOT}
    with pytest.raises(ValueError, match="special tokens"):
        Tokenizer.from_dir(_write_hf(tok, tmp_path / "nospecial", vocab))


def test_plain_txt_and_dir_routes(tok, texts, tmp_path):
    plain = tmp_path / "merges_plain.txt"
    plain.write_bytes(gzip.decompress(SMALL_VOCAB.read_bytes()))
    assert Tokenizer.from_file(plain).encoder == tok.encoder
    one = tmp_path / "one"
    one.mkdir()
    (one / "some_vocab.txt.gz").write_bytes(SMALL_VOCAB.read_bytes())
    assert Tokenizer.from_dir(one).encoder == tok.encoder
    nested = tmp_path / "nested" / "tokenizer"
    nested.mkdir(parents=True)
    (nested / "bpe_simple_vocab_16e6.txt.gz").write_bytes(SMALL_VOCAB.read_bytes())
    assert Tokenizer.from_dir(tmp_path / "nested").encoder == tok.encoder


def test_from_dir_errors(tok, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError) as err:
        Tokenizer.from_dir(empty)
    for name in ("vocab.json", "merges.txt", "bpe_simple_vocab_16e6.txt.gz", "*.txt.gz"):
        assert name in str(err.value)
    with pytest.raises(FileNotFoundError):
        Tokenizer.from_dir(tmp_path / "missing")
    half = tmp_path / "half"
    half.mkdir()
    (half / "vocab.json").write_text(json.dumps(tok.encoder))  # merges.txt missing
    with pytest.raises(FileNotFoundError):
        Tokenizer.from_dir(half)
    two = tmp_path / "two"
    two.mkdir()
    for name in ("a.txt.gz", "b.txt.gz"):
        (two / name).write_bytes(SMALL_VOCAB.read_bytes())
    with pytest.raises(ValueError, match="several"):
        Tokenizer.from_dir(two)


def test_merges_are_capped_like_the_reference(tmp_path):
    path = tmp_path / "big.txt.gz"
    write_merges([(f"x{i}", "y") for i in range(MAX_MERGES + 10)], path)
    big = Tokenizer(path)
    assert len(big.merges) == MAX_MERGES and big.vocab_size == 49408
    assert big.eot_token == 49407


# -- decode -----------------------------------------------------------------------------------------


def test_decode_round_trip_ascii(tok, golden):
    for text in ["a photo of a cat", "a photo of a xylophone and a quokka", "there is a dog on the grass"]:
        assert tok.decode(tok.encode(text)) == text + " "
    assert tok.decode(tok.encode("Hello, World!")) == "hello , world ! "
    # Clean ascii text: decoding then re-encoding gives the same ids.
    for c in golden["cases"]:
        if clean_text(c["text"]).isascii():
            assert tok.encode(tok.decode(c["ids"])) == c["ids"], c["text"]


def test_decode_accepts_tensor_ids(tok):
    row = tok("a photo of a cat")[0]
    n = int((row != 0).sum())
    assert tok.decode(row[:n]) == "<|startoftext|>a photo of a cat <|endoftext|>"


# -- training -----------------------------------------------------------------------------------------


def _golden_script():
    spec = importlib.util.spec_from_file_location("make_tokenizer_golden", GOLDEN / "make_tokenizer_golden.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_train_bpe_reproduces_the_golden_vocab():
    script = _golden_script()
    assert train_bpe(script.training_corpus(), script.NUM_MERGES) == read_merges(SMALL_VOCAB)


def test_train_bpe_is_deterministic(tmp_path):
    corpus = _golden_script().training_corpus()[:400]
    merges = train_bpe(corpus, 300)
    assert merges == train_bpe(corpus, 300)
    shuffled = corpus[:]
    random.Random(1).shuffle(shuffled)
    assert train_bpe(shuffled, 300) == merges  # only the multiset of words matters
    assert train_bpe(corpus, 100) == merges[:100]
    assert train_bpe(corpus, 0) == []
    a, b = tmp_path / "a.txt.gz", tmp_path / "b.txt.gz"
    write_merges(merges, a)
    write_merges(merges, b)
    assert a.read_bytes() == b.read_bytes()  # byte-stable gzip
    assert read_merges(a) == merges


def test_train_bpe_tie_break_and_exhaustion():
    # Every pair occurs once: lexicographically smallest first; stops when nothing is left.
    assert train_bpe(["cd ab"], 10) == [("a", "b</w>"), ("c", "d</w>")]
    # The most frequent pair wins over a lexicographically smaller one.
    assert train_bpe(["ab xy xy"], 1) == [("x", "y</w>")]


def test_trained_vocab_encodes_training_words_whole(tmp_path):
    corpus = ["a red cat", "a blue dog", "the red dog", "the blue cat"] * 3
    merges = train_bpe(corpus, 1000)
    path = tmp_path / "tiny.txt"
    write_merges(merges, path)
    tiny = Tokenizer(path)
    ids = tiny.encode("the blue cat")
    assert [tiny.decoder[i] for i in ids] == ["the</w>", "blue</w>", "cat</w>"]
    assert tiny.vocab_size == 512 + len(merges) + 2
