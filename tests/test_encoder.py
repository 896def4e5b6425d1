"""encode_swe: the released encoder's exact ids, the encoding rules, robustness,
decoding, batch and parallel encoding, and the command line.

Expected values come from the released encoder's recorded output
(../shared/reference/tokenizer_golden.jsonl), from the rules applied by hand to
tiny vocabularies written here, or from bench/baseline_encoder.py, the
straightforward per-position implementation of the same rules.
"""
import json
import os
import re
import subprocess
import sys
import time

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

import encode_swe
from bench.baseline_encoder import BaselineEncoder

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED = os.path.join(os.path.dirname(REPO), "shared")
REFERENCE = os.path.join(SHARED, "reference")
RELEASED_VOCAB = os.path.join(REFERENCE, "ja-swe36k.txt")
RELEASED_EMOJI = os.path.join(REFERENCE, "emoji.json")
GOLDEN = os.path.join(REFERENCE, "tokenizer_golden.jsonl")
CORPUS = os.path.join(SHARED, "corpus", "ja-docs-train")
NO_REFERENCE = ("released vocabulary not found: %s (CI puts shared/ beside the repository)"
                % REFERENCE)

# The tail every vocabulary ends with, in the released layout.
SPECIALS = ["<|startoftext|>", "<|inputmask|>", "<|separator|>", "<|nottoken|>",
            "<|bagoftoken|>", "<|segmenter|>", "<|endoftext|>"]
TAIL = (["<BR>", "<SP>", "<TAB>", "<URL>", "<EMAIL>", "<TEL>", "<DATE>", "<PRICE>", "<BLOCK>",
         "<KIGOU>", "<U2000U2BFF>"] + ["<|emoji%d|>" % i for i in range(1, 13)]
        + ["<|byte%d|>" % b for b in range(255)] + SPECIALS)
EMOJI_REPRESENTATIVES = {"<|emoji%d|>" % i: "E%d" % i for i in range(1, 13)}

FAST = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


# ----------------------------------------------------------------------- helpers

class Tiny:
    """A vocabulary written from `lines` plus the standard tail; ids by position."""

    def __init__(self, folder, lines, emoji=None, name="tiny"):
        self.lines = list(lines) + TAIL
        self.vocab = str(folder / (name + ".txt"))
        self.emoji = str(folder / (name + ".json"))
        with open(self.vocab, "wb") as f:
            f.write("\n".join(self.lines).encode("utf-8"))
        write_emoji(self.emoji, emoji if emoji is not None else {"☺": "<|emoji1|>"})
        self.enc = encode_swe.SWEEncoder(self.vocab, self.emoji)

    def id(self, token):
        return next(i for i, line in enumerate(self.lines)
                    if token in (line.split(",") if "," in line[1:] else [line]))

    def ids(self, *tokens):
        return [self.id(t) for t in tokens]

    def byte_ids(self, char):
        return [self.id("<|byte%d|>" % b) for b in char.encode("utf-8", "surrogatepass")]

    def baseline(self):
        return BaselineEncoder(self.vocab, self.emoji)


def write_emoji(path, emoji, representatives=EMOJI_REPRESENTATIVES):
    with open(path, "w", encoding="utf-8") as f:
        json.dump({"emoji": emoji, "emoji_inv": representatives}, f, ensure_ascii=False)


def golden_cases():
    if not os.path.isfile(GOLDEN):
        return [pytest.param(None, marks=pytest.mark.skip(reason=NO_REFERENCE))]
    with open(GOLDEN, encoding="utf-8") as f:
        cases = [json.loads(line) for line in f if line.strip()]
    return [pytest.param(c, id="%02d-%s" % (i, "clean" if c["clean"] else "raw"))
            for i, c in enumerate(cases)]


@pytest.fixture(scope="module")
def released():
    if not os.path.isfile(RELEASED_VOCAB):
        pytest.skip(NO_REFERENCE)
    return encode_swe.SWEEncoder(RELEASED_VOCAB, RELEASED_EMOJI)


@pytest.fixture(scope="module")
def released_baseline():
    if not os.path.isfile(RELEASED_VOCAB):
        pytest.skip(NO_REFERENCE)
    return BaselineEncoder(RELEASED_VOCAB, RELEASED_EMOJI)


@pytest.fixture(scope="module")
def corpus_documents():
    if not os.path.isdir(CORPUS):
        pytest.skip("demo corpus not found: %s (CI puts shared/ beside the repository)" % CORPUS)
    documents = []
    for name in sorted(os.listdir(CORPUS)):
        with open(os.path.join(CORPUS, name), encoding="utf-8", newline="") as f:
            documents.append(f.read(8000))  # the start of every shard
    return documents


# -------------------------------------------------------------- released encoder

@pytest.mark.parametrize("case", golden_cases())
def test_golden_case(released, case):
    assert released.encode(case["text"], clean=case["clean"]) == case["ids"]
    assert released.decode(case["ids"]) == case["decoded"]


def test_the_baseline_gives_the_golden_ids_too(released_baseline):
    """The baseline is the reference for everything golden cases do not cover."""
    for param in golden_cases():
        case = param.values[0]
        assert released_baseline.encode(case["text"], case["clean"]) == case["ids"]


def test_special_ids_count_from_the_end(released):
    size = len(released)
    assert size == released.vocab_size == 36000
    names = ["startoftext", "inputmask", "separator", "nottoken", "bagoftoken", "segmenter",
             "endoftext"]
    for offset, (name, token) in enumerate(zip(names, SPECIALS)):
        token_id = getattr(released, name)
        assert token_id == size - 7 + offset
        assert released.id_to_token(token_id) == token and released.token_to_id(token) == token_id
        assert released.is_special(token_id)
    assert released.encode("<|endoftext|>") == [released.endoftext]


def test_is_special_and_token_lookup(released):
    for token in ("<SP>", "<|byte0|>", "<|byte254|>", "<|emoji12|>", "<KIGOU>"):
        assert released.is_special(released.token_to_id(token)), token
    for word in ("日本", "<", ",", "ー"):
        assert not released.is_special(released.token_to_id(word)), word
    assert released.token_to_id("⽇本") == released.token_to_id("日本")  # a variant spelling
    assert released.id_to_token(released.token_to_id("⽇本")) == "日本"
    assert released.token_to_id("no such token") is None
    with pytest.raises(ValueError, match="36000"):
        released.id_to_token(36000)


def test_released_duplicate_spellings_resolve_to_the_later_line(released):
    with open(RELEASED_VOCAB, encoding="utf-8") as f:
        lines = f.read().split("\n")
    for word in ("ゐ", "ゑ", "ヴ", "〇", "きぃ", "キィ"):
        holding = [i for i, line in enumerate(lines)
                   if word in (line.split(",") if "," in line[1:] else [line])]
        assert len(holding) == 2, word
        assert released.token_to_id(word) == holding[-1]


def test_same_ids_as_the_baseline_on_the_corpus(released, released_baseline, corpus_documents):
    for clean in (False, True):
        for text in corpus_documents:
            assert released.encode(text, clean) == released_baseline.encode(text, clean)


@pytest.mark.parametrize("newline", ["\n", "\r\n"])
def test_long_text_is_encoded_in_pieces_with_the_same_ids(released, released_baseline,
                                                           corpus_documents, newline):
    text = newline.join(corpus_documents) * 2  # > 64K characters, so several pieces
    assert len(text) > 65536 + 8000
    assert released.encode(text) == released_baseline.encode(text)


# Pieces that exercise every rule: spaces and line breaks next to "<", emoji and
# kaomoji, clean=True patterns, fallbacks, reserved noncharacters, surrogates.
FRAGMENTS = [
    "今日", "の", "天気", "です。", "ィ", "ヴァ", "慶應", "⽇本", "ａｂｃ", "ｶﾞ", "abc", "A", "1", "23",
    "456", " ", "\u3000", "\n", "\r", "\r\n", "\t", "—", "−", "ー", "<", ">", "|", "<SP>", "<BR",
    "<|endoftext|>", "<|emoji1|>", "<|byte3|>", "<BLOCK>", "SP>", "😀", "❤️", "❤", "🇯🇵", "©",
    "(^_^)", "(", "^", "_", ")", "(>_<)", "o(>_<)o", "...", "…", "─", "━━", "▀", "¡", "ǀ", "ʹ",
    "\u0300", "\u2000", "‖", "\u2bff", "\u2c00", "한국", "é", "\x00", "\x01", "\ud800", "\udfff",
    "\ufdd0", "\ufdd1", "\ufdd3", "https://", "http://a.jp/x?q=1", "ftp://b", "x@y.z", "@",
    "03-1234-5678", "(06)", "-", "/", "2022年", "9月", "16日", "(金)", "令和", "4年", "12時",
    "30分", "1,980", "円", "ドル", "ユーロ", "千", "万", "億", "(税込)", "+tax", "\U0001f600",
]
texts_of_fragments = st.lists(st.sampled_from(FRAGMENTS), max_size=30).map("".join)


@FAST
@given(text=texts_of_fragments, clean=st.booleans())
def test_same_ids_as_the_baseline_on_tricky_text(released, released_baseline, text, clean):
    assert released.encode(text, clean) == released_baseline.encode(text, clean)


@FAST
@given(texts=st.lists(texts_of_fragments, max_size=8), clean=st.booleans())
def test_encode_batch_equals_encode(released, texts, clean):
    assert released.encode_batch(texts, clean) == [released.encode(t, clean) for t in texts]


def test_encode_batch_on_documents(released, corpus_documents):
    documents = [d for text in corpus_documents for d in text.split("\n")] + ["", "\r", "😀"]
    for clean in (False, True):
        assert released.encode_batch(documents, clean) == [released.encode(d, clean)
                                                           for d in documents]


def test_clean_text_matches_the_baseline(released, released_baseline, corpus_documents):
    extra = ["┌─┐<BLOCK>││", "<BLOCK><BLOCK>", "2022/9/16 12:30 03-1234-5678"]
    for text in corpus_documents + extra:
        assert released.clean_text(text) == released_baseline.clean_text(text)


# ---------------------------------------------------------------- the rules, by hand

def test_lowest_id_wins_not_the_longest(tmp_path):
    tiny = Tiny(tmp_path, ["a", "b", "ab", "c", "abc", "bc"])
    assert tiny.enc.encode("ab") == tiny.ids("a", "b")       # a (0) beats ab (2)
    assert tiny.enc.encode("abc") == tiny.ids("a", "b", "c")  # abc (4) loses to a (0)
    lower = Tiny(tmp_path, ["bc", "abc", "ab", "a", "b", "c"], name="lower")
    assert lower.enc.encode("abc") == lower.ids("abc")        # abc (1) beats ab (2) and a (3)
    assert lower.enc.encode("abcbc") == lower.ids("abc", "bc")


def test_greedy_from_the_left(tmp_path):
    tiny = Tiny(tmp_path, ["ab", "bc", "a", "b", "c"])
    # At 0, ab (0) wins; the walk never considers bc starting inside it.
    assert tiny.enc.encode("abc") == tiny.ids("ab", "c")
    assert tiny.enc.encode("babc") == tiny.ids("b", "ab", "c")


def test_equal_ids_prefer_the_longer_spelling(tmp_path):
    tiny = Tiny(tmp_path, ["x,xy", "y"])  # "x" and "xy" are spellings of id 0
    assert tiny.enc.encode("xy") == [0]
    assert tiny.enc.decode([0]) == "x"    # the first spelling is the canonical one


def test_variant_spellings_share_the_id_and_decode_canonically(tmp_path):
    tiny = Tiny(tmp_path, ["日本,⽇本,日夲", "日", "本", ",", "a,b"])
    assert tiny.enc.encode("⽇本,日夲") == [0, 3, 0]
    assert tiny.enc.decode(tiny.enc.encode("⽇本,日夲")) == "日本,日本"
    assert tiny.enc.encode("ab") == [4, 4]
    assert tiny.enc.token_to_id(",") == 3


def test_angle_entries_longest_wins_over_lower_ids(tmp_path):
    tiny = Tiny(tmp_path, ["<", "a", "b", "c", ">", "<a", "<ab>", "<abc>"])
    assert tiny.enc.encode("<ab>") == tiny.ids("<ab>")
    assert tiny.enc.encode("<abc>") == tiny.ids("<abc>")
    assert tiny.enc.encode("<SP>") == tiny.ids("<SP>")         # id far above "<" (0)
    assert tiny.enc.encode("<abd") == tiny.ids("<", "a", "b") + tiny.byte_ids("d")
    # Two-character entries starting with "<" compete by id like any other.
    assert tiny.enc.encode("<a>") == tiny.ids("<", "a", ">")


def test_two_character_angle_entry_with_the_lowest_id(tmp_path):
    tiny = Tiny(tmp_path, ["<a", "<", "a", "<ab>"])
    assert tiny.enc.encode("<a") == tiny.ids("<a")
    assert tiny.enc.encode("<ab>") == tiny.ids("<ab>")


def test_whitespace_line_breaks_and_dashes(tmp_path):
    tiny = Tiny(tmp_path, ["a", "ー"])
    enc = tiny.enc
    assert enc.encode("a a\u3000a") == tiny.ids("a", "<SP>", "a", "<SP>", "a")
    assert enc.encode("a\r\na\na\ra") == tiny.ids("a", "<BR>", "a", "<BR>", "a", "<BR>", "a")
    assert enc.encode("\n\r") == tiny.ids("<BR>", "<BR>")
    assert enc.encode("\t") == tiny.ids("<TAB>")
    assert enc.encode("—−ー") == tiny.ids("ー", "ー", "ー")
    assert enc.decode(enc.encode("a\r\nb\ta")) == "a\nb\ta"  # "b": byte tokens
    assert enc.decode(enc.encode("a\na"), breakline="<br>") == "a<br>a"


@pytest.mark.parametrize("char, expected", [
    ("\u00a0", "bytes"), ("\u00a1", "<KIGOU>"), ("\u00bf", "<KIGOU>"), ("\u00c0", "bytes"),
    ("\u01bf", "bytes"), ("\u01c0", "<KIGOU>"), ("\u01c3", "<KIGOU>"), ("\u01c4", "bytes"),
    ("\u02b8", "bytes"), ("\u02b9", "<KIGOU>"), ("\u02ff", "<KIGOU>"), ("\u0300", "<KIGOU>"),
    ("\u0362", "<KIGOU>"), ("\u0363", "bytes"), ("\u1fff", "bytes"), ("\u2000", "<U2000U2BFF>"),
    ("\u2bff", "<U2000U2BFF>"), ("\u2c00", "bytes"), ("é", "bytes"), ("\x00", "bytes"),
    ("\U0001d538", "bytes"), ("\ud800", "bytes"), ("\udfff", "bytes"),
])
def test_characters_without_an_entry(tmp_path, char, expected):
    """<KIGOU>: UTF-8 C2A1-C2BF, C780-C783, CAB9-CBBF, CC80-CDA2; <U2000U2BFF>: E28080-E2B07F;
    anything else: one <|byteN|> per UTF-8 byte (a lone surrogate: its surrogatepass bytes)."""
    tiny = Tiny(tmp_path, ["a"])
    ids = tiny.enc.encode("a" + char + "a")
    middle = tiny.byte_ids(char) if expected == "bytes" else [tiny.id(expected)]
    assert ids == tiny.ids("a") + middle + tiny.ids("a")


def test_an_entry_beats_the_fallback_ranges(tmp_path):
    tiny = Tiny(tmp_path, ["¡", "\u2000"])
    assert tiny.enc.encode("¡\u2000") == [0, 1]


def test_emoji_keys_replace_one_at_a_time_in_key_order(tmp_path):
    first = Tiny(tmp_path, ["a", "b"], {"ab": "<|emoji1|>", "b": "<|emoji2|>"}, name="first")
    assert first.enc.encode("abb") == first.ids("<|emoji1|>", "<|emoji2|>")
    second = Tiny(tmp_path, ["a", "b"], {"b": "<|emoji2|>", "ab": "<|emoji1|>"}, name="second")
    assert second.enc.encode("abb") == second.ids("a", "<|emoji2|>", "<|emoji2|>")
    assert second.enc.decode(second.enc.encode("abb")) == "aE2E2"


def test_emoji_replacement_can_create_a_later_key(tmp_path):
    # "a" -> "<|emoji1|>" makes "1|>b" appear, the next key.
    tiny = Tiny(tmp_path, ["<", "|", "e", "m", "o", "j", "i", "b"],
                {"a": "<|emoji1|>", "1|>b": "<|emoji2|>"})
    assert tiny.enc.encode("ab") == tiny.ids("<", "|", "e", "m", "o", "j", "i", "<|emoji2|>")
    assert tiny.enc.encode("ab") == tiny.baseline().encode("ab")


def test_emoji_keys_with_spaces_never_match(tmp_path):
    tiny = Tiny(tmp_path, ["(", ")", "x"], {"( x)": "<|emoji12|>", "(x)": "<|emoji11|>"})
    assert tiny.enc.encode("( x)(x)") == tiny.ids("(", "<SP>", "x", ")", "<|emoji11|>")


def test_block_runs_collapse_with_literal_block_tokens(tmp_path):
    tiny = Tiny(tmp_path, ["a"])
    assert tiny.enc.clean_text("a─━│a▀▟a") == "a<BLOCK>a<BLOCK>a"
    assert tiny.enc.clean_text("<BLOCK>─<BLOCK>") == "<BLOCK>"
    assert tiny.enc.encode("─a", clean=True) == tiny.ids("<BLOCK>", "a")
    assert tiny.enc.encode("─", clean=False) == [tiny.id("<U2000U2BFF>")]


# Vocabularies that defeat the shortcuts (entries with "<" inside, entries that
# extend <SP>/<BR>, emoji keys overlapping class tokens and <BR>) must give the
# baseline's ids too.
AWKWARD_LINES = ["a", "b", "c", "ab", "bca", "a<", "<<", "<SP><SP>", "<BR>x", "P>", "<S", "|",
                 "x", "xy", "xyz", "<", ">", "1", "月", "日", "円"]
AWKWARD_EMOJI = {"ab": "<|emoji1|>", "1|>": "<|emoji2|>", "R>x": "<|emoji3|>", "b": "<|emoji4|>"}
AWKWARD_FRAGMENTS = ["a", "b", "c", "x", "y", "z", "<", ">", "|", " ", "\n", "\r", "S", "P", "B",
                     "R", "<SP>", "<BR>", "1", "9月", "16日", "1,980円", "─", "\ufdd0", "\ufdd3"]


@FAST
@given(text=st.lists(st.sampled_from(AWKWARD_FRAGMENTS), max_size=25).map("".join),
       clean=st.booleans())
def test_awkward_vocabulary_matches_the_baseline(awkward, text, clean):
    enc, baseline = awkward
    assert enc.encode(text, clean) == baseline.encode(text, clean)
    assert enc.encode_batch([text, text], clean) == [baseline.encode(text, clean)] * 2


@pytest.fixture(scope="module")
def awkward(tmp_path_factory):
    tiny = Tiny(tmp_path_factory.mktemp("awkward"), AWKWARD_LINES, AWKWARD_EMOJI)
    return tiny.enc, tiny.baseline()


def walk(lengths):
    """The greedy walk, one token at a time."""
    visited, p = np.zeros(len(lengths), dtype=bool), 0
    while p < len(lengths):
        visited[p] = True
        p += int(lengths[p])
    return visited


@settings(max_examples=300, deadline=None)
@given(lengths=st.lists(st.sampled_from([1, 1, 2, 2, 3, 3, 4, 9]), min_size=1, max_size=300),
       long_tokens=st.booleans())
def test_vectorised_walk_is_the_greedy_walk(lengths, long_tokens):
    lengths = np.array([min(n, 3) if not long_tokens else n for n in lengths], dtype=np.int32)
    assert (encode_swe._greedy_path(lengths) == walk(lengths)).all()


def test_vectorised_walk_on_long_overlapping_stretches():
    for lengths in (np.full(50_001, 2), np.tile([3, 2, 3, 1, 2], 20_000), np.full(9_999, 3)):
        lengths = lengths.astype(np.int32)
        assert (encode_swe._greedy_path(lengths) == walk(lengths)).all()


# ------------------------------------------------------------------ robustness

@pytest.mark.parametrize("text", ["", "\x00", "\x00\x01\x1f\x7f", "\ud800", "a\udfffb",
                                  "\ud83d\ude00", "\ufdd0\ufdd1\ufdd2\ufdd3", "\uffff"])
def test_any_string_encodes(released, text):
    for clean in (False, True):
        ids = released.encode(text, clean)
        assert all(0 <= i < len(released) for i in ids)
    assert released.encode("") == [] and released.decode([]) == ""


def test_lone_surrogate_becomes_its_bytes(released):
    bytes_of = [released.token_to_id("<|byte%d|>" % b) for b in (0xED, 0xA0, 0x80)]
    assert released.encode("\ud800") == bytes_of
    assert released.decode(bytes_of) == "\ufffd" * 3


def test_a_megabyte_without_a_newline(released, corpus_documents):
    text = "".join(corpus_documents).replace("\n", "").replace("\r", "")
    text = (text * (1 + 1_000_000 // len(text.encode("utf-8"))))
    assert len(text.encode("utf-8")) >= 1_000_000 and "\n" not in text
    ids = released.encode(text)
    assert released.encode_batch([text]) == [ids]
    assert released.decode(ids).count(" ") == text.count(" ") + text.count("\u3000")


@FAST
@given(ids=st.lists(st.integers(0, 35999), max_size=200))
def test_decoding_any_in_range_ids_never_raises(released, ids):
    assert isinstance(released.decode(ids), str)


@FAST
@given(data=st.binary(max_size=40))
def test_byte_tokens_regroup_into_utf8(released, data):
    ids = [released.token_to_id("<|byte%d|>" % b) for b in data if b != 0xFF]
    kept = bytes(b for b in data if b != 0xFF)
    assert released.decode(ids) == kept.decode("utf-8", errors="replace")


@pytest.mark.parametrize("bad", [36000, -1, 10 ** 30])
def test_out_of_range_id_is_named(released, bad):
    with pytest.raises(ValueError, match=re.escape(str(bad))):
        released.decode([5, bad, 7])


def test_decode_takes_lists_tuples_arrays_and_rejects_non_integers(released):
    ids = released.encode("今日の天気\n")
    text = "今日の天気\n"
    assert released.decode(tuple(ids)) == released.decode(np.array(ids)) == text
    assert released.decode(iter(ids)) == text
    assert released.decode(np.array(ids, dtype=np.uint16)) == text
    with pytest.raises(TypeError):
        released.decode(["3"])
    with pytest.raises(TypeError):
        released.encode(b"bytes")


# The documented normalisations, applied independently of the encoder.
def normalised(text, emoji, representatives):
    marks = {"\r\n": "\x02", "\r": "\x02", "\n": "\x02", " ": "\x03", "\u3000": "\x03",
             "\t": "\x04"}
    for old, new in marks.items():
        text = text.replace(old, new)
    placeholders = {}
    for key, token in emoji.items():  # one key at a time, in key order
        mark = placeholders.setdefault(token, chr(0xF0000 + len(placeholders)))
        text = text.replace(key, mark)
    for token, mark in placeholders.items():
        text = text.replace(mark, representatives.get(token, token))
    return text.replace("\x02", "\n").replace("\x03", " ").replace("\x04", "\t")


@pytest.fixture(scope="module")
def round_trip_alphabet(released):
    common_kanji = "日本語学校会社時間東京大阪一二三四五六七八九十年月人生先私今何前後上下中出入名山川田"
    letters = ("".join(map(chr, range(0x3041, 0x3097))) + "".join(map(chr, range(0x30A1, 0x30FB)))
               + common_kanji + "".join(map(chr, range(0x21, 0x7F))))
    alphabet = set(letters) - {"\x00"}
    with open(RELEASED_VOCAB, encoding="utf-8") as f:
        lines = f.read().split("\n")
    variants = [w for line in lines if "," in line[1:] for w in line.split(",")[1:]]
    # Leave out a character of every variant spelling the alphabet could write.
    while True:
        writable = [w for w in variants if set(w) <= alphabet]
        if not writable:
            break
        alphabet.discard(writable[0][-1])
    angle_entries = [w for line in lines for w in line.split(",") if len(w) > 2 and w[0] == "<"]
    return "".join(sorted(alphabet)) + " \u3000\n\r\t", angle_entries


@FAST
@given(data=st.data())
def test_decode_of_encode_is_the_normalised_text(released, round_trip_alphabet, data):
    alphabet, angle_entries = round_trip_alphabet
    text = data.draw(st.text(alphabet=alphabet, max_size=60))
    assume(not any(entry in text for entry in angle_entries))
    with open(RELEASED_EMOJI, encoding="utf-8") as f:
        table = json.load(f)
    expected = normalised(text, table["emoji"], table["emoji_inv"])
    assert released.decode(released.encode(text)) == expected


# ------------------------------------------------------------ malformed files

def write_lines(path, lines):
    with open(path, "wb") as f:
        f.write("\n".join(lines).encode("utf-8"))
    return str(path)


@pytest.fixture()
def emoji_file(tmp_path):
    path = str(tmp_path / "emoji.json")
    write_emoji(path, {"☺": "<|emoji1|>"})
    return path


def test_duplicate_spelling_names_both_lines(tmp_path, emoji_file):
    vocab = write_lines(tmp_path / "v.txt", ["a", "b", "c,a"] + TAIL)
    with pytest.raises(encode_swe.VocabularyError, match=r"v.txt line 3.*'a'.*line 1"):
        encode_swe.SWEEncoder(vocab, emoji_file)


def test_missing_special_token_names_the_line(tmp_path, emoji_file):
    vocab = write_lines(tmp_path / "v.txt", ["a"] + TAIL[:-1])
    expected = r"line %d.*<\|endoftext\|>" % (len(TAIL) + 1)  # where the full file has it
    with pytest.raises(encode_swe.VocabularyError, match=expected):
        encode_swe.SWEEncoder(vocab, emoji_file)


def test_missing_byte_token_names_the_line(tmp_path, emoji_file):
    vocab = write_lines(tmp_path / "v.txt", ["a"] + [t for t in TAIL if t != "<|byte7|>"])
    with pytest.raises(encode_swe.VocabularyError, match=r"line \d+.*<\|byte7\|>"):
        encode_swe.SWEEncoder(vocab, emoji_file)


def test_trailing_newline_and_empty_spellings(tmp_path, emoji_file):
    vocab = str(tmp_path / "v.txt")
    with open(vocab, "wb") as f:
        f.write(("\n".join(["a"] + TAIL) + "\n").encode("utf-8"))
    with pytest.raises(encode_swe.VocabularyError, match="line %d.*newline" % (len(TAIL) + 2)):
        encode_swe.SWEEncoder(vocab, emoji_file)
    vocab = write_lines(tmp_path / "w.txt", ["a,,b"] + TAIL)
    with pytest.raises(encode_swe.VocabularyError, match="w.txt line 1"):
        encode_swe.SWEEncoder(vocab, emoji_file)


def test_missing_files_are_named(tmp_path, emoji_file):
    with pytest.raises(FileNotFoundError, match="nowhere.txt"):
        encode_swe.SWEEncoder(str(tmp_path / "nowhere.txt"), emoji_file)
    vocab = write_lines(tmp_path / "v.txt", ["a"] + TAIL)
    with pytest.raises(FileNotFoundError, match="nothing.json"):
        encode_swe.SWEEncoder(vocab, str(tmp_path / "nothing.json"))


def test_malformed_emoji_table_is_named(tmp_path):
    vocab = write_lines(tmp_path / "v.txt", ["a"] + TAIL)
    broken = tmp_path / "broken.json"
    broken.write_text('{"emoji": {\n"x": }', encoding="utf-8")
    with pytest.raises(encode_swe.VocabularyError, match="broken.json line 2"):
        encode_swe.SWEEncoder(vocab, str(broken))
    unknown = str(tmp_path / "unknown.json")
    write_emoji(unknown, {"x": "<|emoji99|>"})
    with pytest.raises(encode_swe.VocabularyError, match="emoji99"):
        encode_swe.SWEEncoder(vocab, unknown)


def test_load_encoder_is_shared_and_reloads_a_changed_file(tmp_path):
    tiny = Tiny(tmp_path, ["a", "b"])
    first = encode_swe.load_encoder(tiny.vocab, tiny.emoji)
    assert encode_swe.load_encoder(tiny.vocab, tiny.emoji) is first
    write_lines(tiny.vocab, ["b", "a", "c"] + TAIL)
    os.utime(tiny.vocab, ns=(time.time_ns() + 10 ** 9,) * 2)
    again = encode_swe.load_encoder(tiny.vocab, tiny.emoji)
    assert again is not first and again.encode("a") == [1]


# ------------------------------------------------------- many files, command line

def test_encode_files_in_order(tmp_path):
    tiny = Tiny(tmp_path, ["a", "b", "ab"])
    paths = []
    for i, text in enumerate(["ab", "b a\r\n", "", "aab"]):
        paths.append(str(tmp_path / ("f%d.txt" % i)))
        with open(paths[-1], "w", encoding="utf-8", newline="") as f:
            f.write(text)
    results = list(encode_swe.encode_files(paths, vocab_file=tiny.vocab, emoji_file=tiny.emoji,
                                           progress=False))
    assert [p for p, _ in results] == paths
    assert [ids for _, ids in results] == [tiny.enc.encode(encode_swe.read_text(p)) for p in paths]
    assert results[1][1] == tiny.ids("b", "<SP>", "a", "<BR>")
    with open(paths[0], "wb") as f:
        f.write(b"\xff\xfe")
    with pytest.raises(ValueError, match="f0.txt"):
        list(encode_swe.encode_files(paths[:1], vocab_file=tiny.vocab, emoji_file=tiny.emoji,
                                     progress=False))


def run_cli(*args, stdin=""):
    return subprocess.run([sys.executable, os.path.join(REPO, "encode_swe.py"), *args],
                          input=stdin, capture_output=True, text=True, cwd=REPO, timeout=120)


@pytest.fixture()
def cli_vocab(tmp_path):
    tiny = Tiny(tmp_path, ["今日", "の", "天気", "a", "b"])
    return tiny, ["--vocabulary", tiny.vocab, "--emoji", tiny.emoji]


def test_cli_help_is_fast():
    start = time.time()
    done = run_cli("--help")
    assert done.returncode == 0 and "encode" in done.stdout and '"ids"' in done.stdout
    assert time.time() - start < 10


def test_cli_encode_decode_count(cli_vocab, tmp_path):
    tiny, files = cli_vocab
    encoded = run_cli("encode", *files, stdin="今日の天気\n")
    assert encoded.returncode == 0, encoded.stderr
    record = json.loads(encoded.stdout)
    assert record == {"file": "-", "ids": tiny.ids("今日", "の", "天気", "<BR>")}
    decoded = run_cli("decode", *files, stdin=encoded.stdout)
    assert decoded.returncode == 0 and decoded.stdout == "今日の天気\n\n"
    ids = "%d %d\n" % tuple(tiny.ids("a", "<BR>"))
    spaced = run_cli("decode", *files, "--breakline", "|", stdin=ids)
    assert spaced.stdout == "a|\n"
    counted = run_cli("count", *files, stdin="今日の天気")
    assert counted.stdout == "3\t-\n"


def test_cli_files_in_parallel_and_output_file(cli_vocab, tmp_path):
    _, files = cli_vocab
    inputs = []
    for i, text in enumerate(["今日の天気", "ab\nba", "天気の今日 a"]):
        inputs.append(str(tmp_path / ("in%d.txt" % i)))
        with open(inputs[-1], "w", encoding="utf-8") as f:
            f.write(text)
    one = run_cli("encode", *files, "--no_progress", *inputs)
    two = run_cli("encode", *files, "--num_process", "2", "--no_progress", *inputs)
    assert one.returncode == two.returncode == 0, two.stderr
    assert one.stdout == two.stdout
    assert [json.loads(line)["file"] for line in one.stdout.splitlines()] == inputs
    counts = run_cli("count", *files, "--no_progress", *inputs)
    assert counts.stdout.splitlines()[-1] == "%d\ttotal" % sum(
        len(json.loads(line)["ids"]) for line in one.stdout.splitlines())
    out = str(tmp_path / "ids.jsonl")
    with open(out, "w") as f:
        f.write("precious")
    refused = run_cli("encode", *files, "--no_progress", "--output", out, inputs[0])
    assert refused.returncode == 2 and "--force" in refused.stderr
    assert open(out).read() == "precious"
    forced = run_cli("encode", *files, "--no_progress", "--output", out, "--force", inputs[0])
    assert forced.returncode == 0 and json.loads(open(out).read())["file"] == inputs[0]


def test_cli_user_mistakes_are_one_line(cli_vocab, tmp_path):
    tiny, files = cli_vocab
    for args in (["encode", "--vocabulary", str(tmp_path / "none.txt"), "--emoji", tiny.emoji],
                 ["encode", *files, str(tmp_path / "missing.txt")],
                 ["encode", *files, "--num_process", "0"],
                 ["decode", *files],
                 ["encode", "--bogus"]):
        done = run_cli(*args, stdin="x y\n" if args[0] == "decode" else "")
        assert done.returncode == 2, (args, done.stderr)
        assert len(done.stderr.strip().splitlines()) == 1 and "Traceback" not in done.stderr
    broken = write_lines(tmp_path / "broken.txt", ["a", "a"] + TAIL)
    done = run_cli("count", "--vocabulary", broken, "--emoji", tiny.emoji, stdin="a")
    assert done.returncode == 2 and "line 2" in done.stderr
