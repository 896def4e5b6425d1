"""tools/build_vocab.py: a tiny corpus, a tiny fake unicode-data folder, KANJIDIC2 and a
hand-made font that lists variation sequences.

Expected values come from the released vocabulary's layout (the tail), from
variant-kanji facts written out by hand (the folding examples) and from the
encoder's rule (lowest id among the 1-3 character prefixes), not from recorded
output. The committed ja-swe36k.txt / emoji.json are checked too.
"""
import json
import os
import re
import struct
import subprocess
import sys
import time
import unicodedata

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED = os.path.join(os.path.dirname(REPO), "shared")
TOOL = os.path.join(REPO, "tools", "build_vocab.py")
sys.path.insert(0, REPO)

from tools import build_vocab, _vocab_sources as vocab_sources  # noqa: E402

SIZE = 4600  # small, above the fixed part (core characters, enclosed-form units, tail)

# The released vocabulary's last 285 lines, written out by hand.
EXPECTED_TAIL = (["<BR>", "<SP>", "<TAB>", "<URL>", "<EMAIL>", "<TEL>", "<DATE>", "<PRICE>",
                  "<BLOCK>", "<KIGOU>", "<U2000U2BFF>"]
                 + ["<|emoji%d|>" % n for n in range(1, 13)]
                 + ["<|byte%d|>" % n for n in range(255)]
                 + ["<|startoftext|>", "<|inputmask|>", "<|separator|>", "<|nottoken|>",
                    "<|bagoftoken|>", "<|segmenter|>", "<|endoftext|>"])

UNIHAN_VARIANTS = """\
# fake Unihan_Variants.txt
U+4F1A\tkTraditionalVariant\tU+4F1A U+6703
U+5B66\tkTraditionalVariant\tU+5B78
U+56FD\tkTraditionalVariant\tU+570B
U+540E\tkTraditionalVariant\tU+540E U+5F8C
U+91CC\tkTraditionalVariant\tU+88E1 U+91CC
U+88CF\tkSemanticVariant\tU+88E1<kHKGlyph,kLau
U+6765\tkTraditionalVariant\tU+4F86
U+4F86\tkSpecializedSemanticVariant\tU+8012<kMeyerWempe
U+FA11\tkSemanticVariant\tU+57FC U+5D0E<kMorohashi:Z
U+9084\tkSimplifiedVariant\tU+8FD8
U+6176\tkSemanticVariant\tU+5E86
U+68F9\tkSemanticVariant\tU+684C<kMatthews
"""
UNIHAN_OTHER = """\
# fake Unihan_OtherMappings.txt: Joyo kanji used below, one Jinmeiyo old form
U+4F1A\tkJoyoKanji\t2010
U+5B66\tkJoyoKanji\t2010
U+56FD\tkJoyoKanji\t2010
U+540E\tkJoyoKanji\t2010
U+5F8C\tkJoyoKanji\t2010
U+91CC\tkJoyoKanji\t2010
U+88CF\tkJoyoKanji\t2010
U+6765\tkJoyoKanji\t2010
U+5FDC\tkJoyoKanji\t2010
U+57FC\tkJoyoKanji\t2010
U+5D0E\tkJoyoKanji\t2010
U+6176\tkJoyoKanji\t2010
U+7DCF\tkJoyoKanji\t2010
U+5742\tkJoyoKanji\t2010
U+962A\tkJoyoKanji\t2010
U+5353\tkJoyoKanji\t2010
U+676F\tkJoyoKanji\t2010
U+5265\tkJoyoKanji\tU+525D
U+61C9\tkJinmeiyoKanji\t2010:U+5FDC
U+61C9\tkJis0\t1234
"""
UNIHAN_IRG = "U+F91F\tkCompatibilityVariant\tU+862D\nU+F91F\tkIRG_KSource\tK0-6A50\n"
RADICALS = "2ED1       ; 9577  #     CJK RADICAL LONG ONE\n"
# A hand-made KANJIDIC2 XML in the layout of Debian's kanjidic-xml (kuten codes as
# plane-row-cell): which variants resolve to which characters is written out here
# from the JIS tables, not from the tool.
KANJIDIC2 = """\
<?xml version="1.0" encoding="UTF-8"?>
<kanjidic2>
<header><file_version>4</file_version></header>
<!-- jis208 1-69-33 is 總 (old form of the Joyo 総) -->
<character><literal>総</literal>
<codepoint><cp_value cp_type="jis208">1-33-77</cp_value></codepoint>
<misc><variant var_type="jis208">1-69-33</variant></misc></character>
<!-- two Joyo kanji the dictionary calls variants: 坂 and 阪 (1-26-69) -->
<character><literal>坂</literal>
<misc><variant var_type="jis208">1-26-69</variant></misc></character>
<!-- jis212 1-22-82 is 囙 -->
<character><literal>因</literal>
<misc><variant var_type="jis212">1-22-82</variant></misc></character>
<!-- jis213 1-86-64 is 𣳾; jis213 1-39-50 is the JIS X 0208 kanji 拝: refused -->
<character><literal>泰</literal>
<misc><variant var_type="jis213">1-86-64</variant></misc></character>
<character><literal>叱</literal>
<misc><variant var_type="jis213">1-39-50</variant></misc></character>
<!-- ucs -->
<character><literal>𠮟</literal>
<misc><variant var_type="ucs">53F1</variant></misc></character>
<!-- 卓 -> 桌; Unihan also links 棹 to 桌, which must not bring 棹 to 卓 -->
<character><literal>卓</literal>
<misc><variant var_type="ucs">684C</variant></misc></character>
<!-- a dictionary index, not a character: 盃 must not join 杯 (nelson_c 2206) -->
<character><literal>盃</literal>
<misc><variant var_type="nelson_c">2206</variant></misc></character>
<character><literal>杯</literal>
<dic_number><dic_ref dr_type="nelson_c">2206</dic_ref></dic_number></character>
</kanjidic2>
"""
# StandardizedVariants.txt: a CJK compatibility ideograph's sequence (蘭 + VS1 is the
# glyph of U+F91F) and a non-ideograph one, which is not a variant spelling.
STANDARDIZED_VARIANTS = """\
0030 FE00; short diagonal stroke form; # DIGIT ZERO
862D FE00; CJK COMPATIBILITY IDEOGRAPH-F91F; # CJK UNIFIED IDEOGRAPH-862D
"""
VS1, IVS1, IVS2, IVS3 = "\ufe00", "\U000e0100", "\U000e0101", "\U000e0102"


def cmap14(default, non_default):
    """An OpenType cmap format 14 subtable, laid out by the OpenType specification:
    default = {selector: [(first code point, additional count)]},
    non_default = {selector: [(code point, glyph id)]}."""
    selectors = sorted(set(default) | set(non_default))
    header = 10 + 11 * len(selectors)
    records = body = b""
    for selector in selectors:
        offsets = []
        for table, pack in ((default, lambda r: r[0].to_bytes(3, "big") + bytes([r[1]])),
                            (non_default, lambda r: r[0].to_bytes(3, "big")
                             + struct.pack(">H", r[1]))):
            if selector not in table:
                offsets.append(0)
                continue
            offsets.append(header + len(body))
            body += struct.pack(">I", len(table[selector])) + b"".join(map(pack,
                                                                          table[selector]))
        records += selector.to_bytes(3, "big") + struct.pack(">II", *offsets)
    return struct.pack(">HII", 14, header + len(body), len(selectors)) + records + body


def font_file(subtables, collection=False):
    """A font (or a collection, one face per subtable) whose only table is a cmap
    holding one format 14 subtable."""
    cmaps = [struct.pack(">HHHHI", 0, 1, 0, 5, 12) + sub for sub in subtables]
    head = 12 + 4 * len(cmaps) if collection else 0
    at = head + 28 * len(cmaps)  # a 12-byte directory header and one 16-byte record
    directories = tables = b""
    for cmap in cmaps:
        directories += struct.pack(">IHHHH4sIII", 0x10000, 1, 16, 0, 0, b"cmap", 0, at,
                                   len(cmap))
        tables += cmap
        at += len(cmap)
    prefix = b""
    if collection:
        prefix = b"ttcf" + struct.pack(">II", 0x10000, len(cmaps)) + b"".join(
            struct.pack(">I", head + 28 * i) for i in range(len(cmaps)))
    return prefix + directories + tables


# 設 has VS17 by range (default UVS) and 定 VS18 by glyph; 學 (a variant of 学) VS19;
# "a" (and "b", by the range) and a selector outside the variation selector blocks are
# read but never become spellings.
FONT_SEQUENCES = cmap14({0xE0100: [(ord("設"), 0), (ord("a"), 1)]},
                        {0xE0101: [(ord("定"), 7)], 0xE0102: [(ord("學"), 9)],
                         0x41: [(ord("定"), 3)]})
EXPECTED_FONT_SEQUENCES = {("設", IVS1), ("定", IVS2), ("學", IVS3), ("a", IVS1), ("b", IVS1)}
# One fully-qualified emoji per class, a ZWJ sequence and an unqualified line.
EMOJI_TEST = """\
# group: Smileys & Emotion
# subgroup: face-smiling
1F600 ; fully-qualified # 😀 grinning face
# subgroup: face-affection
1F970 ; fully-qualified # 🥰 smiling face with hearts
# subgroup: face-unwell
1F637 ; fully-qualified # 😷 face with medical mask
# group: People & Body
# subgroup: hand-fingers-open
1F44B ; fully-qualified # 👋 waving hand
# subgroup: family
1F468 200D 1F469 200D 1F467 ; fully-qualified # 👨‍👩‍👧 family
# subgroup: person
1F468 ; fully-qualified # 👨 man
1F469 ; fully-qualified # 👩 woman
# group: Animals & Nature
# subgroup: animal-mammal
1F435 ; fully-qualified # 🐵 monkey face
# group: Food & Drink
# subgroup: food-fruit
1F347 ; fully-qualified # 🍇 grapes
# group: Travel & Places
# subgroup: place-map
1F30D ; fully-qualified # 🌍 globe
# subgroup: sky & weather
2668 ; fully-qualified # ♨ hot springs (made single-code-point for this test)
# group: Activities
# subgroup: event
1F383 ; fully-qualified # 🎃 jack-o-lantern
# group: Objects
# subgroup: clothing
1F453 ; fully-qualified # 👓 glasses
# group: Symbols
# subgroup: warning
26A0 FE0F ; fully-qualified # ⚠️ warning
26A0 ; unqualified # ⚠ warning
# group: Flags
# subgroup: flag
1F3C1 ; fully-qualified # 🏁 chequered flag
"""
EXPECTED_EMOJI_CLASS = {"😀": 1, "😷": 2, "🎃": 3, "🐵": 4, "🏁": 5, "🍇": 6, "👓": 7, "👋": 8,
                        "👨‍👩‍👧": 8, "👨": 8, "👩": 8, "🥰": 9, "⚠️": 10, "🌍": 11, "♨": 12}

CORPUS = {
    "a.txt": "これは會社の設定ファイルです。設定ファイルを読み込みます。\n"
             "學校で國語を勉強しています。慶應の先生が來ました。\n\n\n"
             "ｶﾞｲﾄﾞを読んでください。ガイドの設定を確認します。\n" * 20,
    "b.txt": "コマンドを実行すると、設定ファイルが作成されます。\n"
             "config file options are listed here.\n" * 20,
    "heldout.txt": "この文書は使われません。\n",
}


def fold_by_hand(text):
    """The test corpus with its variants folded: NFKC (half width) and its kyūjitai."""
    return unicodedata.normalize("NFKC", text).translate(str.maketrans("會學國應來", "会学国応来"))


def write(path, text):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)


@pytest.fixture(scope="module")
def fake_unicode_dir(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("unicode"))
    write(os.path.join(root, "Unihan_Variants.txt"), UNIHAN_VARIANTS)
    write(os.path.join(root, "Unihan_OtherMappings.txt"), UNIHAN_OTHER)
    write(os.path.join(root, "Unihan_IRGSources.txt"), UNIHAN_IRG)
    write(os.path.join(root, "EquivalentUnifiedIdeograph.txt"), RADICALS)
    write(os.path.join(root, "emoji", "emoji-test.txt"), EMOJI_TEST)
    write(os.path.join(root, "StandardizedVariants.txt"), STANDARDIZED_VARIANTS)
    write(os.path.join(root, "kanjidic2.xml"), KANJIDIC2)  # passed with --kanjidic
    with open(os.path.join(root, "ivs.ttf"), "wb") as f:  # passed with --ivs_fonts
        f.write(font_file([FONT_SEQUENCES]))
    return root


@pytest.fixture(scope="module")
def corpus_dir(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("corpus"))
    for name, text in CORPUS.items():
        write(os.path.join(root, name), text)
    return root


def run_tool(*args):
    return subprocess.run([sys.executable, TOOL] + list(args), capture_output=True,
                          text=True, timeout=300)


def tool_args(corpus_dir, unicode_dir, out_dir, size=SIZE, kanjidic=None, fonts=None):
    """Arguments for a build; KANJIDIC2 and the font default to the fake ones in the fake
    unicode-data folder (fake_unicode_dir), so no test needs Debian's kanjidic-xml or fonts."""
    kanjidic = kanjidic or os.path.join(unicode_dir, "kanjidic2.xml")
    fonts = fonts or [os.path.join(unicode_dir, "ivs.ttf")]
    return ["--corpus", corpus_dir, "--exclude", "heldout", "--size", str(size),
            "--unicode_dir", unicode_dir, "--kanjidic", kanjidic, "--ivs_fonts"] + fonts + [
            "--output", os.path.join(out_dir, "vocab.txt"),
            "--emoji_output", os.path.join(out_dir, "emoji.json")]


@pytest.fixture(scope="module")
def built(corpus_dir, fake_unicode_dir, tmp_path_factory):
    """The tool's outputs from the command line: (vocabulary path, emoji path, raw text)."""
    out = str(tmp_path_factory.mktemp("built"))
    result = run_tool(*tool_args(corpus_dir, fake_unicode_dir, out))
    assert result.returncode == 0, result.stderr
    vocab, emoji = os.path.join(out, "vocab.txt"), os.path.join(out, "emoji.json")
    with open(vocab, encoding="utf-8") as f:
        return vocab, emoji, f.read()


def spellings_of(text):
    return [[line] if line == "," else line.split(",") for line in text.split("\n")]


def line_of_spelling(text):
    found = {}
    for number, spellings in enumerate(spellings_of(text)):
        for s in spellings:
            assert s not in found, "%r is on lines %d and %d" % (s, found[s], number)
            found[s] = number
    return found


def canonical(text, spelling):
    lines = spellings_of(text)
    return lines[line_of_spelling(text)[spelling]][0]


def assert_well_formed(text, size):
    assert not text.endswith("\n")
    lines = text.split("\n")
    assert len(lines) == size
    assert lines[-len(EXPECTED_TAIL):] == EXPECTED_TAIL
    ids = line_of_spelling(text)  # also asserts that no spelling is on two lines
    body = spellings_of(text)[:-len(EXPECTED_TAIL)]
    assert all(s for line in body for s in line), "empty spelling"
    assert "," in ids and "<" in ids, "the comma and '<' must stay encodable"
    for line in body:
        for s in line:
            assert len(s) <= 3, s
            assert s == "<" or not s.startswith("<"), s
    # The encoder takes the lowest id among the 1-3 character prefixes at a position,
    # so a spelling whose proper prefix has a lower id could never be chosen.
    for s, number in ids.items():
        if not s.startswith("<"):
            shadowing = [s[:k] for k in range(1, len(s)) if ids.get(s[:k], size) < number]
            assert not shadowing, "%r (line %d) is shadowed by %r" % (s, number, shadowing)


# ------------------------------------------------------------------ the tool


def test_builds_well_formed_vocabulary_of_requested_size(built):
    assert_well_formed(built[2], SIZE)


def test_units_come_from_the_corpus_and_read_longest_first(built):
    ids = line_of_spelling(built[2])
    assert "設定" in ids and ids["設定"] < ids["設"]
    corpus = "".join(CORPUS[name] for name in ("a.txt", "b.txt"))
    units = [line[0] for line in spellings_of(built[2]) if 1 < len(line[0]) and line[0][0] != "<"]
    enclosed_targets = {unicodedata.normalize("NFKC", chr(c)).strip("()") for c in
                        list(range(0x2460, 0x2500)) + list(range(0x3200, 0x3400))
                        + list(range(0x1F100, 0x1F300))}
    for unit in units:
        if unit in enclosed_targets:
            continue  # targets of enclosed forms (⒉ -> 2., ㍻ -> 平成) are units by rule
        assert unit in fold_by_hand(corpus), unit
        # no unit crosses from hiragana into kanji or katakana, or past 。 and 、
        assert not re.search("[ぁ-ゖ][一-龥ァ-ヺ]|[。、].", unit), unit


def test_encode_swe_loads_it_and_round_trips(built):
    encode_swe = pytest.importorskip("encode_swe", reason="encode_swe.py (Part 1) not importable")
    encoder = encode_swe.SWEEncoder(built[0], built[1])
    text = "設定ファイルを読み込みます。\nconfig file"
    assert encoder.decode(encoder.encode(text)) == text
    ids = line_of_spelling(built[2])
    assert encoder.encode("設定")[0] == ids["設定"]


def test_variant_folding_rules(built):
    text = built[2]
    expected = {"⽇": "日", "㈱": "株", "①": "1", "⒉": "2.", "ゐ": "い", "ゑ": "え",
                "ｶ": "カ", "ｶﾞ": "ガ", "か゛": "が", "か\u3099": "が",
                "會": "会", "學": "学", "國": "国", "應": "応",   # kyūjitai -> shinjitai
                "﨑": "崎",  # a semantic variant marked :Z beats the plain semantic link to 埼
                "裡": "裏",  # the semantic link wins over 里's Chinese simplification
                "还": "還", "⻑": "長", "\uf91f": "\u862d"}
    for variant, line in expected.items():
        assert canonical(text, variant) == line, variant
    ids = line_of_spelling(text)
    assert ids["後"] != ids["后"], "two Joyo kanji must stay distinct"
    assert ids["裏"] != ids["里"]
    assert "耒" not in spellings_of(text)[ids["来"]], "a weak link never merges two JIS kanji"
    assert canonical(text, "來") == "来"


def test_kanjidic_variants(built):
    text = built[2]
    ids = line_of_spelling(text)
    assert canonical(text, "總") == "総", "a jis208 kuten code resolves to its kanji"
    assert canonical(text, "囙") == "因", "a jis212 code, through euc_jp's 0x8F plane"
    assert canonical(text, "𣳾") == "泰", "a jis213 code, through euc_jis_2004"
    assert canonical(text, "𠮟") == "叱", "a ucs code point"
    assert ids["坂"] != ids["阪"], "two Joyo kanji are never merged"
    assert ids["叱"] != ids["拝"], "a jis213 code at a JIS X 0208 position is refused"
    assert ids["盃"] != ids["杯"], "dictionary-index variants are not used"
    assert canonical(text, "桌") == "卓"
    assert "棹" not in spellings_of(text)[ids["卓"]], \
        "a variant of 卓 does not bring 棹, a base character linked to it"
    assert canonical(text, "剝") == "剥", "kJoyoKanji pointer; the accepted form stays canonical"


def test_variation_sequences_are_spellings_of_their_character(built):
    text = built[2]
    ids = line_of_spelling(text)
    assert canonical(text, "設" + IVS1) == "設", "a default-UVS range of the font"
    assert canonical(text, "定" + IVS2) == "定", "a non-default UVS of the font"
    assert canonical(text, "學" + IVS3) == "学", "a sequence on a variant joins its line"
    assert canonical(text, "\u862d" + VS1) == "\u862d", "StandardizedVariants.txt"
    for absent in ("a" + IVS1, "0" + VS1, "定A"):
        assert absent not in ids, "only ideographs and variation selectors: %r" % absent
    # A 2-character unit lists each spelling with one sequence (3 code points at most).
    assert ids["設" + IVS1 + "定"] == ids["設定" + IVS2] == ids["設定"]
    assert "設" + IVS1 + "定" + IVS2 not in ids


def test_encoder_reads_a_variation_sequence_as_its_character(built):
    encode_swe = pytest.importorskip("encode_swe", reason="encode_swe.py (Part 1) not importable")
    encoder = encode_swe.SWEEncoder(built[0], built[1])
    ids = line_of_spelling(built[2])
    with_sequences = "設" + IVS1 + "定ファイル。學" + IVS3
    assert encoder.encode(with_sequences) == encoder.encode("設定ファイル。学")
    assert encoder.encode(with_sequences)[0] == ids["設定"]
    assert encoder.decode(encoder.encode(with_sequences)) == "設定ファイル。学"


def test_font_sequences_of_a_font_and_a_collection(tmp_path):
    single = tmp_path / "one.ttf"
    single.write_bytes(font_file([FONT_SEQUENCES]))
    expected = EXPECTED_FONT_SEQUENCES  # ("定", "A"): not a variation selector
    assert vocab_sources.font_sequences(str(single)) == expected
    other = cmap14({0xFE00: [(ord("蘭"), 0)]}, {})
    collection = tmp_path / "two.ttc"
    collection.write_bytes(font_file([FONT_SEQUENCES, other], collection=True))
    assert vocab_sources.font_sequences(str(collection)) == expected | {("蘭", VS1)}


def test_font_problems_are_one_line_errors(corpus_dir, fake_unicode_dir, tmp_path):
    garbage = tmp_path / "garbage.ttf"
    garbage.write_bytes(b"\x00\x01\x00\x00\x00\x05" + b"\xff" * 30)
    for font, message in ((str(tmp_path / "absent.ttc"), "apt-get install fonts-noto-cjk"),
                          (str(garbage), "not an OpenType font")):
        result = run_tool(*tool_args(corpus_dir, fake_unicode_dir, str(tmp_path), fonts=[font]))
        assert result.returncode == 2, result.stderr
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr
        assert message in result.stderr and font in result.stderr
        assert not (tmp_path / "vocab.txt").exists()


def require_debian_fonts():
    missing = [p for p in vocab_sources.IVS_FONT_PATHS if not os.path.isfile(p)]
    if missing:
        pytest.skip("Debian fonts-noto-cjk / fonts-ipamj-mincho not installed (%s absent; "
                    "apt-get install fonts-noto-cjk fonts-ipamj-mincho)" % missing[0])


def test_real_fonts_list_japanese_variation_sequences():
    require_debian_fonts()
    adobe, moji_joho = [vocab_sources.font_sequences(p) for p in vocab_sources.IVS_FONT_PATHS]
    # The IVD registers about 14,700 Adobe-Japan1 and 11,400 Moji_Joho sequences; 葛 has
    # variants in both collections.
    assert len(adobe) > 14000 and len(moji_joho) > 11000
    assert ("葛", IVS1) in adobe and ("葛", IVS2) in adobe
    assert sum(1 for base, _ in moji_joho if base == "葛") >= 2


def test_kanjidic_links_from_the_fixture(fake_unicode_dir):
    links = vocab_sources.kanjidic_links(os.path.join(fake_unicode_dir, "kanjidic2.xml"))
    assert sorted((a, b) for _, a, b in links) == sorted([
        ("総", "總"), ("坂", "阪"), ("因", "囙"), ("泰", "𣳾"), ("𠮟", "叱"), ("卓", "桌")])
    assert vocab_sources.jis_character("jis213", "2-1-1") == "𠂉"  # plane 2
    assert vocab_sources.jis_character("jis208", "33-77") == "総"  # plane left out
    assert vocab_sources.jis_character("jis208", "1-95-01") is None
    assert vocab_sources.kanjidic_variant("ucs", "20B9F") == "𠮟"


def test_missing_kanjidic_says_how_to_install(corpus_dir, fake_unicode_dir, tmp_path):
    args = tool_args(corpus_dir, fake_unicode_dir, str(tmp_path),
                     kanjidic=str(tmp_path / "no-kanjidic2.xml.gz"))
    result = run_tool(*args)
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1
    assert "apt-get install kanjidic-xml" in result.stderr
    assert not (tmp_path / "vocab.txt").exists()


def test_real_kanjidic_gives_japanese_old_forms():
    if not os.path.isfile(vocab_sources.KANJIDIC_PATH):
        pytest.skip("Debian kanjidic-xml is not installed (%s absent; apt-get install "
                    "kanjidic-xml)" % vocab_sources.KANJIDIC_PATH)
    links = {(a, b) for _, a, b in vocab_sources.kanjidic_links(vocab_sources.KANJIDIC_PATH)}
    for old, new in ("總総", "犧犠", "經経"):
        assert (old, new) in links or (new, old) in links, old
    assert ("叱", "拝") not in links, "the jis213 slip is refused"


def test_unit_lines_list_products_of_variants(built):
    text = built[2]
    ids = line_of_spelling(text)
    if "設定" in ids:
        assert canonical(text, "設定") == "設定"
    assert "ﾌｧｲ" in ids and canonical(text, "ﾌｧｲ") == "ファイ"
    assert "ファｲ" not in ids, "half-width spellings are never mixed with full width"
    if "慶應" in ids or "慶応" in ids:
        assert ids["慶應"] == ids["慶応"]


def test_emoji_table(built):
    with open(built[1], encoding="utf-8") as f:
        table = json.load(f)
    emoji = table["emoji"]
    assert {k: int(v[7:-2]) for k, v in emoji.items()} == EXPECTED_EMOJI_CLASS
    keys = list(emoji)
    assert keys.index("👨‍👩‍👧") < keys.index("👨"), "sequences are replaced before their parts"
    assert "⚠" not in emoji, "only fully-qualified emoji"
    assert table["emoji_inv"] == {"<|emoji%d|>" % n: rep for n, rep in enumerate(
        ["😀", "😷", "🎃", "🐵", "🏁", "🍇", "👓", "👋", "🥰", "⚠️", "🌍", "♨"], 1)}
    assert "♨" not in line_of_spelling(built[2]), "the encoder replaces emoji before matching"


def test_output_is_deterministic(built, corpus_dir, fake_unicode_dir, tmp_path):
    result = run_tool(*tool_args(corpus_dir, fake_unicode_dir, str(tmp_path)))
    assert result.returncode == 0, result.stderr
    with open(tmp_path / "vocab.txt", encoding="utf-8") as f:
        assert f.read() == built[2]
    with open(tmp_path / "emoji.json", "rb") as a, open(built[1], "rb") as b:
        assert a.read() == b.read()


def test_refuses_to_overwrite_without_force(corpus_dir, fake_unicode_dir, tmp_path):
    (tmp_path / "vocab.txt").write_text("keep me", encoding="utf-8")
    result = run_tool(*tool_args(corpus_dir, fake_unicode_dir, str(tmp_path)))
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1 and "--force" in result.stderr
    assert (tmp_path / "vocab.txt").read_text(encoding="utf-8") == "keep me"
    assert not (tmp_path / "emoji.json").exists()


def test_missing_unicode_data_says_how_to_install(corpus_dir, tmp_path):
    result = run_tool(*tool_args(corpus_dir, str(tmp_path / "nothing"), str(tmp_path)))
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1
    assert "apt-get install unicode-data" in result.stderr


def test_size_below_fixed_part_is_a_user_error(corpus_dir, fake_unicode_dir, tmp_path):
    result = run_tool(*tool_args(corpus_dir, fake_unicode_dir, str(tmp_path), size=1000))
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1 and "--size" in result.stderr


def test_unknown_exclude_is_a_user_error(corpus_dir, fake_unicode_dir, tmp_path):
    args = tool_args(corpus_dir, fake_unicode_dir, str(tmp_path))
    args[args.index("heldout")] = "no-such-shard"
    result = run_tool(*args)
    assert result.returncode == 2 and "no-such-shard" in result.stderr


def test_help_is_fast_and_lists_standard_sizes():
    start = time.monotonic()
    result = run_tool("--help")
    assert result.returncode == 0 and time.monotonic() - start < 10
    for size in ("8000", "16000", "24000", "32000", "36000"):
        assert size in result.stdout


def kanji_share_units(share, count=4):
    """Units select_units picks on a tiny corpus where kana units save the most tokens."""
    text = "".join(["です。ます。より。から。" * 20, "設定。" * 6, "日本語。" * 4, "会社。" * 3, "学校。" * 2])
    index = build_vocab.GramIndex([text], set(text) - {"。"})
    candidates = {}
    for n in (2, 3):
        candidates.update(index.counts(n, build_vocab.MIN_UNIT_COUNT))
    units, _ = build_vocab.select_units(index, candidates, count, [], lambda it, **kw: it,
                                        kanji_share=share)
    assert len(units) == count
    return units, sorted(u for u in units if re.fullmatch("[一-龥]+", u))


def test_kanji_unit_share_reserves_unit_ids_for_kanji_compounds():
    units, kanji = kanji_share_units(0.0)
    assert kanji == [], "without a share the kana units, which save more tokens, take every id"
    # half of the 4 ids go to the all-kanji units that save the most tokens among
    # themselves: 日本語 (4 uses x 2 tokens) and 設定 (6 x 1), not 会社 (3) or 学校 (2)
    units, kanji = kanji_share_units(0.5)
    assert kanji == ["日本語", "設定"]
    assert len(units - set(kanji)) == 2 and all(re.fullmatch("[ぁ-ん]+", u)
                                                for u in units - set(kanji))
    assert len(kanji_share_units(1.0)[1]) == 4


def test_kanji_unit_share_out_of_range_is_a_user_error(corpus_dir, fake_unicode_dir, tmp_path):
    args = tool_args(corpus_dir, fake_unicode_dir, str(tmp_path)) + ["--kanji_unit_share", "1.5"]
    result = run_tool(*args)
    assert result.returncode == 2 and "--kanji_unit_share" in result.stderr
    assert not (tmp_path / "vocab.txt").exists()


def test_check_vocabulary_rejects_a_shadowed_unit():
    body = ["ab", "a", "b", "abc"]  # abc (id 3) can never win over ab (id 0)
    with pytest.raises(ValueError, match="shadowed"):
        build_vocab.check_vocabulary(body + EXPECTED_TAIL, len(body) + len(EXPECTED_TAIL))
    build_vocab.check_vocabulary(["abc", "ab", "a", "b", "c"] + EXPECTED_TAIL,
                                 5 + len(EXPECTED_TAIL))


# ------------------------------------------------------------------ committed files

COMMITTED = os.path.join(REPO, "ja-swe36k.txt"), os.path.join(REPO, "emoji.json")


def test_committed_vocabulary_is_well_formed():
    if not os.path.isfile(COMMITTED[0]):
        pytest.skip("ja-swe36k.txt is not built yet")
    with open(COMMITTED[0], encoding="utf-8") as f:
        assert_well_formed(f.read(), 36000)
    with open(COMMITTED[1], encoding="utf-8") as f:
        table = json.load(f)
    assert sorted(table["emoji_inv"]) == sorted("<|emoji%d|>" % n for n in range(1, 13))
    assert set(table["emoji"].values()) == set(table["emoji_inv"])


@pytest.mark.slow
def test_committed_files_rebuild_byte_for_byte(tmp_path):
    corpus = os.path.join(SHARED, "corpus", "ja-docs-train")
    if not os.path.isdir(corpus):
        pytest.skip("../shared/corpus/ja-docs-train is absent (CI puts shared/ beside the repo)")
    if not os.path.isfile("/usr/share/unicode/Unihan_Variants.txt.bz2"):
        pytest.skip("Debian unicode-data is not installed (apt-get install unicode-data)")
    if not os.path.isfile(vocab_sources.KANJIDIC_PATH):
        pytest.skip("Debian kanjidic-xml is not installed (apt-get install kanjidic-xml)")
    require_debian_fonts()
    result = run_tool("--corpus", corpus, "--exclude", "debian-reference-ja", "--size", "36000",
                      "--output", str(tmp_path / "v.txt"),
                      "--emoji_output", str(tmp_path / "e.json"))
    assert result.returncode == 0, result.stderr
    for built_file, committed in zip(("v.txt", "e.json"), COMMITTED):
        with open(tmp_path / built_file, "rb") as a, open(committed, "rb") as b:
            assert a.read() == b.read(), committed


# ------------------------------------------------------------------ bench/vocab_compare.py

def test_reference_encoder_matches_released_golden_cases():
    golden = os.path.join(SHARED, "reference", "tokenizer_golden.jsonl")
    if not os.path.isfile(golden):
        pytest.skip("../shared/reference is absent (CI puts shared/ beside the repo)")
    from bench.vocab_compare import RELEASED, ReferenceEncoder
    encoder = ReferenceEncoder(*RELEASED)
    with open(golden, encoding="utf-8") as f:
        cases = [json.loads(line) for line in f if line.strip()]
    plain = [c for c in cases if not c["clean"]]
    assert plain
    for case in plain:
        assert encoder.encode(case["text"]) == case["ids"], case["text"]


def test_variation_sequence_spellings_are_counted():
    from bench.vocab_compare import sequence_spellings, variant_spellings
    lines = [["日", "日" + IVS1, "⽇"], ["日本", "日" + VS1 + "本", "日本" + IVS2], ["☺", "☺\ufe0f"],
             ["\U000e0100"]]  # a canonical spelling is not a variant
    assert variant_spellings(lines) == 5
    assert sequence_spellings(lines) == 4


def test_dead_lines_and_byte_fallback_counts():
    from bench.vocab_compare import byte_fallback_characters, dead_lines
    lines = [["ab"], ["a"], ["b"], ["abc"], ["c", "x"], ["cx"]] + [[t] for t in EXPECTED_TAIL]
    # abc (line 3) loses to its prefix ab (line 0), cx (line 5) to c (line 4)
    assert dead_lines(lines) == 2
    byte = {int(t[6:-2]): i for i, t in enumerate(EXPECTED_TAIL, 6) if t.startswith("<|byte")}
    ids = [0] + [byte[b] for b in "é".encode()] + [1] + [byte[b] for b in "漢字".encode()]
    assert byte_fallback_characters(ids, lines) == 3
