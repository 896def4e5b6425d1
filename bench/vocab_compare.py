#!/usr/bin/env python3
"""This project's vocabulary (ja-swe36k.txt, emoji.json) against the released GPTSAN one.

Held-out text: ../shared/corpus/ja-docs-train/debian-reference-ja.txt, the shard
tools/build_vocab.py is told to leave out (--exclude debian-reference-ja). It is
the same genre as the build corpus (Debian documentation), so the distinct texts
of ../shared/reference/tokenizer_golden.jsonl (about 1 KB of mixed, mostly
non-technical Japanese) are measured too, as an out-of-domain check.
Both vocabularies encode it with clean=False through encode_swe.SWEEncoder
(or, while that module is missing, the small reference encoder below, which
follows the same rules). Measured:

  * characters per token (higher is better);
  * share of characters that fell back to <|byteN|> tokens (lower is better),
    counted by decoding each run of byte tokens back to characters;
  * variant spellings: spellings beyond the first on every line, and how many of
    them hold a variation selector (葛 + U+E0100: registered glyph variants);
  * dead lines: lines none of whose spellings can ever be chosen, because a
    prefix of each has a lower id (the encoder picks the lowest id).

`python bench/vocab_compare.py` prints the table and writes bench/vocab_compare.md;
`--quick` measures the first 100,000 characters and writes nothing.
"""
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402  (puts the repository on sys.path)
from model.atomic import write_text_atomic  # noqa: E402

REPO = common.REPO

SHARED = os.path.join(os.path.dirname(REPO), "shared")
HELDOUT = os.path.join(SHARED, "corpus", "ja-docs-train", "debian-reference-ja.txt")
RELEASED = (os.path.join(SHARED, "reference", "ja-swe36k.txt"),
            os.path.join(SHARED, "reference", "emoji.json"))
OURS = (os.path.join(REPO, "ja-swe36k.txt"), os.path.join(REPO, "emoji.json"))
GOLDEN = os.path.join(SHARED, "reference", "tokenizer_golden.jsonl")
REPORT = os.path.join(REPO, "bench", "vocab_compare.md")
REBUILD = ("python tools/build_vocab.py --corpus ../shared/corpus/ja-docs-train "
           "--exclude debian-reference-ja --size 36000 --output ja-swe36k.txt "
           "--emoji_output emoji.json --force")
QUICK_CHARACTERS = 100000


def read_lines(path):
    with open(path, encoding="utf-8") as f:
        return [[line] if line == "," else line.split(",") for line in f.read().split("\n")]


class ReferenceEncoder:
    """The released encoding rules for clean=False, written plainly (used when
    encode_swe is missing): literal replacements, emoji keys in file order, then
    at each position a <...> entry longer than two characters wins (longest),
    else the lowest id among the 1-3 character prefixes, else <KIGOU>,
    <U2000U2BFF> or byte tokens."""

    REPLACEMENTS = ((" ", "<SP>"), ("\u3000", "<SP>"), ("\r\n", "<BR>"), ("\n", "<BR>"),
                    ("\r", "<BR>"), ("\t", "<TAB>"), ("\u2014", "ー"), ("\u2212", "ー"))

    def __init__(self, vocab_file, emoji_file):
        self.lines = read_lines(vocab_file)
        with open(emoji_file, encoding="utf-8") as f:
            self.emoji = json.load(f)["emoji"]
        self.ids = {s: i for i, spellings in enumerate(self.lines) for s in spellings}
        self.tags = sorted((s for s in self.ids if s.startswith("<") and len(s) > 2),
                           key=len, reverse=True)

    def encode(self, text, clean=False):
        assert not clean, "the reference encoder only implements clean=False"
        for old, new in self.REPLACEMENTS:
            text = text.replace(old, new)
        for key, token in self.emoji.items():
            text = text.replace(key, token)
        ids, pos = [], 0
        while pos < len(text):
            tag = next((t for t in self.tags if text.startswith(t, pos)), None) \
                if text[pos] == "<" else None
            if tag:
                ids.append(self.ids[tag])
                pos += len(tag)
                continue
            found = [(self.ids[text[pos:pos + n]], n) for n in (3, 2, 1)
                     if pos + n <= len(text) and text[pos:pos + n] in self.ids]
            if found:
                token, n = min(found)
                ids.append(token)
                pos += n
            else:
                ids.extend(self.ids[t] for t in self.fallback(text[pos]))
                pos += 1
        return ids

    @staticmethod
    def fallback(char):
        """<KIGOU> / <U2000U2BFF> for the released encoder's UTF-8 ranges, else byte tokens."""
        data = char.encode("utf-8", "surrogatepass")
        code = int.from_bytes(data, "big")
        if len(data) == 2 and any(lo <= code <= hi for lo, hi in (
                (0xC2A1, 0xC2BF), (0xC780, 0xC783), (0xCAB9, 0xCBBF), (0xCC80, 0xCDA2))):
            return ["<KIGOU>"]
        if len(data) == 3 and 0xE28080 <= code <= 0xE2B07F:
            return ["<U2000U2BFF>"]
        return ["<|byte%d|>" % b for b in data]


def load_encoder(vocab_file, emoji_file):
    """encode_swe.SWEEncoder when it is importable, else ReferenceEncoder; and its name."""
    try:
        from encode_swe import SWEEncoder
    except ImportError:
        return ReferenceEncoder(vocab_file, emoji_file), "bench.vocab_compare.ReferenceEncoder"
    return SWEEncoder(vocab_file, emoji_file), "encode_swe.SWEEncoder"


def byte_fallback_characters(ids, lines):
    """Characters encoded as byte tokens: each run of byte ids decoded back to text."""
    byte_value = {i: int(s[0][6:-2]) for i, s in enumerate(lines) if s[0].startswith("<|byte")}
    count, run = 0, bytearray()
    for token in list(ids) + [None]:
        if token in byte_value:
            run.append(byte_value[token])
        elif run:
            count += len(run.decode("utf-8", "replace"))
            run = bytearray()
    return count


def variant_spellings(lines):
    return sum(len(spellings) - 1 for spellings in lines)


def sequence_spellings(lines):
    from tools._vocab_sources import SELECTOR_RANGES, in_ranges
    return sum(1 for spellings in lines for s in spellings[1:]
               if any(in_ranges(c, SELECTOR_RANGES) for c in s))


def dead_lines(lines):
    """Lines whose every spelling has a proper prefix with a lower id."""
    ids = {s: i for i, spellings in enumerate(lines) for s in spellings}

    def reachable(spelling, line):
        if spelling.startswith("<") and len(spelling) > 2:
            return True
        return len(spelling) <= 3 and all(ids.get(spelling[:k], len(lines)) > line
                                          for k in range(1, len(spelling)))

    return sum(1 for i, spellings in enumerate(lines)
               if not any(reachable(s, i) for s in spellings))


def measure(vocab_file, emoji_file, text):
    encoder, name = load_encoder(vocab_file, emoji_file)
    lines = read_lines(vocab_file)
    start = time.perf_counter()
    ids = encoder.encode(text, clean=False)
    seconds = time.perf_counter() - start
    return {"tokens": len(ids), "chars_per_token": len(text) / max(1, len(ids)),
            "byte_share": byte_fallback_characters(ids, lines) / max(1, len(text)),
            "variants": variant_spellings(lines), "sequences": sequence_spellings(lines),
            "dead": dead_lines(lines),
            "lines": len(lines), "encoder": name, "seconds": seconds}


def row(what, ours, baseline, unit):
    ratio = ours / baseline if baseline else None
    return dict(what=what, ours=ours, baseline=baseline, ratio=ratio, unit=unit)


def run(quick=False):
    """Bench rows (see bench/ conventions); [] with a message when files are missing."""
    result = compare(quick)
    return result[0] if result else []


def compare(quick):
    """(rows, held-out characters, encoder name), or None when files are missing."""
    missing = [p for p in (HELDOUT,) + RELEASED + OURS if not os.path.isfile(p)]
    if missing:
        sys.stderr.write("vocab_compare: skipped, missing %s\n" % ", ".join(missing))
        return None
    with open(HELDOUT, encoding="utf-8") as f:
        text = f.read()
    if quick:
        text = text[:QUICK_CHARACTERS]
    ours, released = measure(*OURS, text), measure(*RELEASED, text)
    rows = [
        row("held-out characters per token", ours["chars_per_token"],
            released["chars_per_token"], "chars/token"),
        row("held-out characters encoded as bytes", 100 * ours["byte_share"],
            100 * released["byte_share"], "%"),
        row("variant spellings", ours["variants"], released["variants"], "spellings"),
        row("... of them with a variation selector", ours["sequences"], released["sequences"],
            "spellings"),
        row("dead lines (shadowed by a lower-id prefix)", ours["dead"], released["dead"], "lines"),
        row("held-out tokens", ours["tokens"], released["tokens"], "tokens"),
    ]
    if os.path.isfile(GOLDEN):
        golden = golden_text()
        ours_golden, released_golden = measure(*OURS, golden), measure(*RELEASED, golden)
        rows += [
            row("golden texts characters per token", ours_golden["chars_per_token"],
                released_golden["chars_per_token"], "chars/token"),
            row("golden texts characters encoded as bytes", 100 * ours_golden["byte_share"],
                100 * released_golden["byte_share"], "%"),
        ]
    return rows, len(text), ours["encoder"]


def golden_text():
    """The distinct texts of tokenizer_golden.jsonl, one per line."""
    with open(GOLDEN, encoding="utf-8") as f:
        texts = [json.loads(line)["text"] for line in f if line.strip()]
    return "\n".join(dict.fromkeys(texts))


def format_value(value):
    if value is None:
        return "-"
    if isinstance(value, int):
        return "{:,}".format(value)
    return "%.4f" % value


def table(rows):
    out = ["| measure | this project | released GPTSAN | ratio | unit |",
           "|---|---:|---:|---:|---|"]
    for r in rows:
        out.append("| %s | %s | %s | %s | %s |" % (
            r["what"], format_value(r["ours"]), format_value(r["baseline"]),
            "-" if r["ratio"] is None else "%.3f" % r["ratio"], r["unit"]))
    return "\n".join(out)


def main():
    quick = common.parser(__doc__).parse_args().quick
    result = compare(quick)
    if not result:
        return 1
    rows, characters, encoder = result
    text = table(rows)
    print(text)
    if not quick:
        write_text_atomic(REPORT, (
            "# Vocabulary comparison\n\nThis project's `ja-swe36k.txt` (built by `%s`) "
            "against the released GPTSAN vocabulary. Held-out text: "
            "`debian-reference-ja.txt` (%s characters of Debian documentation, not used "
            "for building); golden texts: the 43 distinct texts of "
            "`tokenizer_golden.jsonl` (mixed, mostly non-technical). Encoded with "
            "clean=False by `%s`. Produced by `python bench/vocab_compare.py`.\n\n%s\n"
            % (REBUILD, format_value(characters), encoder, text)))
        print("wrote %s" % os.path.relpath(REPORT, REPO))
    return 0


if __name__ == "__main__":
    sys.exit(main())
