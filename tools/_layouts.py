"""The record layouts of tools/make_tfrecord.py: how token ids become examples.

pack and document (examples_from_document) lay out one Document or LineText at a time
with a NumPy generator; released (released_examples) reproduces the released
make_tfrecord_simple.py record for record, reading its files line by line with the
released draw order. Both give Example(x, y, num_input) rows of num_context ids. The
rules (prefix, masking, next sentence, <|bagoftoken|> runs, padding) are written out in
README.md, "Training records". Everything here is pure computation on ids, apart from
the released layout reading its input files.
"""
from collections import namedtuple
from dataclasses import dataclass

import numpy as np

from model.errors import UserError

SENTENCE_END = "。｡．.？！?!:：;；"
NEXTSENT_POOL = 1024          # sentences kept to draw "not the next sentence" from


# ---------------------------------------------------------------- vocabulary view
class TokenTable:
    """What the layout needs from the encoder, precomputed as lookup arrays."""

    def __init__(self, enc):
        self.sot, self.mask, self.sep = enc.startoftext, enc.inputmask, enc.separator
        self.nottoken, self.bag, self.seg = enc.nottoken, enc.bagoftoken, enc.segmenter
        self.eot = enc.endoftext
        self.br = enc.token_to_id("<BR>")
        if self.br is None:
            raise UserError("the vocabulary has no <BR> token")
        size = len(enc)
        self.ordinary = np.array([not enc.is_special(i) for i in range(size)], dtype=bool)
        self.ordinary_ids = np.flatnonzero(self.ordinary)
        self.sentence_end = np.zeros(size, dtype=bool)
        for char in SENTENCE_END:
            token = enc.token_to_id(char)
            if token is not None:
                self.sentence_end[token] = True
        self.sentence_boundary = self.sentence_end.copy()
        self.sentence_boundary[self.br] = True
        self.sentence_boundary[self.eot] = True  # packed text: a document's end ends a sentence


@dataclass(frozen=True)
class LayoutOptions:
    mode: str = "hybrid"
    num_context: int = 1280
    hybrid_rate: float = 1.0
    num_mask: float = 0.08
    max_mask: int = 100
    use_nextsent: bool = False
    layout: str = "pack"

    @property
    def nextsent_cap(self):
        return (self.num_context - 4) // 4


Example = namedtuple("Example", "x y num_input")
NextSentence = namedtuple("NextSentence", "tokens is_next")


class Document:
    """One document's token ids with its runs and sentence ends precomputed."""

    def __init__(self, tokens, table):
        self.tokens = np.asarray(tokens, dtype=np.int64)
        n = len(self.tokens)
        change = np.flatnonzero(self.tokens[1:] != self.tokens[:-1]) + 1
        self.run_starts = np.concatenate([[0], change]) if n else np.zeros(0, np.int64)
        self.run_ends = np.concatenate([change, [n]]) if n else np.zeros(0, np.int64)
        self.run_values = self.tokens[self.run_starts]
        self.boundaries = np.flatnonzero(table.sentence_boundary[self.tokens])

    def __len__(self):
        return len(self.tokens)

    def sentence_end(self, start):
        """End (exclusive) of the sentence that starts at `start`."""
        j = np.searchsorted(self.boundaries, start)
        return int(self.boundaries[j]) + 1 if j < len(self.boundaries) else len(self)

    # The text interface of examples_from_document, shared with LineText: a Document is
    # read in one encoding, so reading and releasing lines is nothing here.
    def ends_at(self, pos):
        return pos >= len(self)

    def length_from(self, start):
        return len(self) - start

    def sentence(self, start, end):
        return self.tokens[start:end]

    def prefix(self, start, n):
        return self.tokens[start:start + n]

    def lm_stream(self, start, budget, table):
        return take_lm_stream(self, start, budget, table)

    def token(self, pos):
        return int(self.tokens[pos])

    def release(self, pos):
        pass


class LineText:
    """A text whose lines each have two encodings, as written and cleaned; a line is
    read in the one the layout enters it with and keeps it to its end: entered while
    filling a next sentence or a prefix, as written; while filling the LM part,
    cleaned. That is the released split of an example (prefix as written, the rest of
    its last line too, LM lines cleaned), carried on over example boundaries.

    raw[k], cleaned[k]: line k's ids with its separator (<BR>, or <|endoftext|> between
    packed documents) appended. tokens[:size] is the text read so far, lines 0..lines-1.
    Positions are those of that text; a line is entered once a position in it is read.
    """

    def __init__(self, raw, cleaned, table):
        self.raw, self.cleaned, self.table = raw, cleaned, table
        raw_lengths = np.array([len(r) for r in raw], np.int64)
        self.raw_after = np.concatenate([np.cumsum(raw_lengths[::-1])[::-1], [0]])
        capacity = sum(max(len(r), len(c)) for r, c in zip(raw, cleaned))
        self.tokens = np.zeros(capacity, np.int64)
        self.size, self.lines, self.line_starts = 0, 0, []

    def _enter(self, cleaned):
        ids = (self.cleaned if cleaned else self.raw)[self.lines]
        self.line_starts.append(self.size)
        self.tokens[self.size:self.size + len(ids)] = ids
        self.size += len(ids)
        self.lines += 1

    def _read_until(self, pos, cleaned):
        while self.size < pos and self.lines < len(self.raw):
            self._enter(cleaned)

    def release(self, pos):
        """Forget the lines read ahead that start at or after `pos`: not entered yet."""
        while self.line_starts and self.line_starts[-1] >= pos:
            self.size = self.line_starts.pop()
            self.lines -= 1

    def ends_at(self, pos):
        return self.lines == len(self.raw) and pos >= self.size

    def length_from(self, start):
        """Tokens from `start` on, the lines not entered yet counted as written (what a
        prefix would read)."""
        return self.size - start + int(self.raw_after[self.lines])

    def sentence_end(self, start):
        searched = start
        while True:
            self._read_until(searched + 1, False)
            hits = np.flatnonzero(self.table.sentence_boundary[self.tokens[searched:self.size]])
            if hits.size:
                return searched + int(hits[0]) + 1
            if self.lines == len(self.raw):
                return self.size
            searched = self.size

    def sentence(self, start, end):
        return self.tokens[start:end].copy()  # kept in the pool; tokens[end:] is reused

    def prefix(self, start, n):
        self._read_until(start + n, False)
        return self.tokens[start:start + n]

    def lm_stream(self, start, budget, table):
        """take_lm_stream from `start`, reading new lines cleaned. The window grows
        until the stream ends before the window's last run (a run cut by the window
        could be compressed, or cost otherwise, in the whole text) or the text ends."""
        if budget <= 0:
            return np.zeros(0, np.int64), start
        want = start + budget + 1
        while True:
            self._read_until(want, True)
            hi = min(self.size, want)
            window = Document(self.tokens[start:hi], table)
            stream, end = take_lm_stream(window, 0, budget, table)
            if (self.lines == len(self.raw) and hi == self.size) or \
                    (len(window) and end < window.run_starts[-1]):
                return stream, start + end
            want = hi + max(budget, hi - start) + 1

    def token(self, pos):
        """The token at `pos`; a line not entered yet is read ahead cleaned (it is the
        LM part's next token), until release."""
        self._read_until(pos + 1, True)
        return int(self.tokens[pos])


def compress_runs(tokens, table):
    """Write each run of >= 3 identical ordinary tokens as the token + <|bagoftoken|>:
    take_lm_stream with room for all of `tokens` (the released layout, whose LM part
    is compressed line by line, so that a run never spans two lines)."""
    doc = Document(tokens, table)
    stream, _ = take_lm_stream(doc, 0, len(doc), table)
    return stream


def take_lm_stream(doc, start, budget, table):
    """The longest LM stream from raw position `start` that fits `budget` slots.

    Returns (stream, end): the run-compressed tokens and the raw position after them.
    A compressed run is atomic (2 slots); other runs may be cut anywhere.
    """
    if budget <= 0 or start >= len(doc):
        return np.zeros(0, np.int64), start
    first = int(np.searchsorted(doc.run_starts, start, side="right")) - 1
    window = slice(first, min(first + budget + 1, len(doc.run_starts)))
    counts = doc.run_ends[window] - doc.run_starts[window]
    counts[0] = doc.run_ends[first] - start
    values = doc.run_values[window]
    bagged = (counts >= 3) & table.ordinary[values]
    cost = np.where(bagged, 2, counts)
    filled = np.cumsum(cost)
    whole = int(np.searchsorted(filled, budget, side="right"))
    stream = np.repeat(values[:whole], cost[:whole])
    stream[(filled[:whole] - 1)[bagged[:whole]]] = table.bag
    end = int(doc.run_ends[first + whole - 1]) if whole else start
    room = budget - (int(filled[whole - 1]) if whole else 0)
    if whole < len(values) and room > 0 and not bagged[whole]:
        stream = np.concatenate([stream, np.full(room, values[whole])])
        end += room
    return stream, end


def mask_prefix(prefix, rng, table, opts):
    """BERT-style corruption of the prefix: returns (x tokens, masked positions)."""
    x = prefix.copy()
    count = min(int(rng.binomial(len(prefix), opts.num_mask)), opts.max_mask)
    positions = np.sort(rng.choice(len(prefix), count, replace=False))
    kind = rng.random(count)
    x[positions[kind < 0.8]] = table.mask
    randomised = positions[(kind >= 0.8) & (kind < 0.9)]
    x[randomised] = table.ordinary_ids[rng.integers(len(table.ordinary_ids), size=len(randomised))]
    return x, positions


def assemble(num_context, table, nextsent, prefix, prefix_x, masked, stream, ended,
             continuation):
    """Lay the parts out into (x, y, num_input), as README.md "Training records" draws it."""
    x = np.full(num_context, table.nottoken, np.int64)
    y = np.full(num_context, -1, np.int64)
    x[0] = table.sot
    pos = 1
    if nextsent is not None:
        n = len(nextsent.tokens)
        x[pos:pos + n] = nextsent.tokens
        y[pos + n - 1] = table.sep if nextsent.is_next else table.eot
        x[pos + n] = table.sep
        pos += n + 1
    x[pos:pos + len(prefix)] = prefix_x
    y[pos + masked - 1] = prefix[masked]
    seg = pos + len(prefix)
    x[seg] = table.seg
    m = len(stream)
    x[seg + 1:seg + 1 + m] = np.where(table.sentence_end[stream], table.sep, stream)
    y[seg:seg + m] = stream
    if ended:
        x[seg + 1 + m] = table.eot
        y[seg + m] = table.eot
    elif continuation is not None:
        y[seg + m] = continuation
    return Example(x, y, seg)


class SentencePool:
    """A bounded random sample of sentences seen so far, for false next sentences."""

    def __init__(self, rng, capacity=NEXTSENT_POOL):
        self.rng, self.capacity, self.items, self.seen = rng, capacity, [], 0

    def add(self, sentence):
        self.seen += 1
        if len(self.items) < self.capacity:
            self.items.append(sentence)
        else:
            j = int(self.rng.integers(self.seen))
            if j < self.capacity:
                self.items[j] = sentence

    def draw(self):
        return self.items[int(self.rng.integers(len(self.items)))] if self.items else None


def take_nextsent(doc, start, rng, pool, opts):
    """Pull the first sentence off the text; returns (NextSentence or None, new start)."""
    end = doc.sentence_end(start)
    if doc.ends_at(end):  # nothing would follow it
        doc.release(start)
        return None, start
    sentence = doc.sentence(start, end)
    use_true = rng.random() < 0.5
    other = None if use_true else pool.draw()
    pool.add(sentence)
    if other is None or np.array_equal(other, sentence):
        tokens, is_next = sentence, True
    else:
        tokens, is_next = other, False
    return NextSentence(tokens[-opts.nextsent_cap:], is_next), end


def prefix_length(opts, rng, available, room):
    if opts.mode == "mlm":  # released: the segmenter at num_context - 2, one LM token after
        return min(available, room - 1)
    if opts.mode == "hybrid" and rng.random() < opts.hybrid_rate:
        drawn = int(rng.integers(0, min(opts.num_context - 2, available + 1)))
        return min(drawn, room)
    return 0


def examples_from_document(doc, table, opts, rng, pool, stats):
    """Yield the examples that cover one text (a Document or a LineText), consuming it
    front to back."""
    start = 0
    while not doc.ends_at(start):
        begin, nextsent = start, None
        if opts.use_nextsent:
            nextsent, start = take_nextsent(doc, start, rng, pool, opts)
        pos = 1 + (len(nextsent.tokens) + 1 if nextsent else 0)
        available = doc.length_from(start)
        n_prefix = prefix_length(opts, rng, available, opts.num_context - pos - 1)
        if n_prefix == available:  # all the text is prefix: <|endoftext|> must fit too
            n_prefix = min(n_prefix, opts.num_context - pos - 2)
        prefix = doc.prefix(start, n_prefix)
        prefix_x, masked = mask_prefix(prefix, rng, table, opts)
        seg = pos + n_prefix
        slots = opts.num_context - seg - 1
        stream, end = doc.lm_stream(start + n_prefix, slots, table)
        if doc.ends_at(end) and len(stream) == slots:  # no room left for <|endoftext|>
            stream, end = doc.lm_stream(start + n_prefix, slots - 1, table)
        ended = doc.ends_at(end)
        # the continuation target is the LM part's next token: a line not entered yet
        # is read there cleaned, like any line the LM part enters
        continuation = None if ended else doc.token(end)
        doc.release(end)
        if end <= begin:
            raise RuntimeError("layout made no progress at token %d" % begin)
        start = end
        example = assemble(opts.num_context, table, nextsent, prefix, prefix_x, masked,
                           stream, ended, continuation)
        count_example(stats, example, nextsent, n_prefix, len(masked), stream, table)
        yield example


def count_example(stats, example, nextsent, n_prefix, n_masked, stream, table):
    stats["examples"] += 1
    stats["prefix_tokens"] += n_prefix
    stats["masked_tokens"] += n_masked
    stats["lm_tokens"] += len(stream)
    stats["bag_runs"] += int(np.count_nonzero(stream == table.bag))
    stats["padding_tokens"] += int(np.count_nonzero(example.x == table.nottoken))
    stats["target_tokens"] += int(np.count_nonzero(example.y >= 0))
    if n_prefix:
        stats["examples_with_prefix"] += 1
    if nextsent is not None:
        stats["nextsent_true" if nextsent.is_next else "nextsent_false"] += 1


# ---------------------------------------------------------------- the released layout
# The released make_tfrecord_simple.py, reconstructed from its recorded output (its records
# on known inputs and seeds) rather than from its source. Each released process owns some
# files and a numpy RandomState seeded with its index; for every example it draws, in this
# order: the file (randint over the files still open), the hybrid_rate test (a uniform,
# drawn in every mode), with --use_nextsent the true/random choice (and for a random
# sentence the file to take it from), the prefix length, then per masked position its kind
# (and a random token). Matching that order is what makes the records identical.
class _ReleasedFile:
    """One input file read line by line, as the released tool reads it: reading can be
    rewound to the first line (the released tool closes a file it took a random sentence
    from, and opens it again when it next reads from it)."""

    def __init__(self, path, class_id, stats):
        self.path, self.class_id, self.stats = path, class_id, stats
        self.handle, self.at_start = None, True

    def readline(self):
        """The next line with its line break (which the encoder turns into <BR>), or
        None at the end. A line that is not UTF-8 is skipped and counted."""
        while True:
            if self.handle is None:
                self.handle = open(self.path, "rb")
            raw = self.handle.readline()
            if not raw:
                return None
            first, self.at_start = self.at_start, False
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError:
                self.stats["undecodable_lines"] += 1
                continue
            self.stats["lines"] += 1
            return text.lstrip("\ufeff") if first else text

    def rewind(self):
        self.close()
        self.at_start = True

    def close(self):
        if self.handle is not None:
            self.handle.close()
            self.handle = None


def released_process_rng(seed, process):
    """The released worker seeds numpy with its process index; --seed 0 is that."""
    return np.random.RandomState(process if seed == 0 else [seed, process])


def released_file_order(files, seed):
    """The released tool shuffles its file list once (numpy's global generator, which it
    never seeds; seeded here with --seed) and deals it out to the processes."""
    order = list(files)
    np.random.RandomState(seed).shuffle(order)
    return order


def released_examples(files, process, num_process, opts, enc, table, clean, seed, stats):
    """Yield (Example, i) for one released process over its `files` [(path, class_id)].

    clean: (prefix, LM part) -> encode with cleaning. `i` is the class id with a CSV
    (class ids given), else the running id num_written * num_process + process.
    """
    rs = released_process_rng(seed, process)
    C = opts.num_context
    vocabulary_size = len(table.ordinary)
    handles = [_ReleasedFile(path, class_id, stats) for path, class_id in files]
    open_files, written = list(handles), 0
    clean_prefix, clean_lm = clean

    def encode(line, cleaned):
        return enc.encode(line, clean=cleaned)
    try:
        while open_files:
            fi = int(rs.randint(len(open_files)))
            f = open_files[fi]
            hybrid_draw = rs.random()
            nextsent = None
            # the first line is read before anything else is drawn: a file found at its
            # end is closed without further draws
            line = f.readline()
            if line is None:
                f.close()
                open_files.pop(fi)
                continue
            if opts.use_nextsent:
                if rs.random() < 0.5:  # the true next sentence: this line, then the next
                    following = f.readline()
                    if following is not None:
                        nextsent = NextSentence(encode(line, clean_prefix)[:(C - 2) // 2], True)
                        line = following
                else:  # a random sentence: a line of a random file, rewound after
                    other = open_files[int(rs.randint(len(open_files)))]
                    taken = other.readline()
                    if taken is not None:
                        nextsent = NextSentence(encode(taken, clean_prefix)[:(C - 2) // 2],
                                                False)
                    other.rewind()
            pending = line
            base = 1 + (len(nextsent.tokens) + 1 if nextsent is not None else 0)
            if opts.mode == "hybrid":
                n_prefix = int(rs.randint(0, C - 1 - base)) if hybrid_draw < opts.hybrid_rate \
                    else 0
            elif opts.mode == "mlm":
                n_prefix = C - 2 - base
            else:
                n_prefix = 0
            buffer, complete = [], True
            while len(buffer) < n_prefix:
                line, pending = (pending, None) if pending is not None else (f.readline(), None)
                if line is None:
                    complete = False
                    break
                buffer.extend(encode(line, clean_prefix))
            if not complete:  # the file ended inside the prefix: no example, file closed
                f.close()
                open_files.pop(fi)
                continue
            prefix = np.asarray(buffer[:n_prefix], np.int64)
            rest = np.asarray(buffer[n_prefix:], np.int64)
            rate = opts.num_mask / 2 if nextsent is not None else opts.num_mask
            count = min(int(n_prefix * rate), opts.max_mask)
            prefix_x, prefix_y = prefix.copy(), np.full(n_prefix, -1, np.int64)
            if n_prefix:
                for q in rs.choice(n_prefix, count, replace=False):
                    prefix_y[q] = prefix[q]
                    if rs.random() < 0.8:
                        prefix_x[q] = table.mask
                    elif rs.random() < 0.5:
                        prefix_x[q] = rs.randint(0, vocabulary_size)
            # the rest of the line the prefix ended in stays as it was encoded for the
            # prefix (no separators); the lines after it are LM lines
            lm_x, lm_y, need, ended = [rest], [rest], C - base - n_prefix, False
            have = len(rest)
            while have < need:
                line, pending = (pending, None) if pending is not None else (f.readline(), None)
                if line is None:
                    ended = True
                    break
                tokens = compress_runs(encode(line, clean_lm), table)  # released: per line
                lm_y.append(tokens)
                lm_x.append(np.where(table.sentence_end[tokens], table.sep, tokens))
                have += len(tokens)
            if ended:
                f.close()
                open_files.pop(fi)
                if not have and not n_prefix:
                    continue
            lm_x, lm_y = np.concatenate(lm_x), np.concatenate(lm_y)
            example = released_assemble(C, table, nextsent, prefix_x, prefix_y, lm_x, lm_y,
                                        ended)
            count_example(stats, example, nextsent, n_prefix, count, lm_y[:need], table)
            i = f.class_id if f.class_id is not None else written * num_process + process
            written += 1
            yield example, i
    finally:
        for h in handles:
            h.close()


def released_assemble(C, table, nextsent, prefix_x, prefix_y, lm_x, lm_y, ended):
    """x = SOT [sentence SEP] prefix SEG LM [EOT], y as released: the next-sentence label
    at the sentence's last position, masked targets one before their position, the LM
    targets from the segmenter on; at a file's end <|endoftext|> is the target of itself
    and the position before it has none (a released off-by-one, kept)."""
    x = [np.array([table.sot])]
    y = []
    if nextsent is not None:
        x += [nextsent.tokens, [table.sep]]
        y += [np.full(len(nextsent.tokens), -1), [table.sep if nextsent.is_next else table.eot]]
    x += [prefix_x, [table.seg], lm_x]
    y += [prefix_y, [-1], lm_y]
    if ended:
        x.append([table.eot])
        y.append([-1, table.eot])
    x = np.concatenate([np.asarray(a, np.int64) for a in x])[:C]
    y = np.concatenate([np.asarray(a, np.int64) for a in y])[:C]
    num_input = 1 + (len(nextsent.tokens) + 1 if nextsent is not None else 0) + len(prefix_x)
    out_x = np.full(C, table.nottoken, np.int64)
    out_y = np.full(C, -1, np.int64)
    out_x[:len(x)], out_y[:len(y)] = x, y
    return Example(out_x, out_y, num_input)

