"""Text for training the fixture tokenizers, and tricky strings for tokenizer round-trip and parity tests.

Deterministic (a seeded generator over fixed word lists) so the fixture cache key stays stable.
"""

from __future__ import annotations

import random

WORDS = (
    "the of and to in is that it for was on are with as be at by this have from or one had not but what all were "
    "when we there can an your which their said if do will each about how up out them then she many some so these "
    "would other into has more her two like him see time could no make than first been its who now people my made "
    "over did down only way find use may water long little very after words called just where most know model token "
    "select from where group order limit count join table column value query answer question assistant user system "
    "weight layer quantize convert tensor matrix vector gradient learning training evaluation dataset sample"
).split()
ACCENTED = "café naïve résumé Zürich façade señor coöperate élève über déjà-vu Ærøskøbing São Paulo Łódź".split()
CJK = ["你好世界", "東京は晴れです", "机器学习模型", "안녕하세요", "日本語のテキスト", "中文分词测试"]
EMOJI = ["🙂", "🚀", "👍🏽", "🇫🇷", "👩‍💻", "❤️", "🎉🎉"]
CODE = [
    "def f(x):\n    return x ** 2\n",
    "for (int i = 0; i < n; ++i) { sum += a[i]; }",
    "SELECT name, COUNT(*) FROM users WHERE age >= 21 GROUP BY name;",
    '{"key": [1, 2.5, null, true], "nested": {"a": "b"}}',
    "if __name__ == '__main__':\n\tmain()",
    "x = {'a': 1}  # comment\n",
]


def training_text(lines: int = 1200, seed: int = 1234) -> list[str]:
    rng = random.Random(seed)
    out = []
    for index in range(lines):
        kind = index % 6
        if kind == 0:
            words = [rng.choice(WORDS) for _ in range(rng.randint(5, 18))]
            sentence = " ".join(words)
            out.append(sentence.capitalize() + rng.choice([".", "?", "!", "", "..."]))
        elif kind == 1:
            out.append(" ".join(rng.choice(ACCENTED + WORDS) for _ in range(8)))
        elif kind == 2:
            out.append(rng.choice(CJK) + rng.choice(["。", "！", "", " "]) + rng.choice(CJK))
        elif kind == 3:
            out.append(rng.choice(CODE))
        elif kind == 4:
            out.append(f"{rng.randint(0, 99999)} items cost ${rng.randint(1, 999)}.{rng.randint(0, 99):02d} "
                       f"on 2026-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d} {rng.choice(EMOJI)}")
        else:
            out.append(f"I'm sure they've said it's {rng.choice(WORDS)}; we'll see, you'd know. "
                       f"  Spaces\tand\ttabs\n\nnew  lines   here")
    return out


def tricky_strings() -> list[str]:
    """At least 200 strings that break naive tokenizers: whitespace runs, newlines, digits, contractions, accents,
    CJK, emoji, code, and the text of special tokens."""
    base = [
        "", " ", "  ", "   leading spaces", "trailing spaces   ", " a", "a ", "\n", "\n\n\n", "\t", " \t \n ",
        "Hello world", "hello  world", "Hello\nworld", "Hello\r\nworld", "line1\n\nline2\n", "a\u00a0b",
        "I'm", "I'M", "don't", "you're", "they've", "we'll", "she'd", "it's", "'s", "''", "'",
        "0", "7", "42", "123", "1234", "12345", "3.14159", "1,000,000", "-273.15", "2026-11-28", "0x1F", "1e-5",
        "v1.2.3", "10%", "$5.00", "#1", "a1b2c3", "9999999999",
        "café", "naïve", "Zürich", "São Paulo", "Łódź", "Ærøskøbing", "e\u0301", "ﬁ ligature", "ß", "İstanbul",
        "你好", "你好世界", "東京は晴れです", "안녕하세요", "机器学习模型 machine learning", "日本語 and English",
        "🙂", "🚀🚀", "👍🏽", "🇫🇷", "👩‍💻", "❤️", "emoji 🎉 inside", "😀😃😄😁",
        "def f(x):\n    return x ** 2\n", "    indented", "\tindented tab", "if (a && b) { return c; }",
        "SELECT * FROM t WHERE x = 'y';", '{"a": [1, 2, 3]}', "<html><body>hi</body></html>", "a_b_c", "CamelCaseWord",
        "snake_case_word", "x+=1", "a->b", "a::b", "...", "!!!", "???", "—–-", "«quoted»", "“smart quotes”",
        "<|im_start|>", "<|im_end|>", "<|eot_id|>", "<s>", "</s>", "[INST]", "<start_of_turn>", "<|user|>",
        "text <|im_end|> inside", "<|begin_of_text|>hello",
    ]
    out = list(base)
    rng = random.Random(99)
    pool = WORDS + ACCENTED + CJK + EMOJI
    separators = [" ", "  ", "\n", " \n", "\t", "", ", ", ". ", "\n\n", "   "]
    while len(out) < 240:
        parts = [rng.choice(pool) if rng.random() < 0.8 else str(rng.randint(0, 10 ** rng.randint(1, 7)))
                 for _ in range(rng.randint(1, 7))]
        text = ""
        for part in parts:
            text += part + rng.choice(separators)
        if rng.random() < 0.3:
            text = " " + text
        out.append(text)
    return out
