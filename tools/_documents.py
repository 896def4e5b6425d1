"""Reading the text of tools/make_tfrecord.py's inputs: documents out of a byte range of a
file, and their lines encoded as the record layouts need them.

Shared with tools/demo.py, which splits its class corpora exactly like the records do.
README.md, "Training records", states the document rule (two or more blank lines
separate documents) and which text is cleaned.
"""


def _is_blank(raw):
    return not raw.strip()


def _state_before(f, pos):
    """(text seen before, blank lines since it, capped at 2) for the line start `pos`."""
    window = 4096
    while True:
        lo = max(0, pos - window)
        f.seek(lo)
        lines = f.read(pos - lo).split(b"\n")[:-1]
        complete = lines if lo == 0 else lines[1:]  # the first may be cut by the window
        blanks = 0
        for line in reversed(complete):
            if not _is_blank(line):
                return True, blanks
            blanks += 1
            if blanks == 2:
                return True, 2
        if lo == 0:
            return False, blanks
        window *= 4


def read_block_documents(path, start, end, stats):
    """Yield (lines, offset) for each document whose first line starts in [start, end).

    A document that starts in the block is read to its end even past `end`; one that
    started before `start` is left to the previous block. `offset` is where reading
    stands after the document (for progress).
    """
    with open(path, "rb") as f:
        if start > 0:
            f.seek(start - 1)
            f.readline()  # the line holding byte start-1 belongs to the previous block
        pos = f.tell()
        seen_text, blanks = _state_before(f, pos) if pos > 0 else (False, 0)
        f.seek(pos)
        lines = None  # None while skipping the tail of the previous block's document
        for raw in f:
            line_start, pos = pos, pos + len(raw)
            if _is_blank(raw):
                blanks += 1
                continue
            if not seen_text or blanks >= 2:  # this line opens a document
                if lines:
                    yield lines, line_start
                if line_start >= end:
                    return
                lines = []
            elif lines is not None and blanks:
                lines.append("")
            seen_text, blanks = True, 0
            if lines is None:
                continue
            try:
                text = raw.decode("utf-8").rstrip("\r\n")
            except UnicodeDecodeError:
                stats["undecodable_lines"] += 1
                continue
            lines.append(text.lstrip("\ufeff") if line_start == 0 else text)
        if lines:
            yield lines, pos


def encode_lines(lines, enc, clean):
    """A document's ids in one encoding; its lines joined by <BR>."""
    # one call per document: the encoder turns each "\n" into <BR>, and is much faster
    # on long texts than line by line
    return enc.encode("\n".join(lines), clean=clean)


def encode_lines_both_ways(lines, enc):
    """Per line, (ids as written, ids cleaned): two lists; where cleaning leaves a line
    as it is, its cleaned entry is the very list of its raw ids.

    Cleaning is tried on the text first, because it changes few lines and encoding a
    line a second time costs as much as the first. Whether a clean pattern matches is
    the same before the encoder's own substitutions (<SP>, <TAB>, <|emojiN|>, "ー") as
    after them: they put in nothing a pattern consumes or could join across. No
    pattern consumes "\\n" either, so the document is cleaned in one call and split.
    """
    raw = enc.encode_batch(lines, False)
    cleaned_lines = enc.clean_text("\n".join(lines)).split("\n")
    if len(cleaned_lines) != len(lines):  # not expected; then clean every line
        changed = list(range(len(lines)))
    else:
        changed = [k for k, (line, cleaned) in enumerate(zip(lines, cleaned_lines))
                   if line != cleaned]
    cleaned = list(raw)
    for k, ids in zip(changed, enc.encode_batch([lines[k] for k in changed], True)):
        cleaned[k] = ids
    return raw, cleaned
