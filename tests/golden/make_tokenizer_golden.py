"""Regenerate the tokenizer goldens in tests/golden/tokenizer/ (see README.md there).

    python tests/golden/make_tokenizer_golden.py --reference /path/to/openai/CLIP/clip/simple_tokenizer.py

1. trains a small vocabulary with `ovss.backbones.tokenizer.train_bpe` on the fixed corpus below
   and writes it to tokenizer/small_vocab.txt.gz;
2. encodes the fixed test strings below with OpenAI's reference `SimpleTokenizer` loaded with that
   vocabulary, pads them as `clip.tokenize(..., truncate=True)` does (re-done here because clip.py
   imports torchvision), and stores strings, ids and rows in tokenizer/reference_ids.json;
3. if the real vocabulary (bpe_simple_vocab_16e6.txt.gz next to the reference file, or --real-vocab)
   exists, checks that ovss's Tokenizer, via the .gz and via a vocab.json + merges.txt pair built
   from it, gives the reference's ids and rows for every string. Printed only, not stored.

Only the reference tokenizer's ids are stored; ovss code is used to train the vocabulary file,
which the reference then reads (write_merges' format is what makes that possible).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import random
import subprocess
import sys
import tempfile
from pathlib import Path

from ovss.text.tokenizer import Tokenizer, train_bpe, write_merges

HERE = Path(__file__).resolve().parent / "tokenizer"
NUM_MERGES = 1500
CONTEXT_LENGTH = 77

# ---------------------------------------------------------------------------------------------
# Training corpus: captions in CLIP-prompt style plus varied prose, punctuation and scripts.

_PROSE = """\
A photo of a cat sitting on a wooden table next to a cup of coffee.
There is a dog running across the green field in the morning light.
The quick brown fox jumps over the lazy dog; the dog doesn't care.
It's a beautiful day in the neighbourhood, isn't it? We're going to the park.
They've been waiting for the train since 7:45 am, and it's still not here!
I'm sure you'll like the new museum - it opened on 12/03/2021 downtown.
He'd rather read a book than watch TV. She'll bring sandwiches & lemonade.
Semantic segmentation assigns a class label to every pixel in an image.
Open-vocabulary models recognise categories named by arbitrary text prompts.
The road, the sky, the building, the tree, the person, the car and the bicycle.
A satellite image of farmland, rivers, roads and small villages from above.
Close-up of a red apple, a yellow banana, and an orange on a white plate.
A painting of a sailing boat on a stormy sea, oil on canvas, 19th century.
Une photo d'un chat noir sur le canapé. Le café est très bon à Paris.
Ein Foto von einem Hund im Garten. Die Straße ist nass, schöne Grüße aus München.
Una foto de una niña con un perro en la playa; ¡qué día tan bonito!
Фотография кошки на диване. Москва, улица, дом и машина.
一只猫坐在桌子上。 日本語の文章とカタカナ、ひらがな。 한국어 문장입니다.
Emoji time: 🐱 🐶 🚗 ❤️ 👍 — smileys everywhere :) ;-) <3
Prices: $19.99, €5, £3.50, ¥1000 and 50% off; call +1 (555) 010-9999.
Email me at someone@example.com or visit https://example.org/path?q=1&x=2.
Numbers 0 1 2 3 4 5 6 7 8 9 10 100 1000 2024 3.14159 and 1,000,000.
Mathematics: x^2 + y^2 = z^2, a <= b, c != d, e >= f, (g * h) / i.
"Quoted speech", 'single quotes', [brackets], {braces} and #hashtags @mentions.
"""

_COLORS = ["red", "green", "blue", "yellow", "black", "white", "orange", "purple", "brown", "grey",
           "pink", "golden", "silver", "dark", "bright", "small", "large", "old", "young", "tiny"]
_THINGS = ["cat", "dog", "car", "bus", "bird", "horse", "sheep", "cow", "elephant", "bear", "zebra",
           "giraffe", "person", "bicycle", "motorbike", "airplane", "train", "boat", "bottle", "chair",
           "sofa", "table", "plant", "television", "building", "mountain", "river", "road", "tree",
           "flower", "sky", "cloud", "window", "door", "lamp", "computer", "keyboard", "umbrella"]
_SCENES = ["on the grass", "in the street", "near the beach", "under a bridge", "in a kitchen",
           "at night", "in the snow", "inside a room", "next to a wall", "in the forest",
           "on a sunny day", "in the rain", "by the lake", "in a city", "on the sidewalk"]
_SYLLABLES = ["ka", "ro", "mi", "tan", "ble", "ing", "tion", "pre", "con", "str", "ph", "qu", "ex", "ul",
              "ar", "en", "or", "ist", "ment", "ous", "ly", "er", "un", "re", "de", "zz", "\u00e4", "\u00e9",
              "\u00f1o", "\u00df", "\u732b", "7"]
_TEMPLATES = ["a photo of a {c} {t} {s}.", "a {c} {t} {s}", "there is a {t} {s}.",
              "a bad photo of the {t}.", "a close-up photo of a {c} {t}.", "an image of {t}s {s}.",
              "the {t} is {c}.", "A PHOTO OF THE {C} {T}!"]


def training_corpus() -> list[str]:
    rng = random.Random(0)
    lines = _PROSE.splitlines()
    for _ in range(1500):
        c, t, s = rng.choice(_COLORS), rng.choice(_THINGS), rng.choice(_SCENES)
        tpl = rng.choice(_TEMPLATES)
        lines.append(tpl.format(c=c, t=t, s=s, C=c.upper(), T=t.upper()))
    # Made-up words from syllables (some accented), so the vocabulary is not exhausted by the
    # captions and longer words end up split into several learned pieces.
    words = ["".join(rng.choice(_SYLLABLES) for _ in range(rng.randint(1, 5))) for _ in range(600)]
    for _ in range(400):
        lines.append(" ".join(rng.choice(words) for _ in range(rng.randint(3, 10))))
    return lines


# ---------------------------------------------------------------------------------------------
# Test strings.

_HANDWRITTEN = [
    "", " ", "   \t\n  ", "a", "A", "I", ".", "!!!", "...", "a photo of a cat.", "A Photo Of A Cat.",
    "A PHOTO OF A CAT", "a photo of a zebracorn.", "antidisestablishmentarianism",
    "Pneumonoultramicroscopicsilicovolcanoconiosis", "  leading and trailing spaces  ",
    "multiple     inner\t\tspaces\n\nand newlines", "tabs\tand\u00a0non-breaking\u2003em\u3000ideographic",
    "zero\u200bwidth\u200bspace", "soft\u00adhyphen",
    # contractions
    "it's", "IT'S", "It'S", "we're", "they've", "i'm", "you'll", "he'd", "can't", "don't stop",
    "the cat's toy", "the cats' toys", "'s alone", "''quoted''", "rock'n'roll", "o'clock",
    "it\u2019s curly", "\u2018single\u2019 and \u201cdouble\u201d curly quotes",
    # html entities
    "fish &amp; chips", "fish &amp;amp; chips", "fish &amp;amp;amp; chips", "&lt;b&gt;bold&lt;/b&gt;",
    "&amp;lt;tag&amp;gt;", "caf&eacute;", "&#39;quoted&#39;", "&quot;hi&quot;", "&#x263A; smile",
    "a&nbsp;b", "&notanentity; &amp", "AT&T", "Q&A", "&&&",
    # ftfy leaves entities alone in text that looks like html; then the two unescapes matter
    "<b>fish &amp;amp; chips</b>", "<p>&amp;amp;amp; triple</p>", "<i>caf&amp;eacute;</i>",
    "<a href='x'>&amp;lt;tag&amp;gt;</a>",
    # mojibake fixed by ftfy
    "cafÃ©", "The Mona Lisa doesnÃ¢â‚¬â„¢t have eyebrows.", "Ã©tÃ© Ã  Paris", "â€œquotedâ€\x9d",
    "ÃŸtraÃŸe", "naÃ¯ve faÃ§ade", "Ã¼ber", "seÃ±or", "â€” dash", "Ã\xa0 la carte",
    # digits and numbers
    "0", "42", "2024", "3.14159", "1,000,000", "+1 (555) 010-9999", "12:30pm", "7th", "1st 2nd 3rd",
    "x\u00b2 + y\u00b3", "\u00bd cup", "\u216b o'clock", "\u0663\u0664 arabic-indic", "\uff11\uff12 fullwidth digits",
    # punctuation heavy
    "hello, world!", "what?!?", "(parenthetical)", "[bracketed] {braced} <angled>", "a--b---c",
    "snake_case_name", "kebab-case-name", "CamelCaseName", "path/to/file.txt", "https://example.org/a?b=c&d=e",
    "someone@example.com", "#hashtag @mention", "$19.99 \u20ac5 \u00a33.50 \u00a51000", "100% sure",
    ":) ;-) :-( <3 xD", "a.b.c.d", "...and so on...", "\u00bfqu\u00e9?", "\u00a1hola!", "\u2014em dash\u2013en dash",
    # special tokens typed in text
    "<|startoftext|>", "<|endoftext|>", "a <|endoftext|> b", "<|STARTOFTEXT|>hi<|EndOfText|>",
    "<|startoftext|><|endoftext|>", "<|notaspecial|>", "<|endoftext", "startoftext",
    # latin accents and other scripts
    "caf\u00e9 na\u00efve r\u00e9sum\u00e9", "cafe\u0301 (combining accent)", "Stra\u00dfe", "STRASSE",
    "\u0130stanbul", "\u01c5ungla", "\uff21\uff22\uff23 fullwidth", "\ufb01nance \ufb02ow ligatures",
    "\u00c5ngstr\u00f6m", "\u00e6\u00f8\u00e5 \u00c6\u00d8\u00c5", "\u0142\u00f3d\u017a", "\u010de\u0161tina",
    "\u0395\u03bb\u03bb\u03b7\u03bd\u03b9\u03ba\u03ac", "\u0420\u0443\u0441\u0441\u043a\u0438\u0439 \u0442\u0435\u043a\u0441\u0442",
    "\u05e2\u05d1\u05e8\u05d9\u05ea", "\u0627\u0644\u0639\u0631\u0628\u064a\u0629", "\u0939\u093f\u0928\u094d\u0926\u0940",
    "\u0e20\u0e32\u0e29\u0e32\u0e44\u0e17\u0e22", "\u4e00\u53ea\u732b", "\u65e5\u672c\u8a9e\u306e\u6587\u7ae0",
    "\u30ab\u30bf\u30ab\u30ca", "\ud55c\uad6d\uc5b4", "\u732b\u3068\u72ac cat and dog", "mixed\u6f22\u5b57text",
    # emoji and symbols
    "\U0001f431", "\U0001f431\U0001f436", "\U0001f431\u200d\U0001f464 ninja cat", "\U0001f44d\U0001f3fd",
    "\U0001f1ef\U0001f1f5 flag", "\u2764\ufe0f love", "\u2603 snowman", "\u2122 \u00ae \u00a9", "\u2192 \u2190 \u2191",
    "\u221e \u2211 \u222b", "\u2605\u2606", "I \u2764 NY", "\U0001f680\U0001f680\U0001f680 to the moon",
    # control characters
    "\x07bell", "null\x00char", "line\rcarriage", "\x1b[31mansi\x1b[0m",
]

_PROMPT_WORDS = ["a", "photo", "of", "the", "cat", "dog", "zebra", "unseenword", "Segmentation",
                 "open-vocabulary", "it's", "they're", "&amp;", "caf\u00e9", "\u732b", "\U0001f431",
                 "2024", "3.5", "x\u00b2", "(", ")", "!", "?", "...", "\u00fcber", "na\u00efve",
                 "\u0444\u043e\u0442\u043e", "A", "BIG", "Tiny", "cafÃ©", "&lt;", "  ", "\t",
                 "ph\u00f6to", "quokka", "xylophone", "<|endoftext|>", "\u2014", "#1"]


def test_strings() -> list[str]:
    rng = random.Random(1234)
    out = list(_HANDWRITTEN)
    # Long prompts: well past 77 tokens, and some just around the limit.
    sentence = "a photo of a small red bicycle leaning against an old brick wall in the rain. "
    out += [sentence * 6, (sentence * 3).upper(), "word " * 80, "x" * 300, "1 2 3 4 5 " * 20,
            "\u732b" * 100, " ".join(f"token{i}" for i in range(60)), "a " * 75, "a " * 76, "a " * 74]
    # Random prompts from a pool of fragments (seeded, so the list is fixed).
    while len(out) < 320:
        n = rng.randint(1, 14)
        words = [rng.choice(_PROMPT_WORDS) for _ in range(n)]
        if rng.random() < 0.3:
            words = [w.capitalize() for w in words]
        out.append((" " if rng.random() < 0.85 else "").join(words))
    # Training-style captions (fully merged words) as well.
    out += training_corpus()[-20:]
    return out


# ---------------------------------------------------------------------------------------------


def load_reference(path: Path):
    spec = importlib.util.spec_from_file_location("clip_reference_simple_tokenizer", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def reference_rows(ref, texts: list[str], context_length: int = CONTEXT_LENGTH) -> list[list[int]]:
    """clip.tokenize(texts, context_length, truncate=True) from the reference encoder's ids."""
    sot, eot = ref.encoder["<|startoftext|>"], ref.encoder["<|endoftext|>"]
    rows = []
    for text in texts:
        tokens = [sot] + ref.encode(text) + [eot]
        if len(tokens) > context_length:
            tokens = tokens[:context_length]
            tokens[-1] = eot
        rows.append(tokens + [0] * (context_length - len(tokens)))
    return rows


def git_commit(path: Path) -> str:
    try:
        return subprocess.run(["git", "-C", str(path.parent), "log", "-1", "--format=%H"],
                              capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def check_real_vocab(module, vocab: Path, texts: list[str]) -> bool:
    import warnings

    ref = module.SimpleTokenizer(str(vocab))
    ours = Tokenizer(vocab)
    ok = ours.encoder == ref.encoder and ours.bpe_ranks == ref.bpe_ranks
    print(f"real vocab {vocab}: vocab size ours={ours.vocab_size} ref={len(ref.encoder)}, "
          f"identical encoder and merge ranks: {ok}")
    bad = [t for t in texts if ours.encode(t) != ref.encode(t)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        rows_equal = ours(texts).tolist() == reference_rows(ref, texts)
    print(f"real vocab, .gz route: ids equal for {len(texts) - len(bad)}/{len(texts)} strings; "
          f"77-token rows equal: {rows_equal}")
    # Hugging Face layout built from the gz file independently of ovss: vocab.json from the
    # reference encoder, merges.txt = '#version: 0.2' + the same merge lines.
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        (tmp / "vocab.json").write_text(json.dumps(ref.encoder, ensure_ascii=False), encoding="utf-8")
        lines = module.gzip.open(str(vocab)).read().decode("utf-8").split("\n")[1 : 49152 - 256 - 2 + 1]
        (tmp / "merges.txt").write_text("\n".join(["#version: 0.2", *lines]), encoding="utf-8")
        hf = Tokenizer.from_dir(tmp)
        bad_hf = [t for t in texts if hf.encode(t) != ref.encode(t)]
        print(f"real vocab, vocab.json + merges.txt route: vocab size {hf.vocab_size}, ids equal for "
              f"{len(texts) - len(bad_hf)}/{len(texts)} strings")
    for t in (bad + bad_hf)[:10]:
        print("  MISMATCH", repr(t))
    return ok and rows_equal and not bad and not bad_hf


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reference", type=Path, required=True,
                    help="OpenAI CLIP's clip/simple_tokenizer.py (loaded by file path)")
    ap.add_argument("--real-vocab", type=Path, default=None,
                    help="real bpe_simple_vocab_16e6.txt.gz (default: next to --reference)")
    ap.add_argument("--out", type=Path, default=HERE)
    args = ap.parse_args()

    module = load_reference(args.reference)
    args.out.mkdir(parents=True, exist_ok=True)

    merges = train_bpe(training_corpus(), NUM_MERGES)
    vocab_path = args.out / "small_vocab.txt.gz"
    write_merges(merges, vocab_path)
    print(f"wrote {vocab_path}: {len(merges)} merges, {vocab_path.stat().st_size} bytes")

    ref = module.SimpleTokenizer(str(vocab_path))
    texts = test_strings()
    rows = reference_rows(ref, texts)
    golden = {
        "reference": {"repo": "openai/CLIP", "commit": git_commit(args.reference),
                      "file": "clip/simple_tokenizer.py + clip/clip.py:tokenize (truncate=True)"},
        "vocab": vocab_path.name,
        "vocab_size": len(ref.encoder),
        "sot_token": ref.encoder["<|startoftext|>"],
        "eot_token": ref.encoder["<|endoftext|>"],
        "context_length": CONTEXT_LENGTH,
        "cases": [{"text": t, "ids": ref.encode(t), "row": r} for t, r in zip(texts, rows)],
    }
    # One case per line keeps the file diffable.
    body = ",\n".join(json.dumps(c, ensure_ascii=True) for c in golden.pop("cases"))
    head = json.dumps(golden, indent=1, ensure_ascii=True)[:-2]
    out_json = args.out / "reference_ids.json"
    out_json.write_text(f'{head},\n "cases": [\n{body}\n ]\n}}\n', encoding="utf-8")
    json.loads(out_json.read_text(encoding="utf-8"))  # sanity: valid JSON
    n_long = sum(len(c) + 2 > CONTEXT_LENGTH for c in (ref.encode(t) for t in texts))
    print(f"wrote {out_json}: {len(texts)} strings ({n_long} longer than {CONTEXT_LENGTH} tokens), "
          f"vocab size {len(ref.encoder)}")

    ours = Tokenizer(vocab_path)
    same = all(ours.encode(t) == ref.encode(t) for t in texts)
    print(f"small vocab: ovss Tokenizer ids equal to the reference for all strings: {same}")

    real = args.real_vocab or args.reference.parent / "bpe_simple_vocab_16e6.txt.gz"
    if real.is_file():
        same = check_real_vocab(module, real, texts + training_corpus()) and same
    else:
        print(f"real vocab not found at {real}; skipped that check")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
