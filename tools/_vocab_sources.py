"""The data sources of tools/build_vocab.py: Unihan and the other Unicode data
files (Debian unicode-data), KANJIDIC2's variant kanji and the variation
sequences registered in font cmaps, read into links between characters.

Everything here reads files; the choice of characters and units, which uses
these links, stays in build_vocab.py.
"""
import bz2
import gzip
import os
import re
import struct
import unicodedata
import xml.etree.ElementTree as ElementTree

from model.errors import UserError

INSTALL_HINT = "install it with `apt-get install unicode-data` or pass --unicode_dir"
KANJIDIC_PATH = "/usr/share/edict/kanjidic2.xml.gz"  # Debian package kanjidic-xml
KANJIDIC_HINT = "install it with `apt-get install kanjidic-xml` or pass --kanjidic"
# Fonts whose cmap lists registered ideographic variation sequences (IVD): Adobe-Japan1
# (Debian fonts-noto-cjk) and Moji_Joho, the Japanese government's itaiji set
# (fonts-ipamj-mincho).
IVS_FONT_PATHS = ("/usr/share/fonts/opentype/noto/NotoSerifCJK-Regular.ttc",
                  "/usr/share/fonts/truetype/ipamj/ipamjm.ttf")
IVS_FONT_HINT = ("install them with `apt-get install fonts-noto-cjk fonts-ipamj-mincho` or "
                 "pass --ivs_fonts")
SEQUENCES_FILE = "StandardizedVariants.txt"
SELECTOR_RANGES = ((0xFE00, 0xFE0F), (0xE0100, 0xE01EF))

# Unihan and KANJIDIC2 links, strongest first: a character already in a group with a
# Joyo kanji cannot be pulled into another one by a weaker link (裡 joins 裏 as a
# semantic variant before the Chinese simplification 里 -> 裡 is considered).
# KANJIDIC2's variants come from Japanese dictionaries (總 -> 総), so they rank above
# Unihan's semantic variants, which are mostly Chinese; below the glyph identities.
(LINK_COMPATIBILITY, LINK_JINMEIYO, LINK_Z, LINK_KANJIDIC, LINK_SEMANTIC, LINK_TRADITIONAL,
 LINK_SPECIALIZED, LINK_SIMPLIFIED) = range(8)
UNIHAN_LINK_FIELDS = {"kCompatibilityVariant": LINK_COMPATIBILITY,
                      "kTraditionalVariant": LINK_TRADITIONAL, "kZVariant": LINK_Z,
                      "kSemanticVariant": LINK_SEMANTIC,
                      "kSpecializedSemanticVariant": LINK_SPECIALIZED,
                      "kSimplifiedVariant": LINK_SIMPLIFIED}
# Weak links only attach characters outside the vocabulary's character set (a
# Chinese simplified form such as 还 joins 還); they never merge two characters
# that Japanese text uses (来 and 耒 are only "sometimes" the same word).
ATTACH_ONLY_LINKS = (LINK_SPECIALIZED, LINK_SIMPLIFIED)
UNIHAN_FILES = ("Unihan_Variants.txt", "Unihan_OtherMappings.txt", "Unihan_IRGSources.txt")
RADICALS_FILE = "EquivalentUnifiedIdeograph.txt"  # CJK radicals -> unified ideographs (⻑ -> 長)


def decodable(data, codec):
    try:
        return data.decode(codec)
    except UnicodeDecodeError:
        return None


def in_ranges(char, ranges):
    return any(lo <= ord(char) <= hi for lo, hi in ranges)



def unicode_data_path(unicode_dir, name):
    """The plain or .bz2 copy of a Unicode data file, or a one-line UserError."""
    for candidate in (name, name + ".bz2"):
        path = os.path.join(unicode_dir, candidate)
        if os.path.isfile(path):
            return path
    raise UserError("Unicode data file %s(.bz2) not found in %s; %s" % (name, unicode_dir, INSTALL_HINT))


def read_text_lines(path):
    opener = bz2.open if path.endswith(".bz2") else open
    with opener(path, "rt", encoding="utf-8") as f:
        return f.read().splitlines()


def unihan_targets(value):
    """[(character, source tags)] of a value such as 'U+5D0E<kMorohashi:Z U+5D5C'."""
    targets = []
    for token in value.split():
        match = re.match(r"U\+([0-9A-F]{4,6})(?:<(.*))?$", token)
        if match:
            targets.append((chr(int(match.group(1), 16)), match.group(2) or ""))
    return targets


def link_kind(field, sources):
    """A semantic variant that a dictionary marks ':Z' is a Z-variant (崎/﨑)."""
    if field == "kSemanticVariant" and any(s.endswith(":Z") for s in sources.split(",")):
        return LINK_Z
    return UNIHAN_LINK_FIELDS[field]


def unihan_records(lines, fields):
    for line in lines:
        if not line.startswith("U+"):
            continue
        parts = line.split("\t")
        if len(parts) >= 3 and parts[1] in fields:
            yield chr(int(parts[0][2:], 16)), parts[1], parts[2]


class UnicodeData:
    """The parts of Unihan, emoji-test.txt, KANJIDIC2 and the registered variation
    sequences (StandardizedVariants.txt, font cmaps) the builder uses."""

    def __init__(self, joyo, links, emoji, joyo_accepted=(), sequences=()):
        self.joyo = frozenset(joyo)
        self.joyo_accepted = frozenset(joyo_accepted)  # 剥: the Joyo table allows it for 剝
        self.links = sorted(set(links))   # (link kind, a, b), strongest kind first
        self.emoji = emoji                # [(sequence, group, subgroup)] in file order
        self.sequences = sorted(set(sequences))  # (ideograph, variation selector)

    @classmethod
    def load(cls, unicode_dir, kanjidic_path=None, ivs_fonts=()):
        paths = [unicode_data_path(unicode_dir, name) for name in UNIHAN_FILES]
        emoji_path = unicode_data_path(os.path.join(unicode_dir, "emoji"), "emoji-test.txt") \
            if os.path.isdir(os.path.join(unicode_dir, "emoji")) \
            else unicode_data_path(unicode_dir, "emoji-test.txt")
        if kanjidic_path is not None and not os.path.isfile(kanjidic_path):
            raise UserError("KANJIDIC2 file %s not found; %s" % (kanjidic_path, KANJIDIC_HINT))
        for path in ivs_fonts:
            if not os.path.isfile(path):
                raise UserError("font %s not found; %s" % (path, IVS_FONT_HINT))
        joyo, accepted, links = set(), set(), []
        fields = set(UNIHAN_LINK_FIELDS) | {"kJoyoKanji", "kJinmeiyoKanji"}
        for path in paths:
            for char, field, value in unihan_records(read_text_lines(path), fields):
                if field == "kJoyoKanji":
                    if not value.startswith("U+"):
                        joyo.add(char)
                    else:  # "U+525D" on 剥: the Joyo table lists char in place of 剝
                        accepted.add(char)
                        links += [(LINK_JINMEIYO, char, other)
                                  for other, _ in unihan_targets(value)]
                elif field == "kJinmeiyoKanji":  # "2010:U+5FDC": char is the old form of 応
                    links += [(LINK_JINMEIYO, char, chr(int(h, 16)))
                              for h in re.findall(r":U\+([0-9A-F]{4,6})", value)]
                else:
                    links += [(link_kind(field, sources), char, other)
                              for other, sources in unihan_targets(value) if other != char]
        links = [link for link in links if link[0] != LINK_TRADITIONAL
                 or (link[1] in joyo and link[2] not in joyo)]
        links += radical_links(read_text_lines(unicode_data_path(unicode_dir, RADICALS_FILE)))
        if kanjidic_path is not None:
            links += kanjidic_links(kanjidic_path)
        sequences = standardized_sequences(
            read_text_lines(unicode_data_path(unicode_dir, SEQUENCES_FILE)))
        for path in ivs_fonts:
            sequences |= font_sequences(path)
        return cls(joyo, links, parse_emoji_test(read_text_lines(emoji_path)), accepted,
                   {(base, selector) for base, selector in sequences if is_ideograph(base)})


def jis_character(standard, kuten):
    """The character at a KANJIDIC2 kuten code ("1-16-01": plane-row-cell; the plane,
    always 1 outside jis213, may be left out), or None when the code does not name a
    single character of that standard.

    JIS X 0208 and JIS X 0212 go through euc_jp (0212 behind the 0x8F prefix), JIS X
    0213 through euc_jis_2004 (plane 2 behind 0x8F). A jis213 code at a position JIS
    X 0208 already assigns is refused: KANJIDIC2 writes those as jis208, and the
    one such entry is a slip (叱 names 1-39-50, which is 拝, for 1-47-52, 𠮟).
    """
    parts = kuten.strip().split("-")
    if not all(p.isdigit() for p in parts) or len(parts) not in (2, 3):
        return None
    plane, row, cell = [int(p) for p in ([1] if len(parts) == 2 else []) + parts]
    if not (1 <= row <= 94 and 1 <= cell <= 94 and plane in ((1, 2) if standard == "jis213"
                                                              else (1,))):
        return None
    code = bytes([0xA0 + row, 0xA0 + cell])
    if standard == "jis208":
        char = decodable(code, "euc_jp")
    elif standard == "jis212":
        char = decodable(b"\x8f" + code, "euc_jp")
    elif plane == 1 and decodable(code, "euc_jp"):
        return None
    else:
        char = decodable(code if plane == 1 else b"\x8f" + code, "euc_jis_2004")
    return char if char and len(char) == 1 else None


def kanjidic_variant(var_type, value):
    """The character a KANJIDIC2 <variant> names, or None for index numbers.

    jis208/jis212/jis213 give a kuten code and ucs a code point; the dictionary
    index types (nelson_c, deroo, njecd, oneill, s_h) give an entry number of a
    printed dictionary, which does not name one character, so they are not used.
    """
    if var_type == "ucs":
        return chr(int(value, 16)) if re.fullmatch(r"[0-9A-Fa-f]{4,6}", value.strip()) \
            and int(value, 16) <= 0x10FFFF else None
    if var_type in ("jis208", "jis212", "jis213"):
        return jis_character(var_type, value)
    return None


def kanjidic_links(path):
    """(LINK_KANJIDIC, kanji, variant) for every resolvable <variant> of KANJIDIC2 XML
    (plain or .gz; Debian's kanjidic-xml ships /usr/share/edict/kanjidic2.xml.gz)."""
    opener = gzip.open if path.endswith(".gz") else open
    links = []
    try:
        with opener(path, "rb") as f:
            for _, element in ElementTree.iterparse(f):
                if element.tag != "character":
                    continue
                literal = element.findtext("literal") or ""
                for variant in element.iter("variant"):
                    other = kanjidic_variant(variant.get("var_type", ""), variant.text or "")
                    if len(literal) == 1 and other and other != literal:
                        links.append((LINK_KANJIDIC, literal, other))
                element.clear()
    except (OSError, EOFError, ElementTree.ParseError) as e:
        raise UserError("cannot read KANJIDIC2 XML %s (%s); %s" % (path, e, KANJIDIC_HINT))
    return links


def radical_links(lines):
    """EquivalentUnifiedIdeograph.txt lines ("2E8C..2E8D ; 5C0F") as compatibility links."""
    links = []
    for line in lines:
        fields = line.split("#")[0].split(";")
        if len(fields) == 2:
            first, _, last = fields[0].strip().partition("..")
            target = chr(int(fields[1], 16))
            links += [(LINK_COMPATIBILITY, chr(c), target)
                      for c in range(int(first, 16), int(last or first, 16) + 1)]
    return links


def is_ideograph(char):
    return unicodedata.name(char, "").startswith(("CJK UNIFIED IDEOGRAPH-",
                                                   "CJK COMPATIBILITY IDEOGRAPH-"))


def standardized_sequences(lines):
    """(base, selector) of StandardizedVariants.txt's CJK compatibility ideograph lines
    ("862D FE00; CJK COMPATIBILITY IDEOGRAPH-F91F;"): 蘭 + VS1 is the glyph of U+F91F,
    which NFKC folds onto 蘭, so the sequence is a spelling of 蘭's line."""
    found = set()
    for line in lines:
        fields = line.split("#")[0].split(";")
        codes = fields[0].split()
        if len(fields) >= 2 and len(codes) == 2 and "CJK COMPATIBILITY IDEOGRAPH" in fields[1]:
            found.add((chr(int(codes[0], 16)), chr(int(codes[1], 16))))
    return found


def font_sequences(path):
    """(base, selector) of every variation sequence in the format 14 cmap subtables of an
    OpenType font or collection (.ttf, .otf, .ttc), every face.

    A Japanese font registers the ideographic variation sequences of its IVD collection
    there (葛 + U+E0100 ...): glyph variants of one character, so each is a spelling of
    that character's line. Only the sequence list is read, not the glyphs.
    """
    try:
        with open(path, "rb") as f:
            data = f.read()
        found = set()
        for face in font_faces(data):
            cmap = font_table(data, face, b"cmap")
            if cmap is None:
                continue
            for offset in read_struct(data, cmap + 4, ">" + "4xI" * read_struct(
                    data, cmap + 2, ">H")[0]):
                if read_struct(data, cmap + offset, ">H")[0] == 14:
                    found |= cmap14_sequences(data, cmap + offset)
        return found
    except OSError as e:
        raise UserError("cannot read font %s (%s); %s" % (path, e.strerror or e, IVS_FONT_HINT))
    except (struct.error, ValueError, IndexError):
        raise UserError("%s is not an OpenType font with a readable cmap; %s" % (path, IVS_FONT_HINT))


def read_struct(data, offset, layout):
    if offset < 0 or offset + struct.calcsize(layout) > len(data):
        raise ValueError("offset %d past the end" % offset)
    return struct.unpack_from(layout, data, offset)


def font_faces(data):
    """Offsets of the table directories: one for a font, one per face for a collection."""
    if data[:4] == b"ttcf":
        count = read_struct(data, 8, ">I")[0]
        return read_struct(data, 12, ">%dI" % count)
    return (0,)


def font_table(data, face, tag):
    for i in range(read_struct(data, face + 4, ">H")[0]):
        name, _, offset, _ = read_struct(data, face + 12 + 16 * i, ">4sIII")
        if name == tag:
            return offset
    return None


def uint24(data, offset):
    return int.from_bytes(read_struct(data, offset, "3s")[0], "big")


def cmap14_sequences(data, table):
    """(base, selector) pairs of one cmap format 14 subtable: per selector a default-UVS
    list of code point ranges and a non-default-UVS list of code points."""
    found = set()
    for record in range(read_struct(data, table + 6, ">I")[0]):
        at = table + 10 + 11 * record
        selector = chr(uint24(data, at))
        default, non_default = read_struct(data, at + 3, ">II")
        if default:
            for i in range(read_struct(data, table + default, ">I")[0]):
                start = uint24(data, table + default + 4 + 4 * i)
                extra = read_struct(data, table + default + 7 + 4 * i, "B")[0]
                found.update((chr(c), selector) for c in range(start, start + extra + 1))
        if non_default:
            for i in range(read_struct(data, table + non_default, ">I")[0]):
                found.add((chr(uint24(data, table + non_default + 4 + 5 * i)), selector))
    return {(base, selector) for base, selector in found if in_ranges(selector, SELECTOR_RANGES)}


def parse_emoji_test(lines):
    """[(sequence, group, subgroup)] for every fully-qualified emoji, in file order."""
    group = subgroup = ""
    emoji = []
    for line in lines:
        if line.startswith("# group:"):
            group = line.split(":", 1)[1].strip()
        elif line.startswith("# subgroup:"):
            subgroup = line.split(":", 1)[1].strip()
        elif not line.startswith("#") and ";" in line:
            points, status = line.split("#")[0].split(";")
            if status.strip() == "fully-qualified":
                emoji.append(("".join(chr(int(p, 16)) for p in points.split()), group, subgroup))
    return emoji
