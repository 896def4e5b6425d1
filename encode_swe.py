"""GPTSAN's Japanese SWE encoder: text <-> token ids, id for id the same as the
released GPTSAN encoder, vectorised with numpy (over 20x the straightforward
implementation kept in bench/baseline_encoder.py; see bench/bench_encoder.py).

API
---
  enc = load_encoder(vocab_file=None, emoji_file=None)  # shared, cached per files
  enc = SWEEncoder(vocab_file=DEFAULT_VOCAB, emoji_file=DEFAULT_EMOJI)
  enc.encode(text, clean=False) -> [ids]      enc.encode_batch(texts, clean) -> [[ids]]
  enc.decode(ids, breakline="\n") -> str       enc.clean_text(text) -> str
  enc.token_to_id(spelling), enc.id_to_token(id), enc.is_special(id), len(enc)
  enc.startoftext ... enc.endoftext            # the special ids, V-7 ... V-1
  encode_files(paths, clean, num_process)      # (path, ids) per file, in parallel
encode_batch gives the same ids as encode, faster for many short texts (one
call per document costs ~0.1 ms of fixed overhead).

The file formats, the encoding rules and what decode(encode(x)) normalises are
specified in the README ("The encoder in detail").

How it is fast: rule 4 at a position depends only on the next three characters,
so every position's candidate is found at once with table lookups over the
code points (a hash table for pairs and triples), and the greedy walk only has
to be followed where tokens overlap (_greedy_path).  <SP>, <BR> and <TAB> are
written as one reserved character each, when the vocabulary and emoji table
make that give the same ids (checked on loading).  Emoji keys and the clean
patterns are tried only where they can match.

Command line (model/encode_cli.py)
----------------------------------
  python encode_swe.py encode [FILES] [--clean] [--num_process N] [--output F]
  python encode_swe.py decode [FILES] [--breakline S]
  python encode_swe.py count  [FILES] [--clean]
Standard input when no FILES.  encode writes one JSON line per input,
{"file": NAME, "ids": [...]}; see `python encode_swe.py --help`.
"""
import functools
import hashlib
import itertools
import json
import os
import re
import sys

import numpy as np

from model.tokens import BYTE_TOKENS, NAMED_TOKENS, SPECIAL_TOKENS  # noqa: F401 (public)

_REPO = os.path.dirname(os.path.abspath(__file__))
DEFAULT_VOCAB = os.path.join(_REPO, "ja-swe36k.txt")
DEFAULT_EMOJI = os.path.join(_REPO, "emoji.json")

SPECIAL_NAMES = ("startoftext", "inputmask", "separator", "nottoken",
                 "bagoftoken", "segmenter", "endoftext")

# The released vocabulary repeats six spellings on two lines each (きぃ, キィ, ゐ,
# ゑ, ヴ, 〇); it is accepted with the released encoder's resolution (later line wins).
RELEASED_VOCAB_SHA256 = "039a696c4f53e7902060f9240ecb9ff10e6e831ca6429faff1eaa4f2a16c45dd"

WHITESPACE_AND_DASHES = ((" ", "<SP>"), ("\u3000", "<SP>"), ("\r\n", "<BR>"), ("\n", "<BR>"),
                         ("\r", "<BR>"), ("\t", "<TAB>"), ("—", "ー"), ("−", "ー"))
DECODED_FORMS = {"<SP>": " ", "<BR>": "\n", "<TAB>": "\t", "<BLOCK>": "▀", "<KIGOU>": "ǀ",
                 "<U2000U2BFF>": "‖"}  # <BR>: the caller's `breakline`, "\n" by default
# UTF-8 C2A1-C2BF, C780-C783 and CAB9-CDA2; E28080-E2B07F.
KIGOU_RANGES = ((0xA1, 0xBF), (0x1C0, 0x1C3), (0x2B9, 0x362))
U2000U2BFF_RANGE = (0x2000, 0x2BFF)
BLOCK_RANGE = (0x2500, 0x259F)  # box drawing and block elements, the released table exactly

_WEEKDAY = r"\(日\)|\(月\)|\(火\)|\(水\)|\(木\)|\(金\)|\(土\)|㈰|㈪|㈫|㈬|㈭|㈮|㈯"
_NUMBER = r"(0|[1-9]\d*|[1-9]\d{0,2}(,\d{3})+)"
_ERAS = ("明治", "大正", "昭和", "平成", "令和", "㍾", "㍽", "㍼", "㍻", "\u32ff")
_DATE_CHARS = "年月日:時分()火水木金土㈰㈪㈫㈬㈭㈮㈯"
_CURRENCIES = ("円", "ドル", "ユーロ")
_ASCII_ALNUM = "".join(map(chr, itertools.chain(range(48, 58), range(65, 91), range(97, 123))))
# The released encoder's clean=True substitutions, in order.  Besides the regex,
# each names every character a match can consume ("\d" meaning Unicode digits)
# and literals one of which every match contains (None: found with numpy).
CLEAN_STEPS = (
    (r"(https?|ftp)(:\/\/[-_\.!~*\'()a-zA-Z0-9;\/?:\@&=\+$,%#]+)", "<URL>",
     _ASCII_ALNUM + "-_.!~*'();/?:@&=+$,%#", False, ("://",)),
    (r"[A-Za-z0-9\._+]*@[\-_0-9A-Za-z]+(\.[A-Za-z]+)*", "<EMAIL>",
     _ASCII_ALNUM + "._+@-", False, ("@",)),
    (r"[\(]{0,1}[0-9]{2,4}[\)\-\(]{0,1}[0-9]{2,4}[\)\-]{0,1}[0-9]{3,4}", "<TEL>",
     "0123456789()-", False, None),
    (r"([12]\d{3}[/\-年])*(0?[1-9]|1[0-2])[/\-月]((0?[1-9]|[12][0-9]|3[01])日?)*"
     r"(\d{1,2}|:|\d{1,2}時|\d{1,2}分|" + _WEEKDAY + r")*", "<DATE>",
     "/-" + _DATE_CHARS, True, None),
    (r"(" + "|".join(_ERAS) + r")\d{1,2}年(0?[1-9]|1[0-2])月(0?[1-9]|[12][0-9]|3[01])日"
     r"(\d{1,2}|:|\d{1,2}時|\d{1,2}分|" + _WEEKDAY + r")*", "<DATE>",
     "".join(_ERAS) + _DATE_CHARS, True, _ERAS),
    (r"(" + _NUMBER + r"*億)*(" + _NUMBER + r"*万)*(" + _NUMBER + r"*千)*" + _NUMBER +
     r"*(千円|万円|千万円|円|千ドル|万ドル|千万ドル|ドル|千ユーロ|万ユーロ|千万ユーロ|ユーロ)+"
     r"(\(税込\)|\(税抜\)|\+tax)*", "<PRICE>",
     ",億万千円ドルユーロ()税込抜+tax", True, _CURRENCIES),
)

# Noncharacters stand in for <SP>, <BR> and <TAB> while encoding, one character
# each instead of four or five, when SWEEncoder proves the ids come out the same;
# another separates the texts encode_batch encodes together.
_STAND_INS = {"<SP>": "\ufdd0", "<BR>": "\ufdd1", "<TAB>": "\ufdd2"}
_BOUNDARY = "\ufdd3"
_RESERVED = tuple(_STAND_INS.values()) + (_BOUNDARY,)

_UNICODE_SIZE = 0x110000
_LT = ord("<")
# A position's candidates are compared as scores id * 4 + (3 - length): the lowest
# score is the lowest id and, among equal ids, the longest spelling.  A character
# without an entry of its own scores _FALLBACK + (its fallback id) * 4 + 2, above
# every entry's score, so it only counts when nothing else matches there.
_ID_BITS = 26
_FALLBACK = 1 << (_ID_BITS + 2)
_NO_SCORE = 0x7FFFFFFF            # no entry (pair and triple tables)
_AS_BYTES = (1 << _ID_BITS) - 1   # "id" of a character encoded as UTF-8 byte tokens
_BOUNDARY_ID = _AS_BYTES - 1      # "id" of the character that separates batched texts
_CHUNK_CHARS = 1 << 16            # long texts are encoded in pieces of about this size


class VocabularyError(ValueError):
    """A malformed vocabulary or emoji file; the message names the file and line."""


class EmojiTableError(VocabularyError):
    """The emoji table (not the vocabulary) is malformed."""


# ----------------------------------------------------------------------------- files

def _read_lines(path):
    with open(path, "rb") as f:
        data = f.read()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise VocabularyError("%s line %d: not UTF-8" % (path, data[:e.start].count(b"\n") + 1))
    return text.split("\n"), hashlib.sha256(data).hexdigest()


def _spellings_of(line):
    return [line] if (line == "," or "," not in line) else line.split(",")


def read_vocabulary(path):
    """Spelling lists per id and the spelling -> id map, checked as the module doc says."""
    lines, digest = _read_lines(path)
    spellings = [_spellings_of(line) for line in lines]
    ids = dict(zip(itertools.chain.from_iterable(spellings),
                   np.repeat(np.arange(len(spellings)), list(map(len, spellings))).tolist()))
    if "" in ids:
        line = next(i for i, words in enumerate(spellings) if "" in words)
        hint = " (vocabulary files end without a newline)" if line == len(lines) - 1 else ""
        raise VocabularyError("%s line %d: empty spelling%s" % (path, line + 1, hint))
    if len(ids) != sum(map(len, spellings)) and digest != RELEASED_VOCAB_SHA256:
        _report_duplicate(path, spellings)
    _check_layout(path, spellings, ids)
    return spellings, ids


def _report_duplicate(path, spellings):
    first_line = {}
    for token_id, words in enumerate(spellings):
        for word in words:
            if first_line.setdefault(word, token_id) != token_id:
                raise VocabularyError("%s line %d: spelling %r is already on line %d"
                                      % (path, token_id + 1, word, first_line[word] + 1))


def _check_layout(path, spellings, ids):
    size = len(spellings)
    for offset, token in enumerate(SPECIAL_TOKENS):
        if token not in ids:
            raise VocabularyError("%s line %d: no line holds the special token %s (id V-%d: the "
                                  "last %d lines must be %s)" % (
                                      path, size + offset - len(SPECIAL_TOKENS) + 2, token,
                                      len(SPECIAL_TOKENS) - offset, len(SPECIAL_TOKENS),
                                      " ".join(SPECIAL_TOKENS)))
    for offset, token in enumerate(SPECIAL_TOKENS):
        line = size - len(SPECIAL_TOKENS) + offset
        found = spellings[line][0] if line >= 0 else None
        if found != token:
            raise VocabularyError("%s line %d: expected the special token %s (id V-%d), found %s"
                                  % (path, line + 1, token, size - line,
                                     "nothing" if found is None else repr(found)))
    byte_start = size - len(SPECIAL_TOKENS) - len(BYTE_TOKENS)
    for b, token in enumerate(BYTE_TOKENS):
        if token not in ids:
            raise VocabularyError("%s line %d: no line holds the byte token %s (the released "
                                  "layout puts it on this line)"
                                  % (path, byte_start + b + 1, token))
    for token in NAMED_TOKENS:
        if token not in ids:
            raise VocabularyError("%s line %d: no line holds %s (the released layout puts it "
                                  "before the emoji classes)" % (path, byte_start - 11, token))


def read_emoji(path, ids):
    with open(path, encoding="utf-8") as f:
        try:
            table = json.load(f)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise VocabularyError("%s line %d: %s" % (path, getattr(e, "lineno", 1), e))
    if not (isinstance(table, dict) and isinstance(table.get("emoji"), dict)
            and isinstance(table.get("emoji_inv"), dict)):
        raise VocabularyError('%s line 1: expected {"emoji": {...}, "emoji_inv": {...}}' % path)
    for key, token in table["emoji"].items():
        if not key or not isinstance(token, str) or token not in ids:
            raise VocabularyError("%s: emoji %r maps to %r, which is not a vocabulary token"
                                  % (path, key, token))
    return table["emoji"], table["emoji_inv"]


# ------------------------------------------------------------------- vectorised lookups

class _KeyTable:
    """Open-addressing hash table from uint64 keys to uint64 values that looks up a
    whole array of keys at once (numpy has no vectorised dict).

    Key and value share one 16-byte record, so a lookup costs one memory access.
    Values must not have a bit set that `missing` (< 2**63) has not: an absent key
    reads as `missing` OR-ed with the value in its home slot, which is `missing`
    (cheaper than selecting).  Bit 63 of a record's value says "a key whose home
    is this slot sits further on"; elsewhere a key is in its home slot or absent.
    """

    _EMPTY = np.uint64(0xFFFFFFFFFFFFFFFF)
    _MULTIPLIER = np.uint64(0x9E3779B97F4A7C15)
    _DISPLACED = np.uint64(1 << 63)

    def __init__(self, keys, values, missing):
        keys = np.asarray(keys, dtype=np.uint64)
        values = np.asarray(values, dtype=np.int64).astype(np.uint64)
        self._missing = np.uint64(missing)
        if (self._missing >= self._DISPLACED or ((values | self._missing) != self._missing).any()
                or (values == self._missing).any() or (keys == self._EMPTY).any()):
            raise ValueError("a key or value the table cannot hold")
        bits = max(4, int(np.ceil(np.log2(max(1, len(keys)) * 8))))
        self._mask = (1 << bits) - 1
        self._shift = np.uint64(64 - bits)
        self._keys = np.full(1 << bits, self._EMPTY, dtype=np.uint64)
        self._values = np.full(1 << bits, self._missing, dtype=np.uint64)
        displaced = self._insert(keys, values)
        self._table = np.empty((1 << bits, 2), dtype=np.uint64)  # rows: key, value
        self._table[:, 0] = self._keys
        self._table[:, 1] = self._values | (displaced.astype(np.uint64) << np.uint64(63))
        self._records = self._table.view(np.complex128).ravel()  # one 16-byte item per slot
        self._missing_displaced = self._missing | self._DISPLACED
        del self._keys, self._values

    def _home(self, keys):
        return ((keys * self._MULTIPLIER) >> self._shift).astype(np.intp)

    def _insert(self, keys, values):
        homes = self._home(keys)
        slots = homes.copy()
        pending = np.arange(len(keys))
        while pending.size:
            free = self._keys[slots[pending]] == self._EMPTY
            taking = pending[free]
            won_slots, first = np.unique(slots[taking], return_index=True)
            winners = taking[first]
            self._keys[won_slots] = keys[winners]
            self._values[won_slots] = values[winners]
            placed = np.zeros(len(keys), dtype=bool)
            placed[winners] = True
            pending = pending[~placed[pending]]
            # Linear probing: every slot a key passed over stays occupied for good.
            slots[pending] = (slots[pending] + 1) & self._mask
        displacement = (slots - homes) & self._mask
        self._probe = np.arange(1, int(displacement.max(initial=0)) + 1)
        displaced = np.zeros(len(self._keys), dtype=bool)
        displaced[homes[displacement > 0]] = True
        return displaced

    def lookup(self, queries):
        """The value of each query key (uint64), `missing` where it is absent."""
        homes = self._home(queries)
        found = self._records[homes].view(np.uint64).reshape(-1, 2)
        absent = (found[:, 0] == queries).astype(np.uint64)
        absent -= np.uint64(1)  # all ones where the home slot holds another key
        absent &= self._missing
        values = np.bitwise_or(found[:, 1], absent)
        # Not at home, but its home is one whose keys may sit further on.
        todo = np.flatnonzero(values == self._missing_displaced)
        values &= ~self._DISPLACED
        if todo.size:
            window = (homes[todo, None] + self._probe) & self._mask
            rows, columns = np.nonzero(self._table[window, 0] == queries[todo, None])
            values[todo[rows]] = self._table[window[rows, columns], 1] & ~self._DISPLACED
        return values


def _pack(*columns):
    """Exact uint64 key of up to three code points (21 bits each)."""
    key = columns[0].astype(np.uint64)
    for column in columns[1:]:
        key = (key << np.uint64(21)) | column
    return key


def _as_rows(code_rows):
    """Rows of code points as one opaque value each, ordered like the rows."""
    rows = np.ascontiguousarray(code_rows, dtype=">u4")
    return rows.view("V%d" % (4 * rows.shape[1])).ravel()


def _code_points(text):
    return np.frombuffer(text.encode("utf-32-le", "surrogatepass"), dtype=np.uint32)


def _in_range(points, low, high):
    return (points - np.uint32(low)) <= np.uint32(high - low)  # unsigned wrap-around


def _greedy_path(lengths):
    """Mask of the positions the left-to-right greedy walk visits, given the
    length of the token chosen at every position.

    A position p is a sync point when no token starting before p reaches past
    it; every walk passes through every sync point, so only the stretches
    between sync points need walking: all of them at once, one token per step,
    first over the whole text (branch-free), then over the few that are left.
    """
    n = len(lengths)
    if n < 2:
        return np.ones(n, dtype=bool)
    longest = int(lengths.max())
    sync = np.ones(n, dtype=bool)
    if longest <= 3:
        # Only a token starting 1 or 2 positions earlier can reach past p.
        sync[1:] = lengths[:-1] == 1
        sync[2:] &= lengths[:-2] <= 2
    else:
        positions = np.arange(n, dtype=lengths.dtype)
        np.less_equal(np.maximum.accumulate(positions + lengths)[:-1], positions[1:], out=sync[1:])
    visited = sync.copy()
    frontier = sync
    steps_of = [lengths == k for k in (1, 2, 3)]
    long_at = np.flatnonzero(lengths > 3) if longest > 3 else None  # "<...>" tokens: few
    for _ in range(4):
        reached = np.zeros(n, dtype=bool)
        for k, step in enumerate(steps_of, 1):
            reached[k:] |= frontier[:-k] & step[:-k]
        if long_at is not None:
            ends = long_at[frontier[long_at]]
            ends = ends + lengths[ends]
            reached[ends[ends < n]] = True
        frontier = reached & ~sync
        if not frontier.any():
            return visited
        visited |= frontier
    at = np.flatnonzero(frontier)
    while at.size > 16:
        at = at + lengths[at]
        at = at[at < n]
        at = at[~sync[at]]
        visited[at] = True
    for p in at.tolist():  # a few long stretches: cheaper one step at a time
        p += int(lengths[p])
        while p < n and not sync[p]:
            visited[p] = True
            p += int(lengths[p])
    return visited


def _head_codes(*columns):
    """Keys for the emoji index: 1, 2 or 3 code points, never two equal for different heads."""
    if len(columns) == 3:
        return _pack(*columns)  # < 2**63
    tag = np.uint64((1 << 63) | ((len(columns) - 1) << 62))
    return _pack(*columns) | tag


def _head_code(head):
    """_head_codes for one head (a str of 1-3 characters)."""
    code = 0
    for c in head:
        code = (code << 21) | ord(c)
    return code if len(head) == 3 else code | (1 << 63) | ((len(head) - 1) << 62)


def _find_all(text, literal):
    found, i = [], text.find(literal)
    while i >= 0:
        found.append(i)
        i = text.find(literal, i + 1)
    return found


def _overlaps(a, b):
    """Can an occurrence of `a` share characters with an occurrence of `b`?"""
    if not set(a) & set(b):
        return False
    if a in b or b in a:
        return True
    return any(a.endswith(b[:i]) or a.startswith(b[-i:]) for i in range(1, len(b)))


# ------------------------------------------------------------------------- cleaning

class _Substitution:
    """One clean=True regex substitution, run only on the stretches of text where
    it can match.

    pattern.sub over the whole text == pattern.sub over each maximal run of
    `chars` that contains a trigger (a position inside some match, or where one of
    `literals` occurs), text elsewhere unchanged: a match consumes `chars` only,
    so it lies inside one run; the patterns have no anchors or lookarounds, so
    what matches inside a run does not depend on the text around it; and every
    match contains a trigger, so runs without one hold no match.
    """

    def __init__(self, pattern, replacement, chars, digits, literals):
        self.pattern = re.compile(pattern)
        self.replacement = replacement
        self.literals = literals
        self._chars = frozenset(chars)
        self._digits = digits
        self._run = re.compile("[%s%s]*" % (re.escape(chars), r"\d" if digits else ""))

    def _in_run(self, ch):
        return ch in self._chars or (self._digits and ch.isdecimal())

    def at_literals(self, text):
        if not any(literal in text for literal in self.literals):
            return text
        return self.at(text, sorted(set().union(*(_find_all(text, x) for x in self.literals))))

    def at(self, text, triggers):
        """The substitution applied to the runs around these (sorted) positions."""
        pieces, done = [], 0
        for p in triggers:
            if p < done:
                continue  # inside the run just substituted
            start = p
            while start > done and self._in_run(text[start - 1]):
                start -= 1
            end = self._run.match(text, p).end()
            pieces += [text[done:start], self.pattern.sub(self.replacement, text[start:end])]
            done = end
        if not pieces:
            return text
        pieces.append(text[done:])
        return "".join(pieces)


# Bit 0: an ASCII digit; bit 1: also allowed in a phone number; bit 2: may follow
# the month of a date.
_DATE_AND_PHONE = np.zeros(_UNICODE_SIZE, dtype=np.uint8)
_DATE_AND_PHONE[[ord(c) for c in "0123456789"]] = 3
_DATE_AND_PHONE[[ord(c) for c in "()"]] = 2
_DATE_AND_PHONE[ord("-")] = 6
_DATE_AND_PHONE[[ord(c) for c in "/月"]] = 4


def _phone_triggers(classes):
    """Starts of 7 consecutive [0-9()-] characters: every <TEL> match has at least 7."""
    at = np.flatnonzero(classes & 2)
    return at[:-6][at[6:] - at[:-6] == 6].tolist()


def _date_triggers(classes):
    """An ASCII digit followed by "/", "-" or "月": the one part every <DATE> match has."""
    return np.flatnonzero(classes[:-1] & (classes[1:] >> 2) & 1).tolist()


# ------------------------------------------------------------------------- the encoder

class SWEEncoder:
    """Encode/decode with a GPTSAN vocabulary; see the module docstring for the rules."""

    def __init__(self, vocab_file=DEFAULT_VOCAB, emoji_file=DEFAULT_EMOJI):
        for path, what in ((vocab_file, "vocabulary"), (emoji_file, "emoji table")):
            if not os.path.isfile(path):
                raise FileNotFoundError("%s file not found: %s" % (what, path))
        self.vocab_file, self.emoji_file = vocab_file, emoji_file
        self._spellings, self._ids = read_vocabulary(vocab_file)
        try:
            self._emoji, self._emoji_inv = read_emoji(emoji_file, self._ids)
        except VocabularyError as e:
            raise EmojiTableError(str(e)) from None
        self.vocab_size = len(self._spellings)
        for offset, name in enumerate(SPECIAL_NAMES):
            setattr(self, name, self.vocab_size - len(SPECIAL_NAMES) + offset)
        self._build_emoji_index()
        self._build_tables()
        self._build_decoding()
        self._substitutions = [_Substitution(*step) for step in CLEAN_STEPS]
        self._newline_splits = self._stands_alone("<BR>")
        reserved = re.compile("[%s]" % "".join(_RESERVED))
        self._use_stand_ins = all(self._stands_alone(t) for t in _STAND_INS) and not any(
            reserved.search("\n".join(words)) for words in (self._ids, self._emoji_keys))

    # --- construction

    def _build_tables(self):
        if self.vocab_size >= _BOUNDARY_ID:
            raise VocabularyError("%s: more than %d ids" % (self.vocab_file, _BOUNDARY_ID))
        words = sorted(self._ids, key=len)
        bounds = np.searchsorted(np.fromiter(map(len, words), dtype=np.intp, count=len(words)),
                                 [1, 2, 3, 4])
        (singles, single_ids), (pairs, pair_ids), (triples, triple_ids) = (
            self._points_and_ids(words[bounds[k - 1]:bounds[k]], k) for k in (1, 2, 3))
        fallback = np.full(_UNICODE_SIZE, _AS_BYTES, dtype=np.int32)
        for low, high in KIGOU_RANGES:
            fallback[low:high + 1] = self._ids["<KIGOU>"]
        fallback[U2000U2BFF_RANGE[0]:U2000U2BFF_RANGE[1] + 1] = self._ids["<U2000U2BFF>"]
        self._single_scores = _FALLBACK + fallback * 4 + 2
        self._single_scores[singles[:, 0]] = single_ids * 4 + 2
        self._stand_in_scores = self._single_scores.copy()
        for token, char in _STAND_INS.items():
            self._stand_in_scores[ord(char)] = self._ids[token] * 4 + 2
        self._stand_in_scores[ord(_BOUNDARY)] = _BOUNDARY_ID * 4 + 2
        self._build_pair_table(pairs, pair_ids, triples, triple_ids)
        self._triples = _KeyTable(_pack(triples[:, 0], triples[:, 1], triples[:, 2]),
                                  triple_ids * 4, missing=_NO_SCORE)
        self._angle_words = [w for w in words[bounds[2]:] if w[0] == "<"]
        self._lt_inside = re.search("[^\n]<", "\n".join(words)) is not None
        self._angle_entries = []  # per length, shortest first: (length, last chars, rows, ids)
        for length in sorted({len(w) for w in self._angle_words}):
            points, ids = self._points_and_ids([w for w in self._angle_words if len(w) == length],
                                               length)
            rows = _as_rows(points)
            order = np.argsort(rows, kind="stable")
            self._angle_entries.append((length, np.unique(points[:, -1]), rows[order], ids[order]))
        self._byte_ids = [self._ids[t] for t in BYTE_TOKENS]
        self._byte_id_array = np.array(self._byte_ids + [-1], dtype=np.int32)  # 0xFF: never
        self._byte_tokens_of = {}  # code point -> its byte token ids, filled as met
        # Rule 1 with stand-ins, on code points, for texts without "\r".
        self._stand_in_map = np.arange(_UNICODE_SIZE, dtype=np.uint32)
        for old, new in WHITESPACE_AND_DASHES:
            if old != "\r\n":
                self._stand_in_map[ord(old)] = ord(_STAND_INS.get(new, new))

    def _build_pair_table(self, pairs, pair_ids, triples, triple_ids):
        """One lookup per position gives the pair's score (high 32 bits) and, in the low
        32 bits, the lowest score of the triples the pair begins (a triple is looked up
        only where it could win) or 0, "an emoji key may begin here" (a false alarm
        where a triple has id 0 costs only a check)."""
        payloads = {}
        pair_keys = _pack(pairs[:, 0], pairs[:, 1]).tolist()
        for key, score in zip(pair_keys, (pair_ids * 4 + 1).tolist()):
            payloads[key] = [score, _NO_SCORE]
        prefixes = _pack(triples[:, 0], triples[:, 1]).tolist()
        for key, score in zip(prefixes, (triple_ids * 4).tolist()):
            payload = payloads.setdefault(key, [_NO_SCORE, _NO_SCORE])
            payload[1] = min(payload[1], score)
        for key in self._emoji_keys:
            if len(key) > 1 and self._emoji_live(key):
                head = (ord(key[0]) << 21) | ord(key[1])
                payloads.setdefault(head, [_NO_SCORE, _NO_SCORE])[1] = 0
        values = [(score << 32) | floor for score, floor in payloads.values()]
        self._pairs = _KeyTable(list(payloads), values, missing=(_NO_SCORE << 32) | _NO_SCORE)

    def _points_and_ids(self, words, length):
        """Code points (one row per word) and ids of words that all have `length` characters."""
        points = _code_points("".join(words)).reshape(-1, length)
        return points, np.array([self._ids[w] for w in words], dtype=np.int32)

    def _build_emoji_index(self):
        """Index the emoji keys by their first one, two or three characters, so a
        text is only checked against keys that can occur in it.  Keys holding a
        character that rule 1 replaces can never match and are left out."""
        self._emoji_keys = list(self._emoji)
        # Bit 0: a one-character key; bits 1 and 2: first and second character of a longer one.
        self._emoji_chars = np.zeros(_UNICODE_SIZE, dtype=np.uint8)
        self._emoji_heads = {}
        produced = {new for _, new in WHITESPACE_AND_DASHES if len(new) == 1}
        self._emoji_sensitive = set()  # keys that may match where rule 1 wrote a character
        for index, key in enumerate(self._emoji_keys):
            if not self._emoji_live(key):
                continue
            if len(key) == 1:
                self._emoji_chars[ord(key)] |= 1
            else:
                self._emoji_chars[ord(key[0])] |= 2
                self._emoji_chars[ord(key[1])] |= 4
            self._emoji_heads.setdefault(_head_code(key[:3]), []).append(index)
            if produced.intersection(key):
                self._emoji_sensitive.add(index)
        # If no key can overlap a class token, replacing one key never creates an
        # occurrence of another, so keys absent from the text can be skipped.
        tokens = set(self._emoji.values())
        token_chars = set("".join(tokens))
        self._emoji_closed = not any(_overlaps(k, t) for k in self._emoji_keys
                                     if token_chars.intersection(k) for t in tokens)

    @staticmethod
    def _emoji_live(key):
        """False for keys that can never match: rule 1 removed one of their characters."""
        return not any(old in key for old, _ in WHITESPACE_AND_DASHES)

    def _build_decoding(self):
        self._canonical = [words[0] for words in self._spellings]
        self._byte_value = np.full(self.vocab_size, -1, dtype=np.int16)
        forms = []
        for token_id, word in enumerate(self._canonical):
            if word.startswith("<|byte") and word.endswith("|>") and word[6:-2].isdigit():
                self._byte_value[token_id] = int(word[6:-2])
            if word.startswith("<|emoji") and word.endswith("|>"):
                forms.append(self._emoji_inv.get(word, word))
            else:
                forms.append(DECODED_FORMS.get(word, word))
        self._decoded = forms
        self._byte_values = self._byte_value.tolist()
        self._br_ids = [i for i, w in enumerate(self._canonical) if w == "<BR>"]
        self._special = np.array([len(w) > 2 and w[0] == "<" and w[-1] == ">"
                                  for w in self._canonical], dtype=bool)
        self._special[self.vocab_size - len(SPECIAL_TOKENS):] = True

    def _stands_alone(self, token):
        """True when `token`, once written into the text, is always encoded as
        itself and nothing matches across it, whatever surrounds it: no entry has
        a "<" after its first character (so no token starting earlier covers it),
        no longer entry starts with it, no emoji key can overlap it, and the
        clean=True patterns never consume "<" or ">".  Then the token may stand in
        the text as one reserved character, and a long text may be cut after it."""
        longer = any(w.startswith(token) and w != token for w in self._angle_words)
        emoji_across = any(_overlaps(k, token) for k in self._emoji_keys)
        return not (self._lt_inside or longer or emoji_across)

    # --- public API

    def __len__(self):
        return self.vocab_size

    def token_to_id(self, s):
        return self._ids.get(s)

    def id_to_token(self, i):
        return self._canonical[self._check_id(i)]

    def is_special(self, i):
        return bool(self._special[self._check_id(i)])

    def clean_text(self, text):
        """The clean=True substitutions (URL, e-mail, phone, date, price, block)."""
        return self._clean(text, _code_points(text))

    def encode(self, text, clean=False):
        if not isinstance(text, str):
            raise TypeError("encode() takes a str, got %s" % type(text).__name__)
        ids = []
        for piece in self._pieces(text):
            ids.extend(self._encode_piece(piece, clean))
        return ids

    def encode_batch(self, texts, clean=False):
        """[encode(t, clean) for t in texts], faster for many short texts: they are
        encoded together, joined by a reserved character that no rule matches across."""
        results, group, size = [], [], 0
        for index, text in enumerate(texts):
            if not isinstance(text, str):
                raise TypeError("encode_batch() takes strs, got %s" % type(text).__name__)
            results.append(None)
            if (not self._use_stand_ins or len(text) > _CHUNK_CHARS
                    or any(c in text for c in _RESERVED)):
                results[index] = self.encode(text, clean)
                continue
            group.append(index)
            size += len(text)
            if size > _CHUNK_CHARS:
                self._encode_group(texts, group, clean, results)
                group, size = [], 0
        self._encode_group(texts, group, clean, results)
        return results

    def _encode_group(self, texts, group, clean, results):
        if not group:
            return
        ids = self._encode_piece(_BOUNDARY.join(texts[i] for i in group), clean, joined=True)
        start = 0
        for index in group[:-1]:
            end = ids.index(_BOUNDARY_ID, start)
            results[index] = ids[start:end]
            start = end + 1
        results[group[-1]] = ids[start:]

    def decode(self, ids, breakline="\n"):
        ids = self._checked_ids(ids)
        forms = self._decoded
        if breakline != "\n" and self._br_ids:
            forms = list(forms)
            for i in self._br_ids:
                forms[i] = breakline
        if not ids:
            return ""
        if not (self._byte_value[ids] >= 0).any():
            return "".join([forms[i] for i in ids])
        return self._decode_with_bytes(ids, forms)

    # --- encoding internals

    def _pieces(self, text):
        if len(text) <= _CHUNK_CHARS or not self._newline_splits:
            yield text
            return
        start = 0
        while start < len(text):
            cut = text.find("\n", start + _CHUNK_CHARS)
            end = len(text) if cut < 0 else cut + 1
            yield text[start:end]
            start = end

    def _encode_piece(self, text, clean, joined=False):
        """Ids of one piece of text; `joined`: texts joined by _BOUNDARY, which the
        caller has checked hold no reserved character."""
        if not text:
            return []
        stand_ins = joined or (self._use_stand_ins and not any(c in text for c in _RESERVED))
        if stand_ins and not clean and "\r" not in text:
            # Rule 1 then maps characters one to one: do it on the code points, and
            # make the string only if an emoji key occurs.
            points = self._stand_in_map[_code_points(text)]
            singles = self._emoji_keys_at(points, np.flatnonzero(self._emoji_chars[points] & 1))
            if self._emoji_closed and not self._emoji_in(text, singles):
                scores, emoji_at = self._lowest_scores(points, self._stand_in_scores)
                if not self._emoji_in(text, self._emoji_keys_at(points, emoji_at)):
                    return self._tokenize(points, scores)
        return self._encode_string(self._normalise(text, stand_ins), clean, stand_ins)

    def _emoji_in(self, text, candidates):
        """Does any of these keys occur in the text once rule 1 is applied?  (Keys
        without a character rule 1 writes occur after it exactly where before.)"""
        return any(i in self._emoji_sensitive or self._emoji_keys[i] in text for i in candidates)

    @staticmethod
    def _normalise(text, stand_ins):
        for old, new in WHITESPACE_AND_DASHES:
            text = text.replace(old, _STAND_INS.get(new, new) if stand_ins else new)
        return text

    def _encode_string(self, text, clean, stand_ins):
        """Rules 2-4 for a text that rule 1 has normalised."""
        if not text:
            return []
        points = _code_points(text)
        replaced = self._replace_emoji(text, points)
        if replaced is not text:
            text, points = replaced, _code_points(replaced)
        if clean:
            cleaned = self._clean(text, points)
            if cleaned is not text:
                points = _code_points(cleaned)
        scores, _ = self._lowest_scores(points, self._stand_in_scores if stand_ins
                                        else self._single_scores)
        return self._tokenize(points, scores)

    def _replace_emoji(self, text, points):
        every = range(len(self._emoji_keys))
        for index in self._emoji_candidates(points) if self._emoji_closed else every:
            key = self._emoji_keys[index]
            if key in text:
                text = text.replace(key, self._emoji[key])
        return text

    def _emoji_candidates(self, points):
        """Indices, in key order, of the keys that may occur: their first (up to)
        three characters do."""
        chars = self._emoji_chars[points]
        starts = chars & 1
        starts[:-1] |= chars[:-1] & (chars[1:] >> 1)
        return self._emoji_keys_at(points, np.flatnonzero(starts))

    def _emoji_keys_at(self, points, starts):
        """Indices, in key order, of the keys whose first (up to) three characters
        occur at one of these positions."""
        if not starts.size:
            return []
        heads = []
        for length in (1, 2, 3):
            at = starts[starts + length <= len(points)]
            heads.append(_head_codes(*(points[at + k] for k in range(length))))
        found = set()
        for head in np.unique(np.concatenate(heads)).tolist():
            found.update(self._emoji_heads.get(head, ()))
        return sorted(found)

    def _clean(self, text, points):
        """clean_text for a text whose code points are `points`."""
        has_blocks = _in_range(points, *BLOCK_RANGE).any()  # no step adds or removes any
        url, email, phone, date, era_date, price = self._substitutions
        cleaned = email.at_literals(url.at_literals(text))
        if cleaned is not text:
            text, points = cleaned, _code_points(cleaned)
        classes = _DATE_AND_PHONE[points]
        cleaned = phone.at(text, _phone_triggers(classes))
        if cleaned is not text:
            text, classes = cleaned, _DATE_AND_PHONE[_code_points(cleaned)]
        text = date.at(text, _date_triggers(classes))
        if "年" in text:
            text = era_date.at_literals(text)
        text = price.at_literals(text)
        if has_blocks:
            text = re.sub("[%s-%s]+" % tuple(map(chr, BLOCK_RANGE)), "<BLOCK>", text)
        while "<BLOCK><BLOCK>" in text:  # also joins <BLOCK>s that were in the text
            text = text.replace("<BLOCK><BLOCK>", "<BLOCK>")
        return text

    def _lowest_scores(self, points, single_scores):
        """Per position, the lowest score among the 1-3 character entries matching
        there (or the character's fallback), and the positions where the pair table
        says an emoji key may begin."""
        scores = single_scores[points]
        n = len(points)
        if n < 2:
            return scores, np.zeros(0, dtype=np.intp)
        found = self._pairs.lookup(_pack(points[:-1], points[1:]))
        np.minimum(scores[:-1], (found >> np.uint64(32)).astype(np.int32), out=scores[:-1])
        floors = found.astype(np.int32)  # the low half
        at = np.flatnonzero(floors[:n - 2] < scores[:n - 2])
        emoji_at = at[floors[at] == 0]
        if floors[-1] == 0:
            emoji_at = np.append(emoji_at, n - 2)
        if at.size:
            triple_scores = self._triples.lookup(
                _pack(points[at], points[at + 1], points[at + 2])).astype(np.int32)
            scores[at] = np.minimum(scores[at], triple_scores)
        return scores, emoji_at

    def _tokenize(self, points, scores):
        """Ids for the normalised text, as its code points, from _lowest_scores: rule 4."""
        ids = (scores >> 2) & _AS_BYTES
        lengths = 3 - (scores & 3)
        self._take_angle_entries(points, ids, lengths)
        starts = np.flatnonzero(_greedy_path(lengths))
        ids = ids[starts]
        in_bytes = np.flatnonzero(ids == _AS_BYTES)
        if not in_bytes.size:
            return ids.tolist()
        chars = points[starts[in_bytes]]
        if in_bytes.size > 64:
            return self._expand_many_bytes(ids, in_bytes, chars)
        return self._expand_bytes(ids.tolist(), in_bytes.tolist(), chars.tolist())

    def _take_angle_entries(self, points, ids, lengths):
        """At a "<", the longest matching entry of 3+ characters starting with "<" wins."""
        at = np.flatnonzero(points == _LT)
        if not at.size:
            return
        for length, last_chars, rows, entry_ids in self._angle_entries:  # longest wins last
            candidates = at[at + length <= len(points)]
            ends = points[candidates + length - 1]
            candidates = candidates[ends == last_chars[0] if len(last_chars) == 1
                                    else np.isin(ends, last_chars)]
            if not candidates.size:
                continue
            windows = _as_rows(points[candidates[:, None] + np.arange(length)])
            index = np.minimum(np.searchsorted(rows, windows), len(rows) - 1)
            hit = rows[index] == windows
            ids[candidates[hit]] = entry_ids[index[hit]]
            lengths[candidates[hit]] = length

    def _expand_bytes(self, ids, at, chars):
        """`ids` with the one at each index in `at` replaced by the byte tokens of
        the matching character in `chars`."""
        out, done = [], 0
        for i, char in zip(at, chars):
            out += ids[done:i]
            out += self._byte_tokens(char)
            done = i + 1
        out += ids[done:]
        return out

    def _expand_many_bytes(self, ids, at, chars):
        """_expand_bytes for numpy arrays, when there are many."""
        data = np.frombuffer("".join(map(chr, chars.tolist())).encode("utf-8", "surrogatepass"),
                             dtype=np.uint8)
        widths = 1 + (chars >= 0x80).astype(np.intp) + (chars >= 0x800) + (chars >= 0x10000)
        counts = np.ones(len(ids), dtype=np.intp)
        counts[at] = widths
        out = np.repeat(ids, counts)
        # Output index of every byte: its character's first slot plus its rank in it.
        first = np.cumsum(counts)[at] - widths
        rank = np.arange(len(data)) - np.repeat(np.cumsum(widths) - widths, widths)
        out[np.repeat(first, widths) + rank] = self._byte_id_array[data]
        return out.tolist()

    def _byte_tokens(self, char):
        tokens = self._byte_tokens_of.get(char)
        if tokens is None:
            tokens = [self._byte_ids[b] for b in chr(char).encode("utf-8", "surrogatepass")]
            if len(self._byte_tokens_of) < 65536:
                self._byte_tokens_of[char] = tokens
        return tokens

    # --- decoding internals

    def _check_id(self, i):
        if isinstance(i, (bool, np.bool_)) or not isinstance(i, (int, np.integer)):
            raise TypeError("token id must be an integer, got %r" % (i,))
        if not 0 <= i < self.vocab_size:
            raise ValueError("token id %d is out of range 0..%d" % (i, self.vocab_size - 1))
        return int(i)

    def _checked_ids(self, ids):
        if isinstance(ids, np.ndarray) and ids.dtype.kind in "iu":
            ids = ids.ravel().tolist()
        ids = list(ids)
        if not all(type(i) is int for i in ids):
            ids = [self._check_id(i) for i in ids]
        elif ids and not (0 <= min(ids) and max(ids) < self.vocab_size):
            bad = next(i for i in ids if not 0 <= i < self.vocab_size)
            raise ValueError("token id %d is out of range 0..%d" % (bad, self.vocab_size - 1))
        return ids

    def _decode_with_bytes(self, ids, forms):
        words, pending = [], bytearray()
        byte_value = self._byte_values
        for i in ids:
            b = byte_value[i]
            if b >= 0:
                pending.append(b)
                continue
            if pending:
                words.append(pending.decode("utf-8", errors="replace"))
                pending = bytearray()
            words.append(forms[i])
        if pending:
            words.append(pending.decode("utf-8", errors="replace"))
        return "".join(words)


# --------------------------------------------------------------- shared instances

@functools.lru_cache(maxsize=8)
def _cached_encoder(vocab_file, emoji_file, _stamps):
    return SWEEncoder(vocab_file, emoji_file)


def _stamp(path):
    try:
        status = os.stat(path)
    except OSError:
        return None
    return status.st_mtime_ns, status.st_size


def load_encoder(vocab_file=None, emoji_file=None):
    """A shared SWEEncoder for these files (default: the repository's own), loaded
    once per process and again when a file changes."""
    vocab_file = os.path.abspath(vocab_file or DEFAULT_VOCAB)
    emoji_file = os.path.abspath(emoji_file or DEFAULT_EMOJI)
    return _cached_encoder(vocab_file, emoji_file, (_stamp(vocab_file), _stamp(emoji_file)))


# --------------------------------------------------------- many files, in parallel

_worker_encoder = None


def _start_worker(vocab_file, emoji_file):
    global _worker_encoder
    _worker_encoder = load_encoder(vocab_file, emoji_file)


def read_text(path):
    """A file's text, line breaks as they are; not UTF-8: a ValueError naming the file."""
    with open(path, "rb") as f:
        data = f.read()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ValueError("%s: not UTF-8 text (byte %d)" % (path, e.start)) from None


def _encode_file(task):
    path, clean = task
    return path, _worker_encoder.encode(read_text(path), clean)


def encode_files(paths, clean=False, num_process=1, vocab_file=None, emoji_file=None,
                 progress=True):
    """Yield (path, ids) for each file, in the order given, encoding in `num_process`
    worker processes; a tqdm bar (by bytes) goes to stderr."""
    import multiprocessing
    from tqdm import tqdm
    paths = list(paths)
    sizes = {p: os.path.getsize(p) for p in paths}
    tasks = [(p, clean) for p in paths]
    with tqdm(total=sum(sizes.values()), unit="B", unit_scale=True, desc="encode",
              disable=not progress, file=sys.stderr) as bar:
        if num_process <= 1 or len(paths) <= 1:
            _start_worker(vocab_file, emoji_file)
            results = map(_encode_file, tasks)
            pool = None
        else:
            # spawn, not fork: the caller may have started TensorFlow's threads.
            pool = multiprocessing.get_context("spawn").Pool(
                min(num_process, len(paths)), _start_worker, (vocab_file, emoji_file))
            results = pool.imap(_encode_file, tasks)
        try:
            for path, ids in results:
                bar.update(sizes[path])
                yield path, ids
        finally:
            if pool is not None:
                pool.terminate()


if __name__ == "__main__":  # the command line lives in model/encode_cli.py
    sys.modules["encode_swe"] = sys.modules[__name__]  # which then imports this copy, not a second
    from model import encode_cli
    encode_cli.main()
