"""CLIP's byte-level BPE tokenizer, id-for-id equal to OpenAI's `SimpleTokenizer` + `clip.tokenize`.

Text embeddings are only meaningful if prompts become exactly the ids the weights were trained on,
so every step follows the reference: ftfy + double html unescape, whitespace collapse, lower-case,
CLIP's pre-tokenizer pattern, GPT-2's byte -> unicode table, and greedy lowest-rank-first merging.

Vocabularies load from OpenAI's merges file (`bpe_simple_vocab_16e6.txt.gz`) or from the
`vocab.json` + `merges.txt` pair of Hugging Face / OpenCLIP hub repos. `train_bpe` builds a small
vocabulary the same way CLIP's was built (for tests and toy models); `write_merges` saves it in
OpenAI's format so both this tokenizer and the reference can read it.
"""

from __future__ import annotations

import gzip
import heapq
import html
import io
import json
import os
import warnings
from collections import Counter
from collections.abc import Iterable, Sequence
from itertools import pairwise
from pathlib import Path

import ftfy
import regex
import torch

__all__ = ["EOT", "MAX_MERGES", "OPENAI_VOCAB_FILE", "SOT", "Tokenizer", "bytes_to_unicode", "clean_text",
           "read_merges", "train_bpe", "write_merges"]

SOT = "<|startoftext|>"
EOT = "<|endoftext|>"
EOW = "</w>"  # end-of-word marker glued to a word's last symbol
# The reference reads merges[1 : 49152 - 256 - 2 + 1]: 48894 merges, so 512 byte symbols + 48894
# merges + 2 specials = 49408 ids. Apply the same cap so longer files give the same vocabulary.
MAX_MERGES = 49152 - 256 - 2
OPENAI_VOCAB_FILE = "bpe_simple_vocab_16e6.txt.gz"
MAX_CACHED_TOKEN = 256  # longer pre-tokens are not memoised (each could hold megabytes)
MERGES_HEADER = "#version: 0.2"  # first line of a merges file; readers skip it whatever it says

# CLIP's pre-tokenizer: specials, English contractions, letter runs, single digits, and runs of
# everything else that is not whitespace. It must stay exactly this pattern for id equality.
_PRETOKENIZE = regex.compile(
    r"<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+",
    regex.IGNORECASE,
)
_WHITESPACE = regex.compile(r"\s+")


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character table.

    BPE works on strings; mapping each UTF-8 byte to a visible, non-whitespace character makes any
    text representable with 256 base symbols. Printable Latin-1 bytes map to themselves, the other
    68 to chr(256 + n) in byte order. The dict order (kept bytes first) is the order of ids 0..255.
    """
    kept = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table = {b: chr(b) for b in kept}
    for n, b in enumerate(b for b in range(256) if b not in table):
        table[b] = chr(256 + n)
    return table


_BYTE_TO_CHAR = bytes_to_unicode()
_CHAR_TO_BYTE = {c: b for b, c in _BYTE_TO_CHAR.items()}


def clean_text(text: str) -> str:
    """The reference's normalisation: fix mojibake, unescape html twice, collapse whitespace, lower."""
    text = ftfy.fix_text(text)
    text = html.unescape(html.unescape(text)).strip()
    return _WHITESPACE.sub(" ", text).strip().lower()


def _pretokenize(text: str) -> list[str]:
    """Cleaned text -> pre-tokens, each spelled in byte-unicode symbols (what BPE operates on)."""
    return ["".join(_BYTE_TO_CHAR[b] for b in piece.encode("utf-8"))
            for piece in _PRETOKENIZE.findall(clean_text(text))]


def _merge_pair(symbols: Sequence[str], first: str, second: str) -> list[str]:
    """Replace every non-overlapping (first, second), scanning left to right, by first+second."""
    out: list[str] = []
    i, n = 0, len(symbols)
    while i < n:
        if i + 1 < n and symbols[i] == first and symbols[i + 1] == second:
            out.append(first + second)
            i += 2
        else:
            out.append(symbols[i])
            i += 1
    return out


def _bpe_merge(word: list[str], ranks: dict[tuple[str, str], int]) -> list[str]:
    """The reference's BPE loop in O(n log n) instead of O(n * merges applied).

    The reference repeatedly takes the lowest-ranked adjacent pair and merges all its
    non-overlapping occurrences left to right; on a long word (a 30k-letter "class name") that
    rescans the whole word once per merge, quadratic time. Here the symbols are a linked list and
    every adjacent ranked pair sits in a heap keyed (rank, left position): all entries of the
    lowest rank are taken at once and merged in position order, skipping those a merge of the
    same batch consumed, which is exactly the reference's left-to-right pass. A merge only
    creates pairs containing the merged symbol, which can never be the pair being merged, so
    taking the batch before pushing them changes nothing. Stale entries are dropped on pop.
    """
    n = len(word)
    if n < 2:
        return word
    sym = list(word)
    nxt = [*range(1, n), -1]
    prv = list(range(-1, n - 1))
    alive = [True] * n
    heap = [(r, i) for i in range(n - 1) if (r := ranks.get((sym[i], sym[i + 1]))) is not None]
    heapq.heapify(heap)
    while heap:
        rank = heap[0][0]
        batch = []
        while heap and heap[0][0] == rank:
            batch.append(heapq.heappop(heap)[1])
        for i in batch:  # ascending positions: the reference's left-to-right pass
            j = nxt[i]
            if not alive[i] or j < 0 or ranks.get((sym[i], sym[j])) != rank:
                continue  # consumed by this batch, or the pair changed since it was pushed
            sym[i] += sym[j]
            alive[j] = False
            k = nxt[j]
            nxt[i] = k
            if k >= 0:
                prv[k] = i
                if (r := ranks.get((sym[i], sym[k]))) is not None:
                    heapq.heappush(heap, (r, i))
            p = prv[i]
            if p >= 0 and (r := ranks.get((sym[p], sym[i]))) is not None:
                heapq.heappush(heap, (r, p))
    out, i = [], 0
    while i >= 0:
        out.append(sym[i])
        i = nxt[i]
    return out


def _open_text(path: str | os.PathLike) -> str:
    path = Path(path)
    data = path.read_bytes()
    if path.name.endswith(".gz") or data[:2] == b"\x1f\x8b":
        data = gzip.decompress(data)
    return data.decode("utf-8")


def read_merges(path: str | os.PathLike) -> list[tuple[str, str]]:
    """Merges from an OpenAI (`.txt.gz` / `.txt`) or Hugging Face (`merges.txt`) file, capped.

    Both formats are a header line then one `left right` merge per line. Like the reference, the
    header is skipped unconditionally and only the first MAX_MERGES lines after it are used. Blank
    lines (a trailing newline) are ignored; the reference would turn them into an empty token.
    """
    lines = _open_text(path).split("\n")[1 : MAX_MERGES + 1]
    merges: list[tuple[str, str]] = []
    for lineno, line in enumerate(lines, start=2):
        parts = line.split()
        if not parts:
            continue
        if len(parts) != 2:
            raise ValueError(f"{path}:{lineno}: expected two symbols per merge, got {line!r}")
        merges.append((parts[0], parts[1]))
    return merges


def _openai_vocab(merges: Sequence[tuple[str, str]]) -> dict[str, int]:
    """The reference's id layout: 256 byte symbols, the same with </w>, merges in order, SOT, EOT.

    Built as a dict in id order, so a string produced by two merges keeps the later id, as there.
    """
    base = list(_BYTE_TO_CHAR.values())
    tokens = [*base, *(c + EOW for c in base), *(a + b for a, b in merges), SOT, EOT]
    return {tok: i for i, tok in enumerate(tokens)}


class Tokenizer:
    """CLIP's tokenizer. `tok(texts)` is `clip.tokenize(texts, truncate=True)` as a LongTensor.

    Args:
        path: an OpenAI merges file (`.txt.gz` or `.txt`), a `vocab.json` (its sibling `merges.txt`
            is used), or a folder holding either (see `from_dir`).
        vocab_path: optional `vocab.json`; with it, `path` is the matching `merges.txt` and ids
            come from the json instead of the OpenAI layout.
    """

    def __init__(self, path: str | os.PathLike, vocab_path: str | os.PathLike | None = None):
        path = Path(path)
        if path.is_dir():
            if vocab_path is not None:
                raise ValueError("give either a folder or files, not a folder plus vocab_path")
            path, vocab_path = _find_tokenizer_files(path)
        elif vocab_path is None and path.suffix == ".json":
            path, vocab_path = path.with_name("merges.txt"), path
        self.merges = read_merges(path)
        if vocab_path is None:
            self.encoder = _openai_vocab(self.merges)
        else:
            with open(vocab_path, encoding="utf-8") as f:
                self.encoder = {str(k): int(v) for k, v in json.load(f).items()}
            missing = [t for t in (SOT, EOT) if t not in self.encoder]
            if missing:
                raise ValueError(f"{vocab_path} lacks the special tokens {missing}")
        self.source = (str(path),) if vocab_path is None else (str(path), str(vocab_path))
        self.decoder = {i: tok for tok, i in self.encoder.items()}
        # Later duplicates win, like dict(zip(merges, range(...))) in the reference.
        self.bpe_ranks = {pair: rank for rank, pair in enumerate(self.merges)}
        # Specials are pre-seeded so they stay single tokens (and without </w>) when typed in text.
        self._cache: dict[str, tuple[str, ...]] = {SOT: (SOT,), EOT: (EOT,)}

    # -- constructors -------------------------------------------------------------------------

    @classmethod
    def from_file(cls, path: str | os.PathLike, vocab_path: str | os.PathLike | None = None) -> Tokenizer:
        """Same as the constructor; reads better at call sites."""
        return cls(path, vocab_path)

    @classmethod
    def from_dir(cls, folder: str | os.PathLike) -> Tokenizer:
        """The tokenizer shipped next to a model's weights: `vocab.json` + `merges.txt` (HF /
        OpenCLIP hub), else OpenAI's `bpe_simple_vocab_16e6.txt.gz`, else a single `*.txt.gz`;
        a `tokenizer/` subfolder is searched too. FileNotFoundError lists what was looked for."""
        merges, vocab = _find_tokenizer_files(Path(folder))
        return cls(merges, vocab)

    # -- properties ---------------------------------------------------------------------------

    @property
    def sot_token(self) -> int:
        return self.encoder[SOT]

    @property
    def eot_token(self) -> int:
        return self.encoder[EOT]

    @property
    def vocab_size(self) -> int:
        """Rows the token embedding needs: largest id + 1 (EOT's id for OpenAI-layout files)."""
        return max(self.encoder.values()) + 1

    def __repr__(self) -> str:
        return f"Tokenizer(vocab_size={self.vocab_size}, merges={len(self.merges)}, source={self.source})"

    # -- core ---------------------------------------------------------------------------------

    def bpe(self, token: str) -> tuple[str, ...]:
        """One pre-token (byte-unicode spelled) -> its BPE symbols; lowest-ranked pair merges first."""
        cached = self._cache.get(token)
        if cached is not None:
            return cached
        result = tuple(_bpe_merge([*token[:-1], token[-1] + EOW], self.bpe_ranks))
        if len(token) <= MAX_CACHED_TOKEN:  # a pathological long word is not worth keeping
            if len(self._cache) >= 200_000:  # bound memory for long-running processes
                self._cache = {SOT: (SOT,), EOT: (EOT,)}
            self._cache[token] = result
        return result

    def encode(self, text: str) -> list[int]:
        """Text -> ids, without start/end tokens (the reference `SimpleTokenizer.encode`)."""
        ids: list[int] = []
        for piece in _pretokenize(text):
            for sym in self.bpe(piece):
                try:
                    ids.append(self.encoder[sym])
                except KeyError:
                    raise KeyError(f"BPE symbol {sym!r} (from {text!r}) is not in the vocabulary") from None
        return ids

    def decode(self, ids: Iterable[int]) -> str:
        """Ids -> text as the reference does: bytes joined, invalid UTF-8 replaced, </w> -> space.

        Cleaning is lossy (lower-case, whitespace), so only already-clean text round-trips, and
        each word comes back followed by a space. Special and padding ids are not skipped.
        """
        chars = "".join(self.decoder[int(i)] for i in ids)
        raw = bytearray(_CHAR_TO_BYTE[c] for c in chars)
        return raw.decode("utf-8", errors="replace").replace(EOW, " ")

    def __call__(self, texts: str | Sequence[str], context_length: int = 77,
                 truncate: bool = True) -> torch.Tensor:
        """Texts -> (B, context_length) int64 ids: SOT, text ids, EOT, zero padding.

        A prompt longer than the context is cut to its first `context_length` ids with the last
        set to EOT (the reference with truncate=True) and a warning names it; with
        truncate=False a ValueError is raised instead.
        """
        if context_length < 1:
            raise ValueError(f"context_length must be >= 1, got {context_length}")
        if isinstance(texts, str):
            texts = [texts]
        out = torch.zeros(len(texts), context_length, dtype=torch.long)
        for row, text in enumerate(texts):
            ids = [self.sot_token, *self.encode(text), self.eot_token]
            if len(ids) > context_length:
                msg = (f"prompt {_shorten(text)!r} is {len(ids)} tokens long (with start/end tokens), "
                       f"more than the context length {context_length}")
                if not truncate:
                    raise ValueError(msg)
                warnings.warn(msg + f"; keeping its first {context_length} tokens", stacklevel=2)
                ids = ids[:context_length]
                ids[-1] = self.eot_token
            out[row, : len(ids)] = torch.tensor(ids, dtype=torch.long)
        return out


def _shorten(text: str, limit: int = 60) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _find_tokenizer_files(folder: Path) -> tuple[Path, Path | None]:
    """(merges file, vocab.json or None) found in a weights folder; see `Tokenizer.from_dir`."""
    if not folder.is_dir():
        raise FileNotFoundError(f"tokenizer folder {folder} does not exist")
    for d in (folder, folder / "tokenizer"):
        if (d / "vocab.json").is_file() and (d / "merges.txt").is_file():
            return d / "merges.txt", d / "vocab.json"
        if (d / OPENAI_VOCAB_FILE).is_file():
            return d / OPENAI_VOCAB_FILE, None
        found = sorted(p for p in d.glob("*.txt.gz") if p.is_file()) if d.is_dir() else []
        if len(found) == 1:
            return found[0], None
        if len(found) > 1:
            raise ValueError(f"several merges files in {d}, pass one explicitly: {[p.name for p in found]}")
    raise FileNotFoundError(
        f"no CLIP tokenizer files in {folder} (or its tokenizer/ subfolder): looked for vocab.json + "
        f"merges.txt (Hugging Face / OpenCLIP), {OPENAI_VOCAB_FILE} (OpenAI), or any *.txt.gz merges file")


# -- training -----------------------------------------------------------------------------------


def train_bpe(texts: Iterable[str], num_merges: int) -> list[tuple[str, str]]:
    """Learn up to `num_merges` BPE merges, the way CLIP's vocabulary was built.

    Texts get the tokenizer's own cleaning and pre-tokenizer; each word is its byte-unicode symbols
    with </w> on the last one, weighted by how often it occurs. The most frequent adjacent pair
    (counted with multiplicity; ties -> lexicographically smallest pair) is merged everywhere,
    greedily left to right as encoding does, and the counts are updated incrementally. Stops early
    when no pair is left. Deterministic: the result depends only on the multiset of words.
    """
    if num_merges < 0:
        raise ValueError(f"num_merges must be >= 0, got {num_merges}")
    word_counts: Counter[str] = Counter()
    for text in texts:
        word_counts.update(w for w in _pretokenize(text) if w not in (SOT, EOT))
    vocab_words = sorted(word_counts)
    words = [[*w[:-1], w[-1] + EOW] for w in vocab_words]
    freqs = [word_counts[w] for w in vocab_words]

    pair_counts: dict[tuple[str, str], int] = {}
    where: dict[tuple[str, str], set[int]] = {}  # pair -> words that (may) contain it
    for idx, (syms, freq) in enumerate(zip(words, freqs)):
        for pair in pairwise(syms):
            pair_counts[pair] = pair_counts.get(pair, 0) + freq
            where.setdefault(pair, set()).add(idx)
    # Max-heap by count, then smallest pair; entries go stale as counts change (checked on pop).
    heap = [(-c, pair) for pair, c in pair_counts.items()]
    heapq.heapify(heap)

    merges: list[tuple[str, str]] = []
    while heap and len(merges) < num_merges:
        neg_count, pair = heapq.heappop(heap)
        if pair_counts.get(pair, 0) != -neg_count:
            continue
        merges.append(pair)
        changed: set[tuple[str, str]] = set()
        for idx in where.pop(pair, ()):
            syms, freq = words[idx], freqs[idx]
            merged = _merge_pair(syms, *pair)
            if len(merged) == len(syms):
                continue  # stale entry: the word no longer holds the pair
            for p in pairwise(syms):
                pair_counts[p] -= freq
                changed.add(p)
            for p in pairwise(merged):
                pair_counts[p] = pair_counts.get(p, 0) + freq
                where.setdefault(p, set()).add(idx)
                changed.add(p)
            words[idx] = merged
        for p in changed:
            count = pair_counts[p]
            if count > 0:
                heapq.heappush(heap, (-count, p))
            else:
                del pair_counts[p]
                where.pop(p, None)
    return merges


def write_merges(merges: Iterable[tuple[str, str]], path: str | os.PathLike,
                 header: str = MERGES_HEADER) -> None:
    """Save merges in OpenAI's format (header line, one `left right` per line), gzip if `.gz`.

    No trailing newline, so the reference `SimpleTokenizer` (which would read it as an empty merge)
    builds the same vocabulary. The gzip header has no name or time, so output is byte-stable.
    The `#version: 0.2` header also makes the plain-text form a valid Hugging Face merges.txt.
    """
    lines = [header]
    for a, b in merges:
        if not a or not b or any(c.isspace() for c in a + b):
            raise ValueError(f"merge symbols must be non-empty and whitespace-free: {(a, b)!r}")
        lines.append(f"{a} {b}")
    data = "\n".join(lines).encode("utf-8")
    path = Path(path)
    if path.name.endswith(".gz"):
        buf = io.BytesIO()
        with gzip.GzipFile(filename="", mode="wb", fileobj=buf, mtime=0) as gz:
            gz.write(data)
        data = buf.getvalue()
    path.write_bytes(data)
