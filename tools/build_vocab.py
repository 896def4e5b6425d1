#!/usr/bin/env python3
"""Build this project's own SWE vocabulary (ja-swe36k.txt) and emoji table (emoji.json).

The committed files are rebuilt byte for byte (Python 3.11, Debian 12
`unicode-data` 15.0.0-1, `kanjidic-xml` 2022.08.23, `fonts-noto-cjk`
1:20220127+repack1-1 and `fonts-ipamj-mincho` 005.01-2.1) by

    python tools/build_vocab.py --corpus ../shared/corpus/ja-docs-train \\
        --exclude debian-reference-ja --size 36000 \\
        --output ja-swe36k.txt --emoji_output emoji.json --force

`--corpus data/corpus` (what tools/get_corpus.py writes) holds the same package
shards. debian-reference-ja is held out: bench/vocab_compare.py measures the
vocabulary on it, so it must not be used for building.

What it writes and how it chooses the lines (the released layout, the character
set, variant spellings, units and their ids) is specified in README.md, section
"How tools/build_vocab.py chooses lines"; in short: the released GPTSAN tail of
285 fixed tokens, a core character set plus corpus-ranked extras, variant
spellings (異体字) from Unihan, KANJIDIC2 and registered variation sequences
(tools/_vocab_sources.py reads those), and 2-3 character units placed before
every single character so that the encoder's lowest-id rule is a longest match.
"""
import collections
import itertools
import json
import os
import re
import sys
import unicodedata

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from model import cli  # noqa: E402
from model.atomic import write_text_atomic  # noqa: E402
from model.tokens import BYTE_TOKENS, NAMED_TOKENS, SPECIAL_TOKENS  # noqa: E402
from tools._vocab_sources import (  # noqa: E402
    ATTACH_ONLY_LINKS, IVS_FONT_PATHS, KANJIDIC_PATH, LINK_COMPATIBILITY, UnicodeData, decodable,
    in_ranges)

STANDARD_SIZES = (8000, 16000, 24000, 32000, 36000)
EMOJI_CLASS_COUNT = 12
TAIL = (list(NAMED_TOKENS) + ["<|emoji%d|>" % (i + 1) for i in range(EMOJI_CLASS_COUNT)]
        + list(BYTE_TOKENS) + list(SPECIAL_TOKENS))

MAX_UNIT_LENGTH = 3
MIN_UNIT_COUNT = 2
MIN_EXTRA_CHAR_COUNT = 3
CHARACTER_SHARE = 0.5
REFINE_PASSES = 4
CANDIDATE_POOL_FACTOR = 3
KANJI_UNIT_SHARE = 0.4  # share of unit ids reserved for all-kanji units (README)
MAX_SPELLINGS_PER_UNIT = 64

# The encoder rewrites these before matching, so an entry for them would never be used.
REWRITTEN_BY_ENCODER = frozenset(" \u3000\t\r\n\u2014\u2212")
# "," is its own line and separates spellings; "<" starts the encoder's tags.
NOT_IN_UNITS = frozenset(",<")
SEPARATOR = "\n"

HISTORICAL_KANA = {"ゐ": "い", "ゑ": "え", "ヰ": "イ", "ヱ": "エ"}
# NFKC turns the half-width sound marks into combining ones; the spacing ones read better.
HALF_WIDTH_SOUND_MARKS = {"\uff9e": "\u309b", "\uff9f": "\u309c"}
IDEOGRAPH_NFKC_RANGES = ((0x2E80, 0x2EFF), (0x2F00, 0x2FDF), (0xF900, 0xFAFF),
                         (0x2F800, 0x2FA1F))
ENCLOSED_RANGES = ((0x2460, 0x24FF), (0x3200, 0x32FF), (0x3300, 0x33FF),
                   (0x1F100, 0x1F1E5), (0x1F200, 0x1F2FF))
HALF_WIDTH_RANGE = (0xFF61, 0xFF9F)


# Character tiers: lower is kept first and preferred as a group's canonical form.
TIER_CORE, TIER_JIS2, TIER_JIS2004, TIER_EXTRA = range(4)

# emoji-test.txt group/subgroup -> class 1..12; a subgroup entry wins over its group.
EMOJI_SUBGROUP_CLASS = {
    "face-smiling": 1, "face-tongue": 1, "face-hand": 1, "face-hat": 1, "face-glasses": 1,
    "cat-face": 1, "monkey-face": 1,
    "face-neutral-skeptical": 2, "face-sleepy": 2, "face-unwell": 2, "face-concerned": 2,
    "face-negative": 2, "face-costume": 2,
    "face-affection": 9, "heart": 9, "emotion": 9,
    "time": 12, "sky & weather": 12,
}
EMOJI_GROUP_CLASS = {
    "Activities": 3, "Animals & Nature": 4, "Flags": 5, "Food & Drink": 6, "Objects": 7,
    "People & Body": 8, "Component": 8, "Smileys & Emotion": 1, "Symbols": 10,
    "Travel & Places": 11,
}
EMOJI_DEFAULT_CLASS = 10



# ------------------------------------------------------------------ emoji.json

def emoji_class(group, subgroup):
    return EMOJI_SUBGROUP_CLASS.get(subgroup) or EMOJI_GROUP_CLASS.get(group, EMOJI_DEFAULT_CLASS)


def build_emoji_table(emoji):
    """emoji.json's content: every fully-qualified emoji -> <|emojiN|>, longest first.

    The encoder replaces keys one at a time in key order, so a ZWJ sequence must
    come before the emoji it is made of; the representative of a class is its
    first emoji in emoji-test.txt order.
    """
    classes, representatives = {}, {}
    for sequence, group, subgroup in emoji:
        if sequence in classes:
            continue
        token = "<|emoji%d|>" % emoji_class(group, subgroup)
        classes[sequence] = token
        representatives.setdefault(token, sequence)
    tokens = ["<|emoji%d|>" % (i + 1) for i in range(EMOJI_CLASS_COUNT)]
    missing = [t for t in tokens if t not in representatives]
    if missing:
        cli.fail("emoji-test.txt has no fully-qualified emoji for %s" % ", ".join(missing))
    keys = sorted(classes, key=lambda k: -len(k))  # stable: file order among equals
    return {"emoji": {k: classes[k] for k in keys},
            "emoji_inv": {t: representatives[t] for t in tokens}}


# ------------------------------------------------------------------ characters


def jis_x0208_tiers():
    """JIS X 0208 character -> tier (rows 1-8 and level-1 kanji core, level 2 next)."""
    tiers = {}
    for row in range(1, 95):
        for cell in range(1, 95):
            char = decodable(bytes([0xA0 + row, 0xA0 + cell]), "euc_jp")
            if char:
                tiers[char] = TIER_CORE if row <= 47 else TIER_JIS2
    return tiers


def jis_x0213_chars():
    """Single-code-point characters of JIS X 0213 (planes 1 and 2)."""
    chars = set()
    leads = list(range(0x81, 0xA0)) + list(range(0xE0, 0xFD))
    trails = [b for b in range(0x40, 0xFD) if b != 0x7F]
    for lead, trail in itertools.product(leads, trails):
        char = decodable(bytes([lead, trail]), "shift_jis_2004")
        if char and len(char) == 1:
            chars.add(char)
    return chars


def core_extras():
    """Printable ASCII, full-width forms and punctuation blocks."""
    chars = {chr(c) for c in range(0x21, 0x7F)}
    chars |= {chr(c) for c in range(0xFF01, 0xFF5F)} | {chr(c) for c in range(0xFFE0, 0xFFE7)}
    chars |= {chr(c) for c in range(0x3001, 0x3040)}
    chars |= {chr(c) for c in range(0x2010, 0x205F) if unicodedata.category(chr(c))[0] == "P"}
    return chars


def can_be_entry(char, emoji_keys):
    category = unicodedata.category(char)
    return not (char in REWRITTEN_BY_ENCODER or char in emoji_keys or category[0] in "CZ")


def character_tiers(char_counts, joyo, emoji_keys):
    """Every candidate base character -> tier."""
    tiers = {c: TIER_JIS2004 for c in jis_x0213_chars()}
    tiers.update(jis_x0208_tiers())
    tiers.update({c: TIER_CORE for c in core_extras() | set(joyo)})
    for char, count in char_counts.items():
        if count >= MIN_EXTRA_CHAR_COUNT and char not in tiers:
            tiers[char] = TIER_EXTRA
    return {c: t for c, t in tiers.items() if can_be_entry(c, emoji_keys)}


# ------------------------------------------------------------------ variant groups


def nfkc_ideograph_links(chars):
    return [(LINK_COMPATIBILITY, c, unicodedata.normalize("NFKC", c)) for c in chars
            if in_ranges(c, IDEOGRAPH_NFKC_RANGES)
            and len(unicodedata.normalize("NFKC", c)) == 1
            and unicodedata.normalize("NFKC", c) != c]


class VariantGroups:
    """Union-find over ideograph links with the Joyo, no-chain and base guards."""

    def __init__(self, vocabulary_chars, joyo):
        self.parent = {}
        self.vocabulary_chars = vocabulary_chars
        self.joyo = joyo
        self.joyo_count = {}
        self.joyo_member = {}
        self.vocabulary_count = {}

    def find(self, c):
        if c not in self.parent:
            self.parent[c] = c
            self.joyo_count[c] = int(c in self.joyo)
            self.joyo_member[c] = c if c in self.joyo else None
            self.vocabulary_count[c] = int(c in self.vocabulary_chars)
        root = c
        while self.parent[root] != root:
            root = self.parent[root]
        while self.parent[c] != root:
            self.parent[c], c = root, self.parent[c]
        return root

    def link(self, a, b, attach_only=False):
        """Merge the groups of a and b unless a guard forbids it.

        A group never holds two Joyo kanji. Two groups that both hold vocabulary
        characters join only through a direct link between two of them, never
        through an `attach_only` link, and only through each side's base: its Joyo
        kanji, or the side's only vocabulary character. So a variant never drags
        in a character that is already the base of another group (卓 -> 桌 does not
        bring 棹 and 櫂, which Unihan links to 桌; 尽 -> 儘 does not bring 侭).
        """
        ra, rb = self.find(a), self.find(b)
        if ra == rb or self.joyo_count[ra] + self.joyo_count[rb] > 1:
            return
        if self.vocabulary_count[ra] and self.vocabulary_count[rb] and (
                attach_only or not (a in self.vocabulary_chars and b in self.vocabulary_chars)
                or not self.is_base(a, ra) or not self.is_base(b, rb)):
            return
        ra, rb = min(ra, rb), max(ra, rb)
        self.parent[rb] = ra
        self.joyo_count[ra] += self.joyo_count[rb]
        self.joyo_member[ra] = self.joyo_member[ra] or self.joyo_member[rb]
        self.vocabulary_count[ra] += self.vocabulary_count[rb]

    def is_base(self, c, root):
        return self.joyo_member[root] == c or (self.joyo_member[root] is None
                                               and self.vocabulary_count[root] == 1)

    def members(self):
        groups = collections.defaultdict(list)
        for c in sorted(self.parent):
            groups[self.find(c)].append(c)
        return list(groups.values())


def strip_outer_parentheses(text):
    if len(text) > 2 and text[0] == "(" and text[-1] == ")":
        return text[1:-1]
    return text


FOLD_GLYPH, FOLD_HALF_WIDTH, FOLD_ENCLOSED = range(3)


def direct_folds(emoji_keys):
    """Characters folded by rule rather than by Unihan: char -> (target, kind).

    FOLD_GLYPH (ゐ -> い) also varies inside units; FOLD_HALF_WIDTH gives units a
    spelling only when all their characters have one (ﾌｧｲ, never ファｲ);
    FOLD_ENCLOSED (㈱, ①, ⒉, ㍻) is only a spelling of its target's line.
    """
    folds = {c: (t, FOLD_GLYPH) for c, t in HISTORICAL_KANA.items()}
    for code in range(HALF_WIDTH_RANGE[0], HALF_WIDTH_RANGE[1] + 1):
        char = chr(code)
        target = HALF_WIDTH_SOUND_MARKS.get(char) or unicodedata.normalize("NFKC", char)
        folds[char] = (target, FOLD_HALF_WIDTH)
    for lo, hi in ENCLOSED_RANGES:
        for code in range(lo, hi + 1):
            char = chr(code)
            target = strip_outer_parentheses(unicodedata.normalize("NFKC", char))
            folds[char] = (target, FOLD_ENCLOSED)
    return {c: f for c, f in folds.items()
            if f[0] != c and valid_spelling(c, emoji_keys) and valid_spelling(f[0], emoji_keys)}


def valid_spelling(spelling, emoji_keys):
    return (0 < len(spelling) <= MAX_UNIT_LENGTH and not spelling.startswith("<")
            and "," not in spelling and all(can_be_entry(c, emoji_keys) for c in spelling))


class Folding:
    """Which spelling belongs to which line, and how corpus text is folded onto lines.

    glyph_variants: canonical char -> 1-character variants (Unihan, ゐ), also used in units;
    half_width: canonical char -> its half-width spelling (ｶ, ｶﾞ);
    extra_spellings: line -> further spellings (enclosed forms, か゛, か + U+3099, 葛 + VS);
    selectors: ideograph -> the variation selectors registered for it (葛: U+E0100 ...).
    """

    def __init__(self, glyph_variants, half_width, extra_spellings, tiers, selectors=None):
        self.glyph_variants = glyph_variants
        self.selectors = selectors or {}
        self.half_width = half_width
        self.extra_spellings = extra_spellings
        self.tiers = tiers
        self.canonical_chars = sorted(glyph_variants)
        spelling_line = {s: c for c, variants in glyph_variants.items() for s in variants}
        spelling_line.update({s: c for c, s in half_width.items()})
        spelling_line.update({s: line for line, spellings in extra_spellings.items()
                              for s in spellings})
        self.translation = str.maketrans({s: c for s, c in spelling_line.items() if len(s) == 1})
        self.multi_char = {s: c for s, c in spelling_line.items() if len(s) > 1}
        self.multi_char_pattern = multi_char_pattern(self.multi_char) if self.multi_char else None

    def fold(self, text):
        """Corpus text with every spelling replaced by its line's canonical form."""
        if self.multi_char_pattern:
            text = self.multi_char_pattern.sub(lambda m: self.multi_char[m.group(0)], text)
        return text.translate(self.translation)

    def forced_units(self):
        """Multi-character targets of enclosed forms (⒉ -> 2.) always get a unit line."""
        return sorted(line for line in self.extra_spellings if len(line) > 1)


def multi_char_pattern(spellings):
    # The lookahead on the second character keeps the long alternation off most positions.
    return re.compile("(?=.[%s])(?:%s)" % (
        re.escape("".join(sorted({s[1] for s in spellings}))),
        "|".join(re.escape(s) for s in sorted(spellings, key=lambda s: (-len(s), s)))), re.DOTALL)


def canonical_rank(char, tiers, joyo, char_counts):
    return (char not in joyo, tiers[char], -char_counts.get(char, 0), char)


def joyo_forms(unicode_data):
    """Joyo kanji and the forms the Joyo table accepts in their place (剥 for 剝): both may
    be a group's canonical form, the more frequent in the corpus winning."""
    return unicode_data.joyo | unicode_data.joyo_accepted


def ideograph_groups(tiers, unicode_data, char_counts, emoji_keys):
    """canonical character -> its glyph variants, from the Unihan links."""
    candidates = set(tiers) | {chr(c) for lo, hi in IDEOGRAPH_NFKC_RANGES
                               for c in range(lo, hi + 1)}
    groups = VariantGroups(set(tiers), unicode_data.joyo)
    joyo = unicode_data.joyo
    # Strongest kind first; within a kind, links to a Joyo kanji first, so 麪 joins 麺
    # before 麪 and 麵 can pair up and make a group that 麺 may no longer join.
    links = sorted(nfkc_ideograph_links(candidates) + unicode_data.links,
                   key=lambda k: (k[0], k[1] not in joyo and k[2] not in joyo, k[1], k[2]))
    for kind, a, b in links:
        groups.link(a, b, attach_only=kind in ATTACH_ONLY_LINKS)
    glyph_variants = {c: [] for c in tiers}
    joyo = joyo_forms(unicode_data)
    for members in groups.members():
        base = [c for c in members if c in tiers]
        if base:
            canonical = min(base, key=lambda c: canonical_rank(c, tiers, joyo, char_counts))
            glyph_variants[canonical] = [c for c in members
                                         if c != canonical and valid_spelling(c, emoji_keys)]
            for c in base:
                if c != canonical:
                    del glyph_variants[c]
    return glyph_variants


def build_folding(tiers, unicode_data, char_counts, emoji_keys):
    """Group characters into lines; see the module docstring for the rules."""
    folds = direct_folds(emoji_keys)
    tiers = {c: t for c, t in tiers.items() if c not in folds}
    glyph_variants = ideograph_groups(tiers, unicode_data, char_counts, emoji_keys)
    line_of = {v: c for c, variants in glyph_variants.items() for v in variants + [c]}
    half_width, extra_spellings = {}, collections.defaultdict(list)
    for char, (target, kind) in sorted(folds.items()):
        if char in line_of or not all(c in line_of for c in target):
            continue
        target = "".join(line_of[c] for c in target)
        if kind == FOLD_HALF_WIDTH and len(target) == 1 and target not in half_width:
            half_width[target] = char
        elif kind != FOLD_ENCLOSED and len(target) == 1:
            glyph_variants[target].append(char)
        elif kind == FOLD_ENCLOSED and target != ",":
            extra_spellings[target].append(char)
    add_kana_with_sound_marks(glyph_variants, half_width, extra_spellings)
    selectors = collections.defaultdict(list)
    for base, selector in unicode_data.sequences:
        if base in line_of and valid_spelling(base + selector, emoji_keys):
            selectors[base].append(selector)
    for line in sorted(glyph_variants):
        extra_spellings[line] += [s + v for s in [line] + sorted(glyph_variants[line])
                                  for v in selectors.get(s, ())]
    return Folding({c: sorted(v) for c, v in glyph_variants.items()}, half_width,
                   {line: sorted(set(s)) for line, s in extra_spellings.items()}, tiers,
                   dict(selectors))


def add_kana_with_sound_marks(lines, half_width, extra_spellings):
    """か゛ and か + U+3099 become spellings of が, ｶﾞ the half-width spelling of ガ."""
    for base in sorted(lines):
        if not "\u3041" <= base <= "\u30ff":
            continue
        for spacing, combining, half in (("\u309b", "\u3099", "\uff9e"),
                                         ("\u309c", "\u309a", "\uff9f")):
            composed = unicodedata.normalize("NFC", base + combining)
            if len(composed) != 1 or composed not in lines:
                continue
            extra_spellings[composed] += [base + spacing, base + combining]
            if base in half_width and composed not in half_width:
                half_width[composed] = half_width[base] + half


# ------------------------------------------------------------------ corpus

def corpus_files(corpus_dir, exclude):
    if not os.path.isdir(corpus_dir):
        cli.fail("corpus folder not found: %s" % corpus_dir)
    names = sorted(n for n in os.listdir(corpus_dir) if n.endswith(".txt"))
    stems = {n[:-4] for n in names}
    unknown = [e for e in exclude if e not in stems and e not in names]
    if unknown:
        cli.fail("--exclude %s: no such shard in %s" % (", ".join(unknown), corpus_dir))
    names = [n for n in names if n not in exclude and n[:-4] not in exclude]
    if not names:
        cli.fail("no .txt files to build from in %s" % corpus_dir)
    return [os.path.join(corpus_dir, n) for n in names]


def read_corpus(paths, progress):
    texts = []
    for path in progress(paths, desc="reading corpus", unit="file"):
        try:
            with open(path, encoding="utf-8") as f:
                texts.append(f.read())
        except UnicodeDecodeError as e:
            cli.fail("%s is not UTF-8 text (%s)" % (path, e.reason))
    return texts


# ------------------------------------------------------------------ units

# Units stay inside one script, like the released vocabulary's, except that kanji
# may be followed by hiragana (okurigana: 使用し, 行う). So "する場" or "ルの",
# which cross a word boundary, are never units.
SCRIPT_NONE, SCRIPT_KANJI, SCRIPT_HIRAGANA, SCRIPT_KATAKANA, SCRIPT_ALNUM, SCRIPT_SYMBOL = \
    range(6)
SCRIPT_PAIRS = {(SCRIPT_KANJI, SCRIPT_HIRAGANA)} | {(s, s) for s in range(1, 6)}
# Characters that lean on the one before (small kana, ー, iteration and sound marks): a
# unit neither starts with one nor is counted where one follows it, so units keep
# whole morae (ション, not オプシ + ョン).
DEPENDENT = frozenset("ぁぃぅぇぉっゃゅょゎゕゖァィゥェォッャュョヮヵヶーゝゞヽヾ゛゜\u3099\u309a"
                      + "".join(chr(c) for c in range(0x31F0, 0x3200)))
CODE_BITS = 21  # every code point fits in 21 bits, so a 3-gram fits in one int64


def script_of(char):
    if unicodedata.name(char, "").startswith("CJK ") and unicodedata.category(char) == "Lo" \
            or char in "々〆":
        return SCRIPT_KANJI
    if "\u3041" <= char <= "\u309f":
        return SCRIPT_HIRAGANA
    if ("\u30a1" <= char <= "\u30ff" and char != "・") or "\u31f0" <= char <= "\u31ff":
        return SCRIPT_KATAKANA
    if char.isascii() and char.isalnum():
        return SCRIPT_ALNUM
    if char.isascii() and char.isprintable() and not char.isspace():
        return SCRIPT_SYMBOL
    return SCRIPT_NONE


def gram_key(gram):
    key = 0
    for char in gram:
        key = (key << CODE_BITS) | ord(char)
    return key


def gram_of(key, length):
    mask = (1 << CODE_BITS) - 1
    return "".join(chr((key >> (CODE_BITS * (length - 1 - k))) & mask) for k in range(length))


class GramIndex:
    """The folded corpus as code points, with the 2- and 3-gram at every position.

    Characters that cannot be in a unit become SEPARATOR; a gram is usable when
    each pair of neighbouring characters is in SCRIPT_PAIRS and neither its
    first character nor the one after it is DEPENDENT.
    Grams are numbered once (np.unique), so each refinement pass is a few
    array operations.
    """

    def __init__(self, folded_texts, unit_chars):
        import numpy as np
        self.np = np
        codes = code_array(SEPARATOR.join(folded_texts))
        allowed = sorted(c for c in unit_chars if script_of(c) != SCRIPT_NONE)
        allowed_codes = np.array([ord(c) for c in allowed], dtype=np.int64)
        codes[~np.isin(codes, allowed_codes)] = ord(SEPARATOR)
        n = self.size = len(codes)
        codes = np.concatenate([codes, np.full(3, ord(SEPARATOR), dtype=np.int64)])
        script = np.zeros(len(codes), dtype=np.int64)
        known = codes != ord(SEPARATOR)
        script[known] = np.array([script_of(c) for c in allowed])[
            np.searchsorted(allowed_codes, codes[known])]
        pair_ok = np.zeros((SCRIPT_SYMBOL + 1, SCRIPT_SYMBOL + 1), dtype=bool)
        for a, b in SCRIPT_PAIRS:
            pair_ok[a, b] = True
        joins = pair_ok[script[:-1], script[1:]]  # may codes[i] and codes[i + 1] share a unit?
        free = ~np.isin(codes, [ord(c) for c in DEPENDENT])
        self.is_separator = ~known[:n]
        follows_separator = np.concatenate([[True], ~known[:n]])[:n]
        self.segment_starts = np.flatnonzero(known[:n] & follows_separator)
        self.usable = {2: joins[:n] & free[:n] & free[2:n + 2],
                       3: joins[:n] & joins[1:n + 1] & free[:n] & free[3:n + 3]}
        self.grams, self.gram_at = {}, {}
        for length, keys in ((2, (codes[:n] << CODE_BITS) | codes[1:n + 1]),
                             (3, (codes[:n] << 2 * CODE_BITS) | (codes[1:n + 1] << CODE_BITS)
                              | codes[2:n + 2])):
            self.grams[length], self.gram_at[length] = np.unique(keys, return_inverse=True)

    def counts(self, length, minimum):
        """{gram: count} of the usable grams seen at least `minimum` times."""
        return self.named(self.tally(length, self.usable[length]), length, minimum)

    def tally(self, length, mask, weights=None):
        return self.np.bincount(self.gram_at[length][mask], minlength=len(self.grams[length]),
                                weights=weights)

    def named(self, totals, length, minimum=1):
        np = self.np
        found = np.flatnonzero(totals >= minimum)
        return {gram_of(int(k), length): int(t)
                for k, t in zip(self.grams[length][found], totals[found])}

    def members(self, grams, length):
        """A mask over gram numbers: True for the given grams."""
        np = self.np
        mask = np.zeros(len(self.grams[length]), dtype=bool)
        keys = np.array(sorted(gram_key(g) for g in grams if len(g) == length), dtype=np.int64)
        where = np.searchsorted(self.grams[length], keys)
        found = where < len(mask)
        found[found] = self.grams[length][where[found]] == keys[found]
        mask[where[found]] = True
        return mask

    def token_starts(self, length):
        """Greedy token starts, following every segment's chain in parallel."""
        np = self.np
        following = np.arange(self.size) + length
        current, found = self.segment_starts, []
        while len(current):
            found.append(current)
            current = following[current]
            current = current[current < self.size]
            current = current[~self.is_separator[current]]
        return np.concatenate(found) if found else np.zeros(0, dtype=np.int64)

    def segment(self, units, pool):
        """Greedy longest match over `units`, as the encoder does with our id order.

        Returns (uses of each unit, estimated tokens each `pool` gram not in
        `units` would save: at every token start where it matches and is longer
        than the token taken, the difference in length).
        """
        np = self.np
        length = np.ones(self.size, dtype=np.int64)
        for n in (2, 3):  # units of enclosed forms (2.) need not be script-shaped
            length[self.members(units, n)[self.gram_at[n]]] = n
        starts = np.zeros(self.size, dtype=bool)
        starts[self.token_starts(length)] = True
        uses, missed = {}, {}
        for n in (2, 3):
            uses.update(self.named(self.tally(n, starts & (length == n)), n))
            wanted = self.members([g for g in pool if g not in units], n)[self.gram_at[n]]
            at = starts & (length < n) & self.usable[n] & wanted
            missed.update(self.named(self.tally(n, at, weights=(n - length)[at]), n))
        return uses, missed


def code_array(text):
    import numpy as np
    return np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32).astype(np.int64)


def character_counts(texts):
    """collections.Counter of the characters of `texts` (numpy, for 10+ MB corpora)."""
    import numpy as np
    counts = collections.Counter()
    for text in texts:
        codes, n = np.unique(code_array(text), return_counts=True)
        counts.update({chr(int(c)): int(k) for c, k in zip(codes, n)})
    return counts


def tokens_saved(uses, units):
    """Tokens each unit saves over its next-shorter fallback (its prefix unit or characters)."""
    return {u: n * (1 if len(u) == 3 and u[:2] in units else len(u) - 1) for u, n in uses.items()}


def is_kanji_unit(gram):
    """True for a unit made only of kanji (熟語: 日本, 設定, 日本語; 々 and 〆 count)."""
    return all(script_of(c) == SCRIPT_KANJI for c in gram)


def select_units(index, candidates, count, forced, progress, kanji_share=0.0):
    """The `count` units that save the most tokens on the corpus (see module docstring),
    at least int(kanji_share * count) of them all-kanji (fewer only when the corpus has
    fewer all-kanji candidates)."""
    forced = set(forced[:count])
    budget = count - len(forced)
    reserved = min(budget, max(0, int(kanji_share * count)
                               - sum(1 for g in forced if is_kanji_unit(g))))

    def order(grams, score):
        return sorted(grams, key=lambda g: (-score(g), g))

    def pick(grams, score):
        """The `reserved` best all-kanji grams, then the best `budget` - that of the rest."""
        kanji = order((g for g in grams if is_kanji_unit(g)), score)[:reserved]
        taken = set(kanji)
        return kanji + order((g for g in grams if g not in taken), score)[:budget - len(kanji)]

    first_score = lambda g: candidates[g] * (len(g) - 1)  # noqa: E731
    ranked = pick([g for g in candidates if g not in forced], first_score)
    if len(ranked) < budget:
        cli.fail("the corpus yields only %d units of 2-3 characters, %d needed for this size; "
                 "use a larger corpus or a smaller --size" % (len(ranked), budget))
    rest = order((g for g in candidates if g not in forced), first_score)
    kanji = [g for g in rest if is_kanji_unit(g)]
    pool = (set(rest[:budget * CANDIDATE_POOL_FACTOR])
            | set(kanji[:reserved * CANDIDATE_POOL_FACTOR]))
    chosen = set(ranked)
    for _ in progress(range(REFINE_PASSES), desc="choosing units", unit="pass"):
        uses, missed = index.segment(chosen | forced, pool)
        score = tokens_saved(uses, chosen | forced)
        score.update(missed)
        new = set(pick(pool, lambda g: score.get(g, 0)))
        if new == chosen:
            break
        chosen = new
    units = chosen | forced
    uses, _ = index.segment(units, ())
    return units, uses


def order_lines(lines, weight, spellings_of, spelling_line):
    """Lines sorted by weight, each line moved up before every line its spellings extend.

    The encoder picks the lowest id among the 1-3 character prefixes at a
    position; placing a line before the lines of its spellings' prefixes makes
    it pick the longest one.
    """
    precedes = {line: set() for line in lines}
    for line in lines:
        for s in spellings_of(line):
            for k in range(1, len(s)):
                other = spelling_line.get(s[:k])
                if other in precedes and other != line:
                    precedes[line].add(other)
    priority, height = {}, {}

    def visit(line, path=()):
        if line in priority:
            return
        if line in path:
            raise RuntimeError("circular prefix order through %r" % (line,))
        for other in precedes[line]:
            visit(other, path + (line,))
        priority[line] = max([weight(line)] + [priority[o] for o in precedes[line]])
        height[line] = max([0] + [height[o] + 1 for o in precedes[line]])

    for line in lines:
        visit(line)
    return sorted(lines, key=lambda l: (-priority[l], -height[l], -weight(l), l))


# ------------------------------------------------------------------ assembling

def unit_spellings(unit, folding):
    """The unit, products of its characters' glyph variants (fewest changes first), its
    all-half-width spelling (when every character has one), then for a 2-character unit
    each product with one variation sequence (日 + VS + 本: three code points, the most
    the encoder looks at), and enclosed forms."""
    options = [[c] + folding.glyph_variants.get(c, []) for c in unit]
    products = sorted(itertools.product(*[range(len(o)) for o in options]),
                      key=lambda p: (sum(1 for i in p if i), p))
    spellings = ["".join(o[i] for o, i in zip(options, p)) for p in products]
    half = "".join(folding.half_width.get(c, "\0") for c in unit)
    if "\0" not in half and len(half) <= MAX_UNIT_LENGTH:
        spellings.append(half)
    if len(unit) == 2:
        selectors = folding.selectors
        spellings += [s[:k + 1] + v + s[k + 1:] for s in spellings[:len(products)]
                      for k in range(2) for v in selectors.get(s[k], ())]
    return spellings[:MAX_SPELLINGS_PER_UNIT] + folding.extra_spellings.get(unit, [])


def char_spellings(char, folding):
    half = [folding.half_width[char]] if char in folding.half_width else []
    return [char] + folding.glyph_variants[char] + half + folding.extra_spellings.get(char, [])


def fixed_size(folding):
    """Ids every vocabulary has: core characters, enclosed-form units and the tail."""
    core = sum(1 for c in folding.canonical_chars if folding.tiers[c] == TIER_CORE)
    return core + len(folding.forced_units()) + len(TAIL)


def check_size(size, folding):
    if size < fixed_size(folding):
        cli.fail("--size %d is below this vocabulary's fixed part (%d ids: core characters, "
                 "enclosed-form units and the %d tail tokens)" % (size, fixed_size(folding),
                                                                  len(TAIL)))


def folding_without_corpus(unicode_data):
    """The folding an empty corpus gives; the core characters do not depend on the corpus."""
    emoji_keys = single_code_point_emoji(build_emoji_table(unicode_data.emoji))
    tiers = character_tiers({}, unicode_data.joyo, emoji_keys)
    return build_folding(tiers, unicode_data, {}, emoji_keys)


def single_code_point_emoji(emoji_table):
    return frozenset(k for k in emoji_table["emoji"] if len(k) == 1)


def choose_characters(folding, char_counts, size):
    """The canonical characters that get a line, and how many ids remain for units."""
    budget = size - len(TAIL)
    tiers = folding.tiers
    core = [c for c in folding.canonical_chars if tiers[c] == TIER_CORE]
    optional = sorted((c for c in folding.canonical_chars if tiers[c] != TIER_CORE),
                      key=lambda c: (-char_counts.get(c, 0), tiers[c], c))
    check_size(size, folding)
    extra = max(0, min(len(optional), int(budget * CHARACTER_SHARE) - len(core)))
    return core + optional[:extra], optional[extra:], budget - len(core) - extra


def build_vocabulary(texts, size, unicode_data, progress=None, kanji_share=KANJI_UNIT_SHARE):
    """(vocabulary lines, emoji table) for corpus `texts` and a vocabulary `size`;
    `kanji_share` of the unit ids are reserved for all-kanji units."""
    progress = progress or (lambda it, **kw: it)
    emoji_table = build_emoji_table(unicode_data.emoji)
    emoji_keys = single_code_point_emoji(emoji_table)
    raw_counts = character_counts(texts)
    tiers = character_tiers(raw_counts, unicode_data.joyo, emoji_keys)
    folding = build_folding(tiers, unicode_data, raw_counts, emoji_keys)
    folded = [folding.fold(t) for t in progress(texts, desc="folding variants", unit="file")]
    char_counts = character_counts(folded)
    chars, spare_chars, unit_count = choose_characters(folding, char_counts, size)
    unit_chars = set(chars) - NOT_IN_UNITS
    index = GramIndex(folded, unit_chars)
    candidates = {}
    for length in progress((2, 3), desc="counting substrings", unit="length"):
        candidates.update(index.counts(length, MIN_UNIT_COUNT))
    forced = folding.forced_units()
    available = len(set(candidates) | set(forced))
    if available < unit_count:  # a small corpus: give the spare ids to characters
        more = min(len(spare_chars), unit_count - available)
        chars, unit_count = chars + spare_chars[:more], unit_count - more
    units, uses = select_units(index, candidates, unit_count, forced, progress, kanji_share)
    return assemble(units, uses, chars, char_counts, folding), emoji_table


def assemble(units, uses, chars, char_counts, folding):
    """Vocabulary lines: units, then characters, then the tail (see order_lines)."""
    spellings = {u: unit_spellings(u, folding) for u in units}
    spellings.update({c: char_spellings(c, folding) for c in chars})
    spelling_line = {}
    for line in sorted(chars) + sorted(units, key=lambda u: (len(u), u)):
        if line in spelling_line:  # folding makes this impossible; never write a broken file
            raise RuntimeError("unit %r is already a spelling of line %r"
                               % (line, spelling_line[line]))
        kept = []
        for s in spellings[line]:
            if s not in spelling_line:
                spelling_line[s] = line
                kept.append(s)
        spellings[line] = kept
    unit_order = order_lines(sorted(units), lambda u: uses.get(u, 0), spellings.get,
                             spelling_line)
    char_order = order_lines(sorted(chars), lambda c: char_counts.get(c, 0), spellings.get,
                             spelling_line)
    lines = [line if line == "," else ",".join(spellings[line])
             for line in unit_order + char_order]
    return lines + TAIL


# ------------------------------------------------------------------ checking

def parse_vocabulary_lines(lines):
    return [[line] if line == "," else line.split(",") for line in lines]


def check_vocabulary(lines, size):
    """Raise ValueError naming the first problem: size, tail, duplicates, id order."""
    if len(lines) != size:
        raise ValueError("vocabulary has %d lines, expected %d" % (len(lines), size))
    if lines[-len(TAIL):] != TAIL:
        raise ValueError("the last %d lines are not the released tail layout" % len(TAIL))
    line_of = {}
    for number, spellings in enumerate(parse_vocabulary_lines(lines)):
        for s in spellings:
            if not s:
                raise ValueError("line %d has an empty spelling" % number)
            if s in line_of:
                raise ValueError("spelling %r is on lines %d and %d" % (s, line_of[s], number))
            if number < len(lines) - len(TAIL) and (len(s) > MAX_UNIT_LENGTH or
                                                    (s.startswith("<") and s != "<")):
                raise ValueError("line %d: spelling %r cannot be matched" % (number, s))
            line_of[s] = number
    for s, number in line_of.items():
        for k in range(1, len(s)):
            if line_of.get(s[:k], len(lines)) < number and not s.startswith("<"):
                raise ValueError("line %d: %r is shadowed by its prefix %r on line %d"
                                 % (number, s, s[:k], line_of[s[:k]]))


# ------------------------------------------------------------------ command line

def build_parser():
    parser = cli.ArgumentParser(
        description="Build a Japanese SWE vocabulary (GPTSAN format) and emoji table from a "
                    "folder of UTF-8 text, Debian's unicode-data and kanjidic-xml. "
                    "Standard sizes: %s."
                    % ", ".join(str(s) for s in STANDARD_SIZES))
    parser.add_argument("--corpus", default=os.path.join("data", "corpus"), metavar="DIR",
                        help="folder of UTF-8 .txt files to count units in")
    parser.add_argument("--exclude", nargs="*", default=[], metavar="SHARD",
                        help="shards of --corpus to leave out (name with or without .txt), "
                             "e.g. held-out text")
    parser.add_argument("--size", type=int, default=36000,
                        help="number of ids (standard: %s)"
                             % "/".join(str(s) for s in STANDARD_SIZES))
    parser.add_argument("--output", default="ja-swe36k.txt", help="vocabulary file to write")
    parser.add_argument("--emoji_output", default="emoji.json", help="emoji table to write")
    parser.add_argument("--unicode_dir", default="/usr/share/unicode",
                        help="Unihan_*.txt(.bz2) and emoji/emoji-test.txt (Debian unicode-data)")
    parser.add_argument("--kanjidic", default=KANJIDIC_PATH, metavar="PATH",
                        help="KANJIDIC2 XML, plain or .gz, for Japanese variant kanji "
                             "(Debian kanjidic-xml; default %(default)s)")
    parser.add_argument("--ivs_fonts", nargs="*", default=list(IVS_FONT_PATHS), metavar="FONT",
                        help="OpenType fonts (.ttf/.otf/.ttc) whose registered ideographic "
                             "variation sequences (葛 + U+E0100) become spellings of their "
                             "character; none to leave them out (Debian fonts-noto-cjk and "
                             "fonts-ipamj-mincho; default: %(default)s)")
    parser.add_argument("--kanji_unit_share", type=float, default=KANJI_UNIT_SHARE,
                        metavar="SHARE",
                        help="share of the unit ids (2-3 character lines) reserved for the "
                             "most frequent all-kanji units, 0 to 1 (default %(default)s)")
    parser.add_argument("--force", action="store_true", help="overwrite existing outputs")
    return parser


def main(args):
    from tqdm import tqdm

    if os.path.abspath(args.output) == os.path.abspath(args.emoji_output):
        cli.fail("--output and --emoji_output are the same file")
    for path in (args.output, args.emoji_output):
        if os.path.exists(path) and not args.force:
            cli.fail("%s exists; pass --force to overwrite it" % path)
        if not os.path.isdir(os.path.dirname(os.path.abspath(path))):
            cli.fail("output folder does not exist: %s" % os.path.dirname(os.path.abspath(path)))
    if not 0 <= args.kanji_unit_share <= 1:
        cli.fail("--kanji_unit_share must be between 0 and 1, not %s" % args.kanji_unit_share)
    unicode_data = UnicodeData.load(args.unicode_dir, args.kanjidic, args.ivs_fonts)
    check_size(args.size, folding_without_corpus(unicode_data))  # before the slow part
    texts = read_corpus(corpus_files(args.corpus, args.exclude), tqdm)
    lines, emoji_table = build_vocabulary(texts, args.size, unicode_data, tqdm,
                                          args.kanji_unit_share)
    check_vocabulary(lines, args.size)
    write_text_atomic(args.output, "\n".join(lines))
    write_text_atomic(args.emoji_output,
                      json.dumps(emoji_table, ensure_ascii=False, indent=1) + "\n")
    variants = sum(len(s) - 1 for s in parse_vocabulary_lines(lines))
    print("wrote %s (%d ids, %d variant spellings) and %s (%d emoji)"
          % (args.output, len(lines), variants, args.emoji_output, len(emoji_table["emoji"])))


if __name__ == "__main__":
    cli.run(main, build_parser())
