"""BPE on very long words: the same symbols as the reference loop, in near-linear time.

A server takes class names from anyone; with the reference's loop (rescan the word once per merge
applied) one 30k-letter word took 21 s with CLIP's real vocabulary. The reference loop is restated
here (lowest-ranked pair first, every non-overlapping occurrence merged left to right) to check
the fast one symbol for symbol; the goldens in test_tokenizer.py check it against OpenAI's ids.
"""

from __future__ import annotations

import random
import time
from itertools import pairwise
from pathlib import Path

import pytest

from ovss.text.tokenizer import EOW, Tokenizer, write_merges

SMALL_VOCAB = Path(__file__).resolve().parents[1] / "golden" / "tokenizer" / "small_vocab.txt.gz"
CONSONANTS, VOWELS = "bcdfghjklmnpqrstvwxz", "aeiouy"
SYLLABLES = [c + v for c in CONSONANTS for v in VOWELS]


def reference_bpe(word: list[str], ranks: dict[tuple[str, str], int]) -> list[str]:
    """The reference's loop, quadratic on long words (kept only as the oracle)."""
    while len(word) > 1:
        best = min(pairwise(word), key=lambda p: ranks.get(p, float("inf")))
        if best not in ranks:
            break
        out, i = [], 0
        while i < len(word):
            if i + 1 < len(word) and (word[i], word[i + 1]) == best:
                out.append(best[0] + best[1])
                i += 2
            else:
                out.append(word[i])
                i += 1
        word = out
    return word


@pytest.fixture(scope="module")
def syllable_tok(tmp_path_factory) -> Tokenizer:
    """Merges that keep applying along a long word: consonant+vowel syllables, then every pair of
    syllables (14,400 merges, shuffled ranks), so a word of n letters applies ~n/4 distinct merges."""
    rng = random.Random(0)
    pairs = [(a, b) for a in SYLLABLES for b in SYLLABLES]
    rng.shuffle(pairs)
    path = tmp_path_factory.mktemp("syll") / "merges.txt"
    write_merges([(c, v) for c in CONSONANTS for v in VOWELS] + pairs, path)
    return Tokenizer(path)


@pytest.mark.parametrize("vocab", ["small", "syllables"])
def test_fast_bpe_equals_the_reference_loop(vocab, syllable_tok):
    tok = Tokenizer(SMALL_VOCAB) if vocab == "small" else syllable_tok
    rng = random.Random(1)
    alphabet = sorted({ch for a, b in tok.merges[:400] for ch in (a + b).replace(EOW, "")})
    words = [
        *("".join(rng.choice(alphabet) for _ in range(rng.randint(1, 40))) for _ in range(1500)),
        *("".join(rng.choice(alphabet) for _ in range(rng.randint(1, 3))) * rng.randint(1, 25)  # overlaps
          for _ in range(800)),
        *("".join(rng.choice(SYLLABLES) for _ in range(rng.randint(200, 600))) for _ in range(3)),
    ]
    for w in words:
        assert list(tok.bpe(w)) == reference_bpe([*w[:-1], w[-1] + EOW], tok.bpe_ranks), w


def test_a_30k_letter_word_takes_well_under_a_second(syllable_tok):
    """The reference loop needs ~12 s for this word on one core (7,500 merges x 15,000 symbols)."""
    rng = random.Random(2)
    word = "".join(rng.choice(SYLLABLES) for _ in range(15_000))
    t0 = time.perf_counter()
    ids = syllable_tok.encode(word)
    elapsed = time.perf_counter() - t0
    assert elapsed < 2.0, f"{elapsed:.1f} s"
    assert len(ids) < 15_000 and word not in syllable_tok._cache  # merged; too long to memoise
