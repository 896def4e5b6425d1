"""The straightforward SWE encoder, kept as the speed and correctness baseline.

This is the released GPTSAN encoder's algorithm, written plainly: literal
`str.replace` for spaces, line breaks, tabs and dashes, one `str.replace` per
emoji key in emoji.json's key order, regex cleaning, then a
per-position loop that looks every 1-3 character candidate up in a dict and
keeps the lowest id (a candidate starting with "<" and longer than two
characters wins outright, longest first).  `encode_swe.SWEEncoder` must return
the same ids, only faster; bench/bench_encoder.py and tests/test_encoder.py
compare the two.
"""
import json
import re

KEISEN = ("─━│┃┄┅┆┇┈┉┊┋┌┍┎┏┐┑┒┓└┕┖┗┘┙┚┛├┝┞┟┠┡┢┣┤┥┦┧┨┩┪┫┬┭┮┯┰┱┲┳┴┵┶┷┸┹┺┻┼┽┾┿"
          "╀╁╂╃╄╅╆╇╈╉╊╋╌╍╎╏═║╒╓╔╕╖╗╘╙╚╛╜╝╞╟╠╡╢╣╤╥╦╧╨╩╪╫╬╭╮╯╰╱╲╳╴╵╶╷╸╹╺╻╼╽╾╿")
BLOCKS = "▀▁▂▃▄▅▆▇█▉▊▋▌▍▎▏▐░▒▓▔▕▖▗▘▙▚▛▜▝▞▟"

_WEEKDAY = r"\(日\)|\(月\)|\(火\)|\(水\)|\(木\)|\(金\)|\(土\)|㈰|㈪|㈫|㈬|㈭|㈮|㈯"
_NUMBER = r"(0|[1-9]\d*|[1-9]\d{0,2}(,\d{3})+)"
CLEAN_PATTERNS = (
    (r"(https?|ftp)(:\/\/[-_\.!~*\'()a-zA-Z0-9;\/?:\@&=\+$,%#]+)", "<URL>"),
    (r"[A-Za-z0-9\._+]*@[\-_0-9A-Za-z]+(\.[A-Za-z]+)*", "<EMAIL>"),
    (r"[\(]{0,1}[0-9]{2,4}[\)\-\(]{0,1}[0-9]{2,4}[\)\-]{0,1}[0-9]{3,4}", "<TEL>"),
    (r"([12]\d{3}[/\-年])*(0?[1-9]|1[0-2])[/\-月]((0?[1-9]|[12][0-9]|3[01])日?)*"
     r"(\d{1,2}|:|\d{1,2}時|\d{1,2}分|" + _WEEKDAY + r")*", "<DATE>"),
    (r"(明治|大正|昭和|平成|令和|㍾|㍽|㍼|㍻|\u32ff)\d{1,2}年(0?[1-9]|1[0-2])月"
     r"(0?[1-9]|[12][0-9]|3[01])日(\d{1,2}|:|\d{1,2}時|\d{1,2}分|" + _WEEKDAY + r")*", "<DATE>"),
    (r"(" + _NUMBER + r"*億)*(" + _NUMBER + r"*万)*(" + _NUMBER + r"*千)*" + _NUMBER +
     r"*(千円|万円|千万円|円|千ドル|万ドル|千万ドル|ドル|千ユーロ|万ユーロ|千万ユーロ|ユーロ)+"
     r"(\(税込\)|\(税抜\)|\+tax)*", "<PRICE>"),
)


def read_vocabulary(path):
    with open(path, encoding="utf-8") as f:
        lines = f.read().split("\n")
    return [[line] if (line == "," or "," not in line) else line.split(",") for line in lines]


class BaselineEncoder:
    def __init__(self, vocab_file, emoji_file):
        self.bpe = read_vocabulary(vocab_file)
        with open(emoji_file, encoding="utf-8") as f:
            self.emoji = json.load(f)
        self.swe = {}
        for idx, spellings in enumerate(self.bpe):
            for spelling in spellings:
                self.swe[spelling] = idx
        self.maxlen = max(len(w) for w in self.swe)
        self.clean_patterns = [(re.compile(p), r) for p, r in CLEAN_PATTERNS]
        self.block_table = str.maketrans({c: "<BLOCK>" for c in KEISEN + BLOCKS})

    def __len__(self):
        return len(self.bpe)

    def clean_text(self, text):
        for pattern, replacement in self.clean_patterns:
            text = pattern.sub(replacement, text)
        text = text.translate(self.block_table)
        while "<BLOCK><BLOCK>" in text:
            text = text.replace("<BLOCK><BLOCK>", "<BLOCK>")
        return text

    def normalise(self, text, clean):
        for old, new in ((" ", "<SP>"), ("\u3000", "<SP>"), ("\r\n", "<BR>"), ("\n", "<BR>"),
                         ("\r", "<BR>"), ("\t", "<TAB>"), ("—", "ー"), ("−", "ー")):
            text = text.replace(old, new)
        for key, token in self.emoji["emoji"].items():
            if key in text:
                text = text.replace(key, token)
        return self.clean_text(text) if clean else text

    def fallback_tokens(self, char):
        data = char.encode("utf-8", "surrogatepass")
        if len(data) == 2:
            code = (data[0] << 8) | data[1]
            if (0xC2A1 <= code <= 0xC2BF or 0xC780 <= code <= 0xC783
                    or 0xCAB9 <= code <= 0xCBBF or 0xCC80 <= code <= 0xCDA2):
                return ["<KIGOU>"]
        if len(data) == 3:
            code = (data[0] << 16) | (data[1] << 8) | data[2]
            if 0xE28080 <= code <= 0xE2B07F:
                return ["<U2000U2BFF>"]
        return ["<|byte%d|>" % b for b in data]

    def encode(self, text, clean=False):
        text = self.normalise(text, clean)
        pos, ids = 0, []
        while pos < len(text):
            end = min(len(text), pos + self.maxlen + 1) if text[pos] == "<" else pos + 3
            candidates = []
            for e in range(end, pos, -1):
                word = text[pos:e]
                if word in self.swe:
                    if word[0] == "<" and len(word) > 2:
                        candidates = [(self.swe[word], e)]
                        break
                    candidates.append((self.swe[word], e))
            if candidates:
                # min() keeps the first of equal ids, i.e. the longest spelling
                token_id, pos = min(candidates, key=lambda c: c[0])
                ids.append(token_id)
            else:
                ids.extend(self.swe[t] for t in self.fallback_tokens(text[pos]))
                pos += 1
        return ids

    def decode(self, ids, breakline="\n"):
        words, pending_bytes = [], []
        for i in ids:
            word = self.bpe[i][0]
            if word.startswith("<|byte") and word.endswith("|>"):
                pending_bytes.append(int(word[6:-2]))
                continue
            if pending_bytes:
                words.append(bytes(pending_bytes).decode("utf-8", errors="replace"))
                pending_bytes = []
            if word.startswith("<|emoji") and word.endswith("|>"):
                words.append(self.emoji["emoji_inv"][word])
            else:
                words.append({"<SP>": " ", "<BR>": breakline, "<TAB>": "\t", "<BLOCK>": "▀",
                              "<KIGOU>": "ǀ", "<U2000U2BFF>": "‖"}.get(word, word))
        if pending_bytes:
            words.append(bytes(pending_bytes).decode("utf-8", errors="replace"))
        return "".join(words)
