#!/usr/bin/env python3
"""Build a plain-text Japanese corpus from Debian's Japanese documentation.

Each package is fetched with `apt-get download <package>` (kept in --cache_dir),
unpacked with `dpkg-deb -x` into a temporary folder, and every HTML page and
man page in it becomes one document. --from DIR reads your own folder of
.txt/.html files (and man pages) instead, with no download at all.

Output format (the same as ../shared/corpus/ja-docs-train): one shard per
package, `<output_dir>/<package>.txt`; one paragraph per line; documents
separated by two empty lines ("\\n\\n\\n"); NFC; whitespace collapsed.

Cleaning:
  * HTML (standard library html.parser): tags, <head>, <script>, <style>,
    <pre>, hidden elements, navigation, page headers and footers, tables of
    contents, indexes and footnote markers are removed.
  * Man pages: rendered with `groff -Tutf8 -mandoc`; without groff a built-in
    roff stripper is used (rougher: no tables layout, fewer escapes).
  * In both, a source line break between two Japanese characters becomes no
    space (a browser or troff would put a space there).
  * Encodings: UTF-8, EUC-JP, Shift_JIS (cp932) and ISO-2022-JP are detected.
  * A line is kept only if at least 15% of its non-space characters are
    hiragana, katakana or kanji; credit lines (an e-mail address and fewer
    than 10 Japanese characters) are dropped.
  * Exact duplicate paragraphs are removed across all shards, keeping the first
    copy (training shards in --packages order come first, then held-out ones,
    so held-out text never repeats a training paragraph).
  * A document left with fewer than 20 Japanese characters is dropped, and so
    is one whose Japanese characters are under 10% kana (Chinese pages in the
    multi-language packages).

Plain .txt input (--from): each line is a paragraph and "\\n\\n\\n" separates
documents, so a shard of this corpus can be fed back in.

Packages that fail to download are skipped with a warning as long as at least
one training package succeeds; otherwise the tool stops with exit status 2.
Existing shards are never rewritten without --force; with all shards present a
run only prints the summary. Missing shards are built after reading the
existing ones, so duplicates stay removed across the whole set.
"""
import concurrent.futures
import gzip
import html.parser
import os
import re
import shutil
import subprocess
import sys
import tempfile
import unicodedata
import zlib

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from model import cli  # noqa: E402
from model.atomic import write_text_atomic  # noqa: E402,F401  (tests use it from here)

CORE_PACKAGES = ["manpages-ja", "gimp-help-ja", "debian-edu-doc-ja", "kicad-doc-ja"]
HELDOUT_PACKAGES = ["debian-policy-ja"]
# Tried with Debian 12; each adds text and can be left out on its own. The
# multi-language ones keep only their Japanese pages (see MIN_DOC_KANA_SHARE).
EXTRA_PACKAGES = ["manpages-ja-dev", "libreoffice-help-ja", "debian-handbook",
                  "debian-reference-ja", "aptitude-doc-ja", "debian-history",
                  "installation-guide-amd64"]

MIN_LINE_JAPANESE_SHARE = 0.15
MIN_DOC_JAPANESE_CHARS = 20
MIN_DOC_KANA_SHARE = 0.10
DOCUMENT_SEPARATOR = "\n\n\n"

HTML_SUFFIXES = (".html", ".htm", ".xhtml")
TEXT_SUFFIXES = (".txt",)
MAN_PAGE_NAME = re.compile(r"\.[1-9n][a-z0-9]*$")
DEBIAN_PACKAGE_NAME = re.compile(r"^[a-z0-9][a-z0-9+.-]+$")

# ---------------------------------------------------------------- characters

KANA = re.compile("[\u3041-\u309f\u30a0-\u30ff\u31f0-\u31ff]")
JAPANESE = re.compile("[\u3041-\u309f\u30a0-\u30ff\u31f0-\u31ff"
                      "\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]")
# Characters between which Japanese writing puts no space: letters plus CJK
# punctuation and full-width forms.
NO_SPACE_SCRIPT = re.compile("[\u3000-\u303f\u3041-\u30ff\u31f0-\u31ff"
                             "\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\uff00-\uffef]")
INVISIBLE = re.compile("[\u00ad\u200b\u200c\u200d\u2060\ufeff]")
WHITESPACE = re.compile(r"\s+")
EMAIL = re.compile(r"[\w.+%-]+@[\w-]+(?:\.[\w-]+)+")
# Author and translator credits ("Name <address> (what they did)") carry an
# e-mail address and only a few Japanese words.
MIN_CREDIT_LINE_JAPANESE_CHARS = 10


def count_japanese(text):
    return len(JAPANESE.findall(text))


def japanese_share(text):
    """Hiragana, katakana and kanji as a fraction of the non-space characters."""
    visible = len(text) - sum(1 for c in text if c.isspace())
    return count_japanese(text) / visible if visible else 0.0


def joins_without_space(left, right):
    return bool(left and right and NO_SPACE_SCRIPT.match(left[-1])
                and NO_SPACE_SCRIPT.match(right[0]))


def join_lines(lines):
    """Join wrapped lines the way Japanese text is written: no space between
    two Japanese characters, one space elsewhere."""
    out = ""
    for line in lines:
        line = line.strip()
        if not line:
            continue
        out = out + line if (not out or joins_without_space(out, line)) else out + " " + line
    return out


def normalize_paragraph(text):
    text = unicodedata.normalize("NFC", INVISIBLE.sub("", text))
    return WHITESPACE.sub(" ", text).strip()


def is_credit_line(line):
    return bool(EMAIL.search(line)) and count_japanese(line) < MIN_CREDIT_LINE_JAPANESE_CHARS


def keep_line(line):
    return japanese_share(line) >= MIN_LINE_JAPANESE_SHARE and not is_credit_line(line)


def clean_paragraphs(paragraphs):
    """Normalise each paragraph and keep only the Japanese ones."""
    cleaned = (normalize_paragraph(p) for p in paragraphs)
    return [p for p in cleaned if p and keep_line(p)]


# ------------------------------------------------------------------ decoding

ISO_2022_JP_ESCAPE = re.compile(rb"\x1b\$[@B]")
DECLARED_CHARSET = re.compile(rb"""(?:charset|encoding)\s*=\s*["']?([A-Za-z0-9_.:-]+)""", re.I)
ROFF_CODING = re.compile(rb"-\*-.*coding:\s*([A-Za-z0-9_.-]+)")


def declared_charset(head):
    """The charset an HTML/XML page or an Emacs-style roff comment declares."""
    match = DECLARED_CHARSET.search(head) or ROFF_CODING.search(head)
    return match.group(1).decode("ascii").lower() if match else None


def decode_bytes(data):
    """Decode Japanese text whose encoding is unknown.

    UTF-8 is tried first (a legacy Japanese file practically never decodes as
    UTF-8); then the declared charset; then the legacy encoding that decodes
    cleanly into the most kana, since EUC-JP bytes can also pass as cp932.
    """
    if data.startswith(b"\xef\xbb\xbf"):
        return data[3:].decode("utf-8", "replace")
    if ISO_2022_JP_ESCAPE.search(data):
        return data.decode("iso-2022-jp", "replace")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        pass
    candidates = [declared_charset(data[:2048]), "euc_jp", "cp932"]
    decoded = []
    for encoding in candidates:
        try:
            text = data.decode(encoding)
        except (UnicodeDecodeError, LookupError, TypeError):
            continue
        decoded.append((len(KANA.findall(text)), -len(decoded), text))  # ties: earlier wins
    if decoded:
        return max(decoded)[2]
    return data.decode("euc_jp", "replace")


def read_source(path):
    """File contents as text, gunzipped if the name ends in .gz."""
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rb") as f:
        return decode_bytes(f.read())


# ---------------------------------------------------------------------- HTML

BLOCK_TAGS = frozenset("""address article aside blockquote body br caption center dd details
    dialog div dl dt fieldset figcaption figure footer form h1 h2 h3 h4 h5 h6 header hr html
    legend li main ol p section summary table tbody td tfoot th thead tr ul""".split())
SKIPPED_TAGS = frozenset("""head script style pre nav aside footer noscript template svg math
    textarea select""".split())
# Navigation bars, tables of contents and indexes of the DocBook, AsciiDoc and
# Sphinx pages in the Debian packages; DocBook's literallayout is verbatim text
# like <pre>.
SKIPPED_CLASSES = frozenset("""navheader navfooter docnav toc toctree-wrapper list-of-figures
    list-of-tables list-of-examples list-of-procedures list-of-equations breadcrumb
    breadcrumbs sphinxsidebar related headerlink footer footnote-reference reportbug
    index indextable genindextable literallayout""".split())
SKIPPED_IDS = frozenset("toc toctitle header footer navigation breadcrumbs".split())
VOID_TAGS = frozenset("""area base br col embed hr img input link meta param source track
    wbr""".split())
# A source line break between two Japanese characters: browsers render it as a
# space, but Japanese is written without one.
JAPANESE_LINE_BREAK = re.compile(r"(?<=%s)[ \t\r]*\n\s*(?=%s)" % (NO_SPACE_SCRIPT.pattern,
                                                                 NO_SPACE_SCRIPT.pattern))
FOOTNOTE_MARKER = re.compile(r"^\s*\[\s*(?:\d+|[a-z])\s*\]\s*$")


HIDDEN_STYLE = re.compile(r"display\s*:\s*none|visibility\s*:\s*hidden", re.I)


def is_hidden(attrs):
    """Not shown by a browser (LibreOffice help hides other systems' variants)."""
    return "hidden" in attrs or bool(HIDDEN_STYLE.search(attrs.get("style") or ""))


class HtmlParagraphs(html.parser.HTMLParser):
    """Collects the visible paragraphs of one HTML page."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.paragraphs = []
        self._pieces = []
        self._skip_tag = None
        self._skip_depth = 0
        self._superscripts = []  # (paragraph count, piece index) of each open <sup>

    def _is_skipped(self, tag, attrs):
        if tag in SKIPPED_TAGS:
            return True
        if tag in ("html", "body"):  # AsciiDoc marks <body class="toc2"> for a side TOC
            return False
        attrs = dict(attrs)
        classes = set((attrs.get("class") or "").split())
        return (bool(classes & SKIPPED_CLASSES) or attrs.get("id") in SKIPPED_IDS
                or attrs.get("role") == "navigation" or is_hidden(attrs))

    def _break(self):
        text = JAPANESE_LINE_BREAK.sub("", "".join(self._pieces)).strip()
        if text:
            self.paragraphs.append(text)
        self._pieces = []

    def handle_starttag(self, tag, attrs):
        if self._skip_tag is not None:
            self._skip_depth += tag == self._skip_tag
            return
        if tag not in VOID_TAGS and self._is_skipped(tag, attrs):
            self._skip_tag, self._skip_depth = tag, 1
            return
        if tag in BLOCK_TAGS:
            self._break()
        elif tag == "sup":
            self._superscripts.append((len(self.paragraphs), len(self._pieces)))

    def handle_startendtag(self, tag, attrs):
        if self._skip_tag is None and tag in BLOCK_TAGS:
            self._break()

    def handle_endtag(self, tag):
        if self._skip_tag is not None:
            if tag == self._skip_tag:
                self._skip_depth -= 1
                if self._skip_depth == 0:
                    self._skip_tag = None
            return
        if tag in BLOCK_TAGS:
            self._break()
        elif tag == "sup" and self._superscripts:
            self._drop_footnote_marker(*self._superscripts.pop())

    def _drop_footnote_marker(self, paragraph_count, start):
        # "[3]" and "[a]" superscripts point at footnotes; others (10^-12) stay.
        if paragraph_count == len(self.paragraphs) and \
                FOOTNOTE_MARKER.match("".join(self._pieces[start:])):
            del self._pieces[start:]

    def handle_data(self, data):
        if self._skip_tag is None:
            self._pieces.append(data)

    def close(self):
        super().close()
        self._break()


def html_to_paragraphs(markup):
    parser = HtmlParagraphs()
    parser.feed(markup)
    parser.close()
    return parser.paragraphs


# ----------------------------------------------------------------- man pages

ROFF_REDIRECT = re.compile(r"^\.so\s+\S+\s*$")
ROFF_PAGE = re.compile(r"^[.'][ \t]*(TH|Dd|Dt|SH|Sh)\b", re.M)
ROFF_COMMENT = re.compile(r'(?:^|[^\\])(?:\\\\)*\\"')  # \" not itself escaped
TRAILING_FONT_ESCAPES = re.compile(r"(?:\\f(?:\[[^\]]*\]|\(..|.)|\\&)+$")
LEADING_FONT_ESCAPES = re.compile(r"^(?:\\f(?:\[[^\]]*\]|\(..|.)|\\&)+")
OVERSTRUCK = re.compile(".\b")  # grotty draws accents as "char, backspace, accent"
# Wide enough that no paragraph wraps; grotty drops text beyond about 30000n.
GROFF_LINE_LENGTH = "20000n"


def is_request(line):
    return line.startswith((".", "'"))


def is_redirect_page(source):
    """A page that is only `.so other-page` (an alias of another page)."""
    lines = [l for l in source.splitlines() if l.strip() and not l.startswith((".\\\"", "'\\\""))]
    return len(lines) == 1 and bool(ROFF_REDIRECT.match(lines[0]))


def looks_like_roff(source):
    return bool(ROFF_PAGE.search(source)) or is_redirect_page(source)


def glue_japanese_line_breaks(source):
    """Append roff's \\c to a text line that ends in a Japanese character when
    the next text line starts with one: troff would turn that line break into
    a space (or, in no-fill blocks, a new line) in the middle of a sentence."""
    lines = source.split("\n")
    for i, line in enumerate(lines[:-1]):
        line = line.rstrip(" \t")
        following = lines[i + 1]
        if is_request(line) or is_request(following) or line.endswith("\\") or \
                ROFF_COMMENT.search(line):
            continue
        left = TRAILING_FONT_ESCAPES.sub("", line)
        right = LEADING_FONT_ESCAPES.sub("", following)
        if joins_without_space(left, right):
            lines[i] = line + "\\c"
    return "\n".join(lines)


def groff_available():
    return shutil.which("groff") is not None


def render_with_groff(source):
    """Plain text of a man page as groff lays it out on a very wide terminal,
    so each filled paragraph comes out as one line. Raises RuntimeError."""
    command = ["groff", "-t", "-Kutf8", "-Tutf8", "-mandoc", "-P-cbu", "-rcR=1", "-rHY=0",
               "-rLL=" + GROFF_LINE_LENGTH, "-rLT=" + GROFF_LINE_LENGTH]
    result = subprocess.run(command, input=glue_japanese_line_breaks(source).encode("utf-8"),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=120)
    if result.returncode != 0:
        raise RuntimeError(result.stderr.decode("utf-8", "replace").strip()[-300:])
    return result.stdout.decode("utf-8", "replace")


def groff_output_paragraphs(rendered):
    """Each non-empty output line, without the running header and footer."""
    rendered = OVERSTRUCK.sub("", rendered)
    lines = [line for line in rendered.splitlines() if line.strip()]
    return lines[1:-1] if len(lines) >= 2 else []


# --- built-in roff stripper, used when groff is missing or fails on a page

ROFF_GLYPHS = {"em": "\u2014", "en": "\u2013", "hy": "-", "mi": "-", "lq": "\u201c",
               "rq": "\u201d", "oq": "\u2018", "cq": "\u2019", "aq": "'", "dq": '"',
               "bu": "\u2022", "co": "\u00a9", "rg": "\u00ae", "tm": "\u2122", "de": "\u00b0",
               "mu": "\u00d7", "di": "\u00f7", "+-": "\u00b1", "<=": "\u2264", ">=": "\u2265",
               "!=": "\u2260", "->": "\u2192", "<-": "\u2190", "ti": "~", "ha": "^",
               "rs": "\\", "ga": "`", "aa": "\u00b4", "sl": "/", "ba": "|", "br": "|",
               "dg": "\u2020", "sc": "\u00a7", "ps": "\u00b6", "Tm": "\u2122", "R": "\u00ae",
               "lB": "[", "rB": "]", "lC": "{", "rC": "}", "la": "\u27e8", "ra": "\u27e9"}
ROFF_SIMPLE_ESCAPES = {"e": "\\", "\\": "\\", "-": "-", " ": " ", "~": " ", "0": " ",
                       "t": " ", "&": "", "|": "", "^": "", "%": "", ",": "", "/": "",
                       ")": "", "c": "", ":": "", "{": "", "}": "", ".": ".",
                       "'": "\u00b4", "`": "`", "a": ""}
ONE_ARGUMENT_ESCAPES = "fFgkmMnVY*"
QUOTED_ARGUMENT_ESCAPES = "bCDhHlLNoRSvwxXZ"
ROFF_NAME = re.compile(r"\(..|\[[^\]]*\]|.", re.S)
ROFF_SIZE = re.compile(r"[+-]?(?:\(\d\d|\[\d+\]|\d)")


def roff_glyph(name):
    if re.fullmatch(r"u[0-9A-Fa-f]{4,6}", name):
        return chr(int(name[1:], 16))
    return ROFF_GLYPHS.get(name, "")


def strip_roff_escapes(text):
    """Text of a roff line with escapes resolved or removed."""
    out, i = [], 0
    while i < len(text):
        char = text[i]
        if char != "\\" or i + 1 == len(text):
            out.append(char)
            i += 1
            continue
        kind = text[i + 1]
        i += 2
        if kind == '"' or kind == "#":  # comment to end of line
            break
        if kind in "([":
            match = ROFF_NAME.match(text, i - 1)
            out.append(roff_glyph(match.group()[1:].rstrip("]")))
            i = match.end()
        elif kind in ONE_ARGUMENT_ESCAPES:
            match = ROFF_NAME.match(text, i)
            name = match.group().lstrip("([").rstrip("]") if match else ""
            if kind == "*":  # predefined strings: \*(lq, \*R, \*(Tm ...
                out.append(roff_glyph(name))
            i = match.end() if match else i
        elif kind == "s":
            match = ROFF_SIZE.match(text, i)
            i = match.end() if match else i
        elif kind in QUOTED_ARGUMENT_ESCAPES and i < len(text):
            end = text.find(text[i], i + 1)
            end = len(text) - 1 if end < 0 else end
            argument = text[i + 1:end]
            if kind == "N" and argument.isdigit():
                out.append(chr(int(argument)))
            elif kind == "C":
                out.append(roff_glyph(argument))
            i = end + 1
        else:
            out.append(ROFF_SIMPLE_ESCAPES.get(kind, kind))
    return "".join(out)


def roff_arguments(line):
    """The macro name and arguments of a request line ("quoted" args allowed)."""
    body = line[1:].strip()
    name, _, rest = body.partition(" ")
    return name, [a[1:-1] if a.startswith('"') else a
                  for a in re.findall(r'"[^"]*"?|\S+', rest)]


ROFF_HEADINGS = {"SH", "SS", "Sh", "Ss"}
ROFF_BREAKS = {"PP", "P", "LP", "sp", "br", "TP", "TQ", "HP", "RS", "RE", "in", "ti",
               "Pp", "Bl", "El", "Bd", "Ed", "It", "bp", "ne", "Lp"}
ROFF_ALTERNATING_FONTS = {"BR", "RB", "IR", "RI", "BI", "IB"}
ROFF_INLINE = {"B", "I", "SM", "SB", "Nm", "Nd", "Ar", "Xr", "Pa", "Em", "Sy", "Li", "Dq",
               "Ql", "Sq", "Op", "Cm", "Ev", "Va", "Fn", "Fa", "Ft", "Dv", "Er", "Ic", "An"}
# Requests that switch filling (joining text lines) off or on; section
# headings switch it back on too.
ROFF_FILL_MODE = {"nf": False, "EX": False, "fi": True, "EE": True}
ROFF_SKIPPED_BLOCKS = {"de": "..", "ig": "..", "am": ".."}


class RoffStripper:
    """A small man(7)/mdoc(7) reader for systems without groff: it knows
    headings, paragraph breaks, font macros, no-fill blocks and tables, and
    drops every other request."""

    def __init__(self):
        self.paragraphs = []
        self._lines = []
        self._nofill = False
        self._heading_next = False  # `.SH` without arguments: the next line is the heading
        self._table = None  # inside .TS/.TE: "format" until the format line, then "rows"

    def feed(self, source):
        lines = iter(source.split("\n"))
        glued = False  # the previous text line ended in \c: no space before this one
        for line in lines:
            if is_request(line):
                self._request(line, lines)
            elif self._table:
                self._table_line(line)
            else:
                self._text(strip_roff_escapes(line), glued=glued,
                           starts_block=line[:1].isspace() or not line.strip())
                glued = line.endswith("\\c")
        self._break()
        return self.paragraphs

    def _break(self):
        paragraph = join_lines(self._lines)
        if paragraph:
            self.paragraphs.append(paragraph)
        self._lines = []

    def _text(self, text, starts_block=False, glued=False):
        # A sentence broken between two Japanese characters continues the
        # previous line, even in a no-fill block (as with groff above).
        previous = self._lines[-1].rstrip() if self._lines else ""
        if previous and text.strip() and (glued or joins_without_space(previous, text)):
            self._lines[-1] = previous + text.lstrip()
            return
        if starts_block or self._nofill or self._heading_next:
            self._break()
        if text.strip():
            self._lines.append(text)
            if self._heading_next:
                self._heading_next = False
                self._break()

    def _request(self, line, lines):
        name, args = roff_arguments(line)
        if name.startswith('\\"'):
            return
        if name in ROFF_SKIPPED_BLOCKS:
            for skipped in lines:
                if skipped.strip() == ROFF_SKIPPED_BLOCKS[name]:
                    break
        elif name in ROFF_HEADINGS:
            self._break()
            self._nofill = False
            self._heading_next = not args
            self._text(strip_roff_escapes(" ".join(args)))
            self._break()
        elif name in ROFF_FILL_MODE:
            self._break()
            self._nofill = not ROFF_FILL_MODE[name]
        elif name == "TS":
            self._break()
            self._table = "format"
        elif name == "TE":
            self._table = None
        elif name == "IP":
            self._break()
            self._text(strip_roff_escapes(args[0]) if args else "")
        elif name in ROFF_BREAKS:
            self._break()
        elif name in ROFF_ALTERNATING_FONTS:
            self._text(strip_roff_escapes("".join(args)))
        elif name in ROFF_INLINE:
            self._text(strip_roff_escapes(" ".join(args)))

    def _table_line(self, line):
        # tbl: option and format lines come first; the format ends with ".".
        if self._table == "format":
            if line.rstrip().endswith("."):
                self._table = "rows"
            return
        row = line.replace("T{", "").replace("T}", "")
        cells = [strip_roff_escapes(c) for c in row.split("\t")]
        self.paragraphs.append(" ".join(c for c in cells if c.strip()))


def strip_roff(source):
    return RoffStripper().feed(source)


def man_to_paragraphs(source, use_groff=True):
    """Paragraphs of a man page: groff's rendering, or the built-in stripper."""
    if use_groff:
        try:
            return groff_output_paragraphs(render_with_groff(source))
        except (OSError, RuntimeError, subprocess.TimeoutExpired):
            pass
    return strip_roff(source)


# ---------------------------------------------------------------- documents

def text_to_documents(text):
    """Plain text in the corpus format: a line per paragraph, "\\n\\n\\n"
    between documents."""
    text = text.replace("\r\n", "\n")
    return [document.split("\n") for document in text.split(DOCUMENT_SEPARATOR)]


def source_kind(path, with_text):
    """'html', 'man' or 'text' for a file worth reading, else None."""
    name = path[:-3] if path.endswith(".gz") else path
    lower = name.lower()
    if lower.endswith(HTML_SUFFIXES):
        return "html"
    if with_text and lower.endswith(TEXT_SUFFIXES):
        return "text"
    if MAN_PAGE_NAME.search(os.path.basename(name)):
        return "man"
    return None


def find_sources(root, with_text, excluded=()):
    """(path, kind) of each readable file under root, in sorted path order.
    Symbolic links are skipped: in packages they are aliases of other pages.
    Folders in `excluded` (our own output) are not entered."""
    excluded = {os.path.abspath(e) for e in excluded}
    found = []
    for folder, subfolders, files in os.walk(root):
        subfolders[:] = [d for d in subfolders
                         if os.path.abspath(os.path.join(folder, d)) not in excluded]
        for name in files:
            path = os.path.join(folder, name)
            kind = None if os.path.islink(path) else source_kind(path, with_text)
            if kind:
                found.append((os.path.relpath(path, root).replace(os.sep, "/"), path, kind))
    return [(path, kind) for _, path, kind in sorted(found)]


def read_documents(path, kind, use_groff):
    """Raw paragraphs of each document in one source file."""
    text = read_source(path)
    if kind == "html":
        return [html_to_paragraphs(text)]
    if kind == "text":
        return text_to_documents(text)
    if not looks_like_roff(text) or is_redirect_page(text):
        return []
    return [man_to_paragraphs(text, use_groff)]


class ParagraphDeduplicator:
    """Keeps a paragraph only the first time it is seen in the whole corpus.

    A document's paragraphs only count as seen once the document is kept, so
    every removed paragraph has a copy earlier in the output.
    """

    def __init__(self):
        self.seen = set()

    def add_text(self, text):
        for document in text.split(DOCUMENT_SEPARATOR):
            self.seen.update(line for line in document.split("\n") if line)

    def accept(self, paragraphs):
        """The document's new paragraphs, or None if too little Japanese remains."""
        fresh, local = [], set()
        for paragraph in paragraphs:
            if paragraph not in self.seen and paragraph not in local:
                local.add(paragraph)
                fresh.append(paragraph)
        if not is_japanese_document(fresh):
            return None
        self.seen.update(fresh)
        return fresh


def is_japanese_document(paragraphs):
    text = "".join(paragraphs)
    japanese = count_japanese(text)
    kana = len(KANA.findall(text))
    return japanese >= MIN_DOC_JAPANESE_CHARS and kana >= MIN_DOC_KANA_SHARE * japanese


def build_shard_text(sources, dedup, use_groff, label):
    """The shard text for a list of (path, kind) sources."""
    from tqdm import tqdm

    def paragraphs_of(source):
        path, kind = source
        try:
            return [clean_paragraphs(doc) for doc in read_documents(path, kind, use_groff)]
        except (OSError, EOFError, zlib.error) as e:
            warn("cannot read %s: %s" % (path, e))
            return []

    kept = []
    workers = max(1, min(8, os.cpu_count() or 1))
    with concurrent.futures.ThreadPoolExecutor(workers) as pool:
        for documents in tqdm(pool.map(paragraphs_of, sources), total=len(sources),
                              desc=label, unit="doc", file=sys.stderr, disable=None):
            for paragraphs in documents:
                fresh = dedup.accept(paragraphs)
                if fresh:
                    kept.append("\n".join(fresh))
    return DOCUMENT_SEPARATOR.join(kept) + "\n" if kept else ""


# ------------------------------------------------------------------- output

def warn(message):
    sys.stderr.write("get_corpus: warning: %s\n" % message)


def shard_statistics(path):
    with open(path, encoding="utf-8") as f:
        text = f.read()
    documents = len([d for d in text.split(DOCUMENT_SEPARATOR) if d.strip()])
    return {"documents": documents, "characters": len(text), "japanese_share": japanese_share(text)}


def format_summary(groups):
    """A table of documents, characters and Japanese share per shard.
    groups: list of (title, [path, ...])."""
    rows = []
    for title, paths in groups:
        stats = [(p, shard_statistics(p)) for p in paths if os.path.isfile(p)]
        if not stats:
            continue
        for path, s in stats:
            rows.append((path, s["documents"], s["characters"], s["japanese_share"]))
        documents = sum(s["documents"] for _, s in stats)
        characters = sum(s["characters"] for _, s in stats)
        share = (sum(s["japanese_share"] * s["characters"] for _, s in stats) / characters
                 if characters else 0.0)
        rows.append(("total " + title, documents, characters, share))
    width = max([len(r[0]) for r in rows] + [5])
    lines = ["%-*s %10s %12s %9s" % (width, "shard", "documents", "characters", "japanese")]
    lines += ["%-*s %10d %12d %8.1f%%" % (width, r[0], r[1], r[2], 100 * r[3]) for r in rows]
    return "\n".join(lines) + "\n" + \
        "(japanese = hiragana, katakana and kanji as a share of non-space characters)\n"


# ------------------------------------------------------------- Debian packages

class DownloadError(Exception):
    def __init__(self, package, reason):
        super().__init__("cannot download Debian package %s (%s); check the name with "
                         "`apt-cache policy %s`, run `apt-get update` first, or build from "
                         "your own text with --from DIR" % (package, reason, package))
        self.package = package


def cached_deb(cache_dir, package):
    """The newest cached .deb of package, or None."""
    prefix = package + "_"
    if not os.path.isdir(cache_dir):
        return None
    debs = [os.path.join(cache_dir, n) for n in os.listdir(cache_dir)
            if n.startswith(prefix) and n.endswith(".deb")]
    return max(debs, key=os.path.getmtime) if debs else None


def download_deb(cache_dir, package):
    """Path of package's .deb, fetched with `apt-get download` unless cached."""
    found = cached_deb(cache_dir, package)
    if found:
        return found
    if shutil.which("apt-get") is None:
        raise DownloadError(package, "apt-get not found: this is not a Debian-based system")
    os.makedirs(cache_dir, exist_ok=True)
    # Download into a private folder so an interrupted run leaves no partial .deb.
    with tempfile.TemporaryDirectory(dir=cache_dir, prefix=".download-") as folder:
        result = subprocess.run(["apt-get", "download", "-q", package], cwd=folder,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        errors = [l for l in result.stderr.decode("utf-8", "replace").splitlines()
                  if l.startswith("E:")]
        debs = [n for n in os.listdir(folder) if n.endswith(".deb")]
        if result.returncode != 0 or not debs:
            reason = errors[-1] if errors else "apt-get exit status %d" % result.returncode
            raise DownloadError(package, reason)
        target = os.path.join(cache_dir, debs[0])
        os.replace(os.path.join(folder, debs[0]), target)
    return target


def unpack_deb(deb, folder):
    if shutil.which("dpkg-deb") is None:
        cli.fail("dpkg-deb not found; install dpkg or build from your own text with --from DIR")
    result = subprocess.run(["dpkg-deb", "-x", deb, folder], stderr=subprocess.PIPE)
    if result.returncode != 0:
        cli.fail("dpkg-deb -x %s failed: %s (delete the file to download it again)"
                 % (deb, result.stderr.decode("utf-8", "replace").strip()))


# --------------------------------------------------------------------- main

def parse_packages(values):
    """Package names from space- and/or comma-separated values."""
    names = [n for v in values for n in v.split(",") if n]
    for name in names:
        if not DEBIAN_PACKAGE_NAME.match(name):
            cli.fail("not a Debian package name: %r" % name)
    return names


def build_parser():
    parser = cli.ArgumentParser(
        prog="get_corpus.py",
        description="Build a plain-text Japanese corpus (one shard per Debian package: a "
                    "paragraph per line, documents separated by two empty lines) from "
                    "Debian's Japanese documentation, or from your own --from DIR.",
        epilog="Optional extra packages (Debian 12): %s. Packages that fail to download are "
               "skipped with a warning if at least one training package succeeds. Existing "
               "shards are kept unless --force." % ", ".join(EXTRA_PACKAGES))
    parser.add_argument("--packages", nargs="+", default=CORE_PACKAGES, metavar="PKG",
                        help="Debian packages for the training shards, in priority order "
                             "for duplicate removal")
    parser.add_argument("--heldout_packages", nargs="*", default=HELDOUT_PACKAGES, metavar="PKG",
                        help="Debian packages kept apart as held-out text")
    parser.add_argument("--output_dir", default=os.path.join("data", "corpus"),
                        help="folder for the training shards (<package>.txt)")
    parser.add_argument("--heldout_dir", default=os.path.join("data", "heldout"),
                        help="folder for the held-out shards")
    parser.add_argument("--from", dest="from_dir", metavar="DIR",
                        help="read .txt/.html files (and man pages) under DIR instead of "
                             "downloading; the shard is named after DIR. .txt: a paragraph "
                             "per line, documents separated by two empty lines")
    parser.add_argument("--cache_dir", default=os.path.join("data", "debs"),
                        help="keep downloaded .deb files here so later runs need no network")
    parser.add_argument("--force", action="store_true",
                        help="rebuild and overwrite existing shards")
    return parser


def shard_name(name):
    return re.sub(r"[^\w.+-]", "_", name) or "corpus"


def plan_shards(args):
    """[(source, shard path, kind)] in dedup order; kind is 'package' or 'folder'."""
    if args.from_dir:
        if not os.path.isdir(args.from_dir):
            cli.fail("--from folder not found: %s" % args.from_dir)
        name = shard_name(os.path.basename(os.path.abspath(args.from_dir)))
        return [(args.from_dir, os.path.join(args.output_dir, name + ".txt"), "folder")], []
    packages = parse_packages(args.packages)
    heldout = parse_packages(args.heldout_packages)
    if not packages:
        cli.fail("--packages is empty")
    both = set(packages) & set(heldout)
    if both:
        cli.fail("packages both in training and held-out: %s" % ", ".join(sorted(both)))
    train = [(p, os.path.join(args.output_dir, p + ".txt"), "package") for p in packages]
    held = [(p, os.path.join(args.heldout_dir, p + ".txt"), "package") for p in heldout]
    return train, held


def fetch_debs(args, shards):
    """({package: .deb path}, [DownloadError]) for the package shards to build."""
    debs, failures = {}, []
    for source, _, kind in shards:
        if kind != "package":
            continue
        try:
            debs[source] = download_deb(args.cache_dir, source)
        except DownloadError as e:
            failures.append(e)
    return debs, failures


def build_shard(args, source, kind, deb, dedup, use_groff):
    if kind == "folder":
        sources = find_sources(source, True, excluded=[args.output_dir, args.heldout_dir])
        label = os.path.basename(os.path.abspath(source))
        return build_shard_text(sources, dedup, use_groff, label)
    with tempfile.TemporaryDirectory(prefix="get_corpus-") as folder:
        unpack_deb(deb, folder)
        return build_shard_text(find_sources(folder, with_text=False), dedup, use_groff, source)


def main(args):
    for flag in ("output_dir", "heldout_dir"):
        folder = getattr(args, flag, None)
        if folder and os.path.exists(folder) and not os.path.isdir(folder):
            cli.fail("--%s %s is a file, not a directory" % (flag, folder))
    train, held = plan_shards(args)
    groups = [("training", [s[1] for s in train]), ("held-out", [s[1] for s in held])]
    todo = [s for s in train + held if args.force or not os.path.isfile(s[1])]
    if not todo:
        print("All shards exist (use --force to rebuild):")
        sys.stdout.write(format_summary(groups))
        return 0

    debs, failures = fetch_debs(args, todo)
    buildable = [s for s in todo if s[2] == "folder" or s[0] in debs]
    if not any(s in buildable or os.path.isfile(s[1]) for s in train):
        cli.fail(str(failures[0]))
    for failure in failures:
        warn("%s; skipped" % failure)

    use_groff = groff_available()
    if not use_groff:
        warn("groff not found; man pages go through the built-in roff stripper "
             "(for cleaner text: apt-get install groff)")
    # Shards kept from earlier runs come first for duplicate removal, so no
    # paragraph is repeated anywhere in the set.
    dedup = ParagraphDeduplicator()
    for _, path, _ in train + held:
        if path not in [s[1] for s in buildable] and os.path.isfile(path):
            with open(path, encoding="utf-8") as f:
                dedup.add_text(f.read())
    for source, path, kind in buildable:
        text = build_shard(args, source, kind, debs.get(source), dedup, use_groff)
        if text:
            write_text_atomic(path, text)
        elif kind == "folder":
            cli.fail("no Japanese text found under %s (it reads .txt, .html and man "
                     "pages; see --help)" % source)
        else:
            warn("%s has no Japanese documents; no shard written" % source)
    sys.stdout.write(format_summary(groups))
    return 0


if __name__ == "__main__":
    cli.run(main, build_parser())
