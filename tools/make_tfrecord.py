#!/usr/bin/env python3
"""Turn UTF-8 text into TFRecord shards for pretraining, in the released GPTSAN layout.

Inputs (exactly one of):
  --input_files 'corpus/*.txt'        globs, comma-separated; matches are taken in sorted order
  --input_list files.txt              one path per line ('#' comments and blank lines ignored)
  --input_csv classes.csv             header `filename,fileid[,weight]`: fileid is the class id
                                      written as feature `i`; weight w repeats the file's
                                      examples w times (2.5 = two passes plus a pass that
                                      keeps each example with probability 0.5)
Relative paths in a list or CSV are taken from the list's folder, else the current one.
Without a CSV, `i` is a running record id, as the released tool writes it
(num_written * num_process + process): here a "process" is one block of input (see
Output), so i = (records before it in its block) * (number of blocks) + (the block's
position among all blocks); ids are distinct and independent of --num_process.

Documents: within a file, documents are separated by two or more blank lines (the corpus
convention "\\n\\n\\n"); a single blank line is a paragraph break inside a document. Lines
join with the <BR> token (a document is encoded as one text; the encoder writes "\\n" as
<BR>). --layout decides how documents fill examples:
  pack (default)  the documents of a block are joined with <|endoftext|> into one text and
                  every example is filled to the full context with consecutive text; what
                  does not fit carries over into the next example, so no token is lost and
                  only the last example of each block (8 MiB of input by default, so the
                  end of every smaller file) holds <|nottoken|> padding.
  released        the released make_tfrecord_simple.py, record for record (checked against
                  its recorded output on known inputs): the files (shuffled with --seed)
                  are dealt out to --num_process released processes (here --num_process
                  is part of the output: file k goes to process k mod num_process, each
                  writes <name>-PPPPP-00000.tfrecord, P = the process); each process draws
                  from numpy's RandomState(process) (with --seed 0, as released). Per
                  example it picks one of its open files at random and reads whole lines
                  (blank lines too, each ending in <BR>; documents are not separated):
                  the prefix from raw lines until it is full, the rest of the line it
                  ends in as is, then cleaned LM lines until the context is full; the
                  rest of the last line is cut (lost). A file's last example ends with
                  <|endoftext|> (target of itself, released) and padding; a file that
                  ends inside a prefix gives no example. --block_mb does not apply.
                  Released numbers: hybrid prefix uniform in [0, num_context-2-s) with s
                  the next-sentence part; masking int(rate * prefix) positions, rate
                  --num_mask (halved with a next sentence); the next sentence is the
                  first (num_context-2)//2 tokens of a line, and a random one comes from
                  a line of a random open file, which then reads from its start again.
  document        each example holds text of one document only: a long document is split
                  into as many examples as it needs and the last (or only) one is padded
                  with <|nottoken|> (y = -1 there), so <|endoftext|> only ever stands at a
                  document's real end.

Example layout (num_context positions):
  x = [<|startoftext|>] + [next sentence, <|separator|>]  (only with --use_nextsent)
      + prefix + [<|segmenter|>] + LM part + [<|endoftext|> if the document ends here]
      + <|nottoken|> padding
  y[t] = the uncorrupted token at t+1, or -1 for no loss. Only these positions have a loss:
  masked prefix positions p (at y[p-1], the original token), the next-sentence label (at
  the position before <|separator|>: <|separator|> if the sentence really precedes the
  text, else <|endoftext|>), and every LM position from the segmenter on. When a
  document continues in the next example, the last LM position predicts its next token.
  num_input = the index of <|segmenter|> = the bidirectional prefix length.
Prefix: `lm` none; `mlm` as much as fits with one LM token after the segmenter (released:
the segmenter sits at num_context - 2); `hybrid`: with
probability --hybrid_rate a prefix of length uniform in [0, min(num_context-2, n+1)) where
n is the document text left, clipped to what fits; otherwise none. Each prefix token is
masked with probability --num_mask (at most --max_mask per example): 80% become
<|inputmask|>, 10% a random ordinary (non-special) token, 10% stay.
LM part: sentence-ending punctuation (。｡．.？！?!:：;；, as single tokens) becomes
<|separator|> in x only; a run of >= 3 identical ordinary tokens is written as the token
followed by <|bagoftoken|> in x and y alike.
Next sentence: the first sentence (up to 。｡．.？！?!:：;； or a line break) of the text
left is taken out; with probability 1/2 it is used, else a random earlier sentence of the
same block (so half the examples say "follows" and half "does not"); the text after the
sentence continues as prefix/LM. It is capped at (num_context-4)//4 tokens (its end kept).

Output: <output_dir>/<name>-FFFFF-BBBBB.tfrecord, one shard per block of --block_mb MiB
of one input file (F = the file's position in the input list, B = the block number in
it; blocks without examples write no shard), plus <name>-summary.json with the options,
the counts and each shard's record count. Read them with model.inputs.read_dataset
('<output_dir>/<name>-*.tfrecord'). Shards are written under a temporary name and renamed
when complete. Random choices come from a generator seeded by (--seed, file position,
block number), so the same seed, inputs and --block_mb give byte-identical shards with any
--num_process.

Bad input never stops the run: a line with undecodable UTF-8 is skipped (the rest of its
document is kept), and skipped lines, empty files, listed files that are missing or
unreadable and malformed CSV rows are counted in the summary.
"""
import csv
import dataclasses
import hashlib
import signal
import functools
import glob
import json
import math
import multiprocessing
import os
import queue as queue_lib
import sys
import time
from collections import Counter, namedtuple
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import dataclass

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402

from model import cli  # noqa: E402
from model.atomic import write_json_atomic  # noqa: E402

SENTENCE_END = "。｡．.？！?!:：;；"
MODES = ("lm", "mlm", "hybrid")
LAYOUTS = ("pack", "document", "released")
SUMMARY_SUFFIX = "-summary.json"
MIN_CONTEXT = 16
NEXTSENT_POOL = 1024          # sentences kept to draw "not the next sentence" from
PROGRESS_BYTES = 1 << 18      # workers report progress at least this often


# ---------------------------------------------------------------- vocabulary view
class TokenTable:
    """What the layout needs from the encoder, precomputed as lookup arrays."""

    def __init__(self, enc):
        self.sot, self.mask, self.sep = enc.startoftext, enc.inputmask, enc.separator
        self.nottoken, self.bag, self.seg = enc.nottoken, enc.bagoftoken, enc.segmenter
        self.eot = enc.endoftext
        self.br = enc.token_to_id("<BR>")
        if self.br is None:
            raise cli.UserError("the vocabulary has no <BR> token")
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


def compress_runs(tokens, table):
    """Write each run of >= 3 identical ordinary tokens as the token + <|bagoftoken|>."""
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
    """Lay the parts out into (x, y, num_input); see the module docstring."""
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
    if end >= len(doc):  # nothing would follow it
        return None, start
    sentence = doc.tokens[start:end]
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
    """Yield the examples that cover one document, consuming it front to back."""
    start = 0
    while start < len(doc):
        begin, nextsent = start, None
        if opts.use_nextsent:
            nextsent, start = take_nextsent(doc, start, rng, pool, opts)
        pos = 1 + (len(nextsent.tokens) + 1 if nextsent else 0)
        available = len(doc) - start
        n_prefix = prefix_length(opts, rng, available, opts.num_context - pos - 1)
        if n_prefix == available:  # all the text is prefix: <|endoftext|> must fit too
            n_prefix = min(n_prefix, opts.num_context - pos - 2)
        prefix = doc.tokens[start:start + n_prefix]
        prefix_x, masked = mask_prefix(prefix, rng, table, opts)
        seg = pos + n_prefix
        slots = opts.num_context - seg - 1
        stream, end = take_lm_stream(doc, start + n_prefix, slots, table)
        if end == len(doc) and len(stream) == slots:  # no room left for <|endoftext|>
            stream, end = take_lm_stream(doc, start + n_prefix, slots - 1, table)
        ended = end == len(doc)
        continuation = None if ended else int(doc.tokens[end])
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


def pass_keep_rates(weight):
    """Keep probability of each pass over a file: w=2.5 -> [1, 1, 0.5]."""
    whole = int(math.floor(weight))
    rates = [1.0] * whole
    if weight > whole:
        rates.append(weight - whole)
    return rates


# ---------------------------------------------------------------- reading text
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
    # one call per document: the encoder turns each "\n" into <BR>, and is much faster
    # on long texts than line by line
    return enc.encode("\n".join(lines), clean=clean)


# ---------------------------------------------------------------- TFRecord writing
# TFRecord framing and tf.train.Example encoding are written here without TensorFlow, so
# workers start in a fraction of a second; tests check the bytes against TensorFlow's.
def _crc32c_table():
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ (0x82F63B78 if crc & 1 else 0)
        table.append(crc)
    return table


_CRC_TABLE = _crc32c_table()


def _two_byte_table():
    """CRC register after two zero bytes, for every low-16-bit register value."""
    table, reg = np.array(_CRC_TABLE, np.uint32), np.arange(1 << 16, dtype=np.uint32)
    for _ in range(2):
        reg = table[reg & 0xFF] ^ (reg >> 8)
    return reg


_CRC_TABLE16 = _two_byte_table()


def crc32c(data):
    """CRC-32C (Castagnoli), the checksum TFRecord uses."""
    crc, table = 0xFFFFFFFF, _CRC_TABLE
    for byte in data:
        crc = table[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


@functools.lru_cache(maxsize=64)
def _zero_bytes_tables(count):
    """Tables that advance a CRC register through `count` zero bytes, one per register
    byte: the map is linear, so it is the XOR of the four table entries."""
    register = (np.arange(256, dtype=np.uint32)[None, :]
                << (8 * np.arange(4, dtype=np.uint32))[:, None]).ravel()
    for _ in range(count // 2):
        register = _CRC_TABLE16[register & 0xFFFF] ^ (register >> 16)
    return register.reshape(4, 256)


def crc32c_many(messages, pieces=64):
    """crc32c of many messages at once, vectorised over messages and pieces of them.

    The CRC register is linear over GF(2): starting it at 0xFFFFFFFF equals XOR-ing 0xFF
    into the first four bytes and starting at 0, and leading zero bytes leave a zero
    register at 0. So each message is right-aligned in a zero-padded row, every row is
    cut into `pieces` equal pieces, all pieces advance together two bytes per step, and
    each row's piece registers are then combined (the earlier pieces' registers carried
    through the later pieces' length). Every message must be at least 4 bytes long.
    """
    piece = -(-max(len(m) for m in messages) // pieces)
    piece += piece % 2
    width = piece * pieces
    data = np.zeros((len(messages), width), np.uint8)
    for row, message in zip(data, messages):
        row[width - len(message):] = np.frombuffer(message, np.uint8)
        row[width - len(message):width - len(message) + 4] ^= 0xFF
    words = np.ascontiguousarray(data.reshape(-1, piece).view("<u2").T)  # (steps, pieces)
    register = np.zeros(words.shape[1], np.uint32)
    for word in words:
        register = _CRC_TABLE16[(register & 0xFFFF) ^ word] ^ (register >> 16)
    register = register.reshape(len(messages), pieces)
    carry = _zero_bytes_tables(piece)
    crc = register[:, 0]
    for k in range(1, pieces):
        crc = (carry[0][crc & 0xFF] ^ carry[1][(crc >> 8) & 0xFF]
               ^ carry[2][(crc >> 16) & 0xFF] ^ carry[3][crc >> 24] ^ register[:, k])
    return [int(c) ^ 0xFFFFFFFF for c in crc]


def _mask_crc(crc):
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def tfrecord_frames(payloads):
    """TFRecords: length, masked CRC of the length, data, masked CRC of the data."""
    out = []
    for payload, crc in zip(payloads, crc32c_many(payloads)):
        length = len(payload).to_bytes(8, "little")
        out += [length, _mask_crc(crc32c(length)).to_bytes(4, "little"), payload,
                _mask_crc(crc).to_bytes(4, "little")]
    return b"".join(out)


def varint(n):
    """Protocol-buffer varint of one int64 (a negative takes 10 bytes)."""
    n &= (1 << 64) - 1
    out = bytearray()
    while n > 0x7F:
        out.append(n & 0x7F | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _varint_matrix(u):
    """(bytes padded to 10 columns, byte count) for each uint64 value."""
    groups = np.empty((len(u), 10), np.uint8)
    nbytes = np.ones(len(u), np.int64)
    for k in range(10):
        shifted = u >> np.uint64(7 * k)
        groups[:, k] = shifted & np.uint64(0x7F)
        if k:
            nbytes += shifted != 0
    groups[np.arange(10) < (nbytes - 1)[:, None]] |= 0x80
    return groups, nbytes


# Varints of -1 (no target) and of every id below 2**16, looked up instead of computed.
_TABLE_LOW = -1
_VARINT_TABLE, _VARINT_LENGTHS = _varint_matrix(
    np.arange(_TABLE_LOW, 1 << 16, dtype=np.int64).view(np.uint64))


def varint_rows(matrix):
    """Varints of each row of an int64 matrix: (bytes of all rows, byte length per row)."""
    v = np.ascontiguousarray(matrix, dtype=np.int64)
    flat = v.ravel()
    if len(flat) and flat.min() >= _TABLE_LOW and flat.max() < (1 << 16):
        groups, nbytes = _VARINT_TABLE[flat - _TABLE_LOW], _VARINT_LENGTHS[flat - _TABLE_LOW]
    else:
        groups, nbytes = _varint_matrix(flat.view(np.uint64))
    data = groups[np.arange(10) < nbytes[:, None]].tobytes()
    return data, nbytes.reshape(len(v), -1).sum(axis=1)


def _field(tag, payload):
    """A length-delimited protobuf field."""
    return bytes([tag]) + varint(len(payload)) + payload


def _int64_feature(name, packed):
    # Features.feature map entry {key: name, value: Feature{int64_list: Int64List{packed}}}
    return _field(0x0A, _field(0x0A, name) + _field(0x12, _field(0x1A, _field(0x0A, packed))))


def serialize_examples(features):
    """tf.train.Example bytes for each row of int64 feature matrices {name: [n, k]}."""
    columns = []
    for name, matrix in features.items():
        data, lengths = varint_rows(np.asarray(matrix).reshape(len(matrix), -1))
        ends = np.cumsum(lengths)
        columns.append((name.encode(), data, ends - lengths, ends))
    out = []
    for row in range(len(columns[0][2])):
        body = b"".join(_int64_feature(name, data[start[row]:end[row]])
                        for name, data, start, end in columns)
        out.append(_field(0x0A, body))  # Example.features
    return out


class ShardWriter:
    """Buffers examples and writes them as TFRecords to `<path>.tmp`; commit() renames.

    Feature `i` is `class_id` for every record, or with `id_stride` the running id
    records_before * id_stride + class_id (the released num_written * num_process + process).
    """

    BATCH = 256

    def __init__(self, path, class_id, id_stride=None):
        self.path, self.tmp, self.class_id = path, path + ".tmp", class_id
        self.id_stride = id_stride
        self.file, self.records, self.pending = open(self.tmp, "wb"), 0, []

    def write(self, example, i=None):
        """`i`: this record's feature i, overriding class_id / the running id."""
        self.pending.append((example, i))
        if len(self.pending) == self.BATCH:
            self._flush()

    def _flush(self):
        if self.pending:
            batch, self.pending = self.pending, []
            ids = [[i] if i is not None else default
                   for (_, i), default in zip(batch, self._ids(len(batch)))]
            batch = [e for e, _ in batch]
            self.file.write(tfrecord_frames(serialize_examples({
                "x": [e.x for e in batch], "y": [e.y for e in batch],
                "num_input": [[e.num_input] for e in batch], "i": ids})))
            self.records += len(batch)

    def _ids(self, n):
        if self.id_stride is None:
            return [[self.class_id]] * n
        first = self.records
        return [[(first + k) * self.id_stride + self.class_id] for k in range(n)]

    def commit(self):
        self._flush()
        self.file.close()
        if self.records:
            os.replace(self.tmp, self.path)
        else:
            os.remove(self.tmp)

    def discard(self):
        self.file.close()
        if os.path.exists(self.tmp):
            os.remove(self.tmp)


# ---------------------------------------------------------------- one block of one file
@dataclass(frozen=True)
class InputFile:
    index: int
    path: str
    class_id: int
    weight: float = 1.0


@dataclass(frozen=True)
class BlockTask:
    file: InputFile
    block: int
    start: int
    end: int
    ordinal: int = 0     # position among all blocks of the run
    num_blocks: int = 1  # blocks in the run


@dataclass(frozen=True)
class Job:
    """Everything a worker needs besides its task; must pickle (spawned workers)."""
    layout: LayoutOptions
    encoder_factory: object
    seed: int = 0
    clean_text: bool = False
    output_dir: str = None  # None: dry run
    name: str = "train"
    running_ids: bool = False  # i = running record id (no CSV) instead of the class id


BlockResult = namedtuple("BlockResult", "file_index block stats shard records")


class RunStats(Counter):
    """Counts for the summary, plus notes naming the input that was skipped."""

    def __init__(self):
        super().__init__()
        self.notes = []

    def skip(self, key, note):
        self[key] += 1
        self.notes.append(note)


def shard_name(name, file_index, block):
    return "%s-%05d-%05d.tfrecord" % (name, file_index, block)


def block_rng(seed, file_index, block):
    return np.random.default_rng(np.random.SeedSequence([seed, file_index, block]))


class _Progress:
    """Batches (bytes, tokens) increments before handing them to `report`."""

    def __init__(self, report, file_index):
        self.report, self.file_index, self.bytes, self.tokens = report, file_index, 0, 0

    def add(self, nbytes, tokens):
        self.bytes += nbytes
        self.tokens += tokens
        if self.bytes >= PROGRESS_BYTES:
            self.flush()

    def flush(self):
        if self.bytes or self.tokens:
            self.report(self.file_index, self.bytes, self.tokens)
            self.bytes = self.tokens = 0


def read_block(task, job, enc, table, stats, progress):
    """Encode the documents of a block; returns their Document objects."""
    docs, done = [], task.start
    for lines, offset in read_block_documents(task.file.path, task.start, task.end, stats):
        tokens = encode_lines(lines, enc, job.clean_text)
        stats["documents"] += 1
        stats["lines"] += len(lines)
        stats["tokens"] += len(tokens)
        reached = min(offset, task.end)
        progress.add(max(reached - done, 0), len(tokens))
        done = max(done, reached)
        if tokens:
            docs.append(tokens)
    progress.add(task.end - done, 0)
    if job.layout.layout == "pack" and docs:
        # one text: documents joined with <|endoftext|>; the last one gets its
        # <|endoftext|> from the layout, like any text that ends in an example
        joined = []
        for tokens in docs:
            joined.extend(tokens)
            joined.append(table.eot)
        return [Document(joined[:-1], table)]
    return [Document(tokens, table) for tokens in docs]


def convert_block(task, job, enc, table, report):
    stats = Counter()
    progress = _Progress(report, task.file.index)
    try:
        docs = read_block(task, job, enc, table, stats, progress)
    except OSError:
        stats["unreadable_blocks"] += 1
        return BlockResult(task.file.index, task.block, stats, None, 0)
    finally:
        progress.flush()
    writer = None
    try:
        rng = block_rng(job.seed, task.file.index, task.block)
        pool = SentencePool(rng)
        if job.output_dir is not None and docs:
            if job.running_ids:
                writer = ShardWriter(os.path.join(
                    job.output_dir, shard_name(job.name, task.file.index, task.block)),
                    task.ordinal, id_stride=task.num_blocks)
            else:
                writer = ShardWriter(os.path.join(
                    job.output_dir, shard_name(job.name, task.file.index, task.block)),
                    task.file.class_id)
        for keep in pass_keep_rates(task.file.weight):
            for doc in docs:
                examples = examples_from_document(doc, table, job.layout, rng, pool, stats)
                for example in examples:
                    if keep < 1.0 and rng.random() >= keep:
                        stats["sampled_out"] += 1
                        continue
                    stats["records"] += 1
                    if writer is not None:
                        writer.write(example)
    except BaseException:
        if writer is not None:
            writer.discard()
        raise
    shard, records = None, stats["records"]
    if writer is not None:
        writer.commit()
        shard = os.path.basename(writer.path) if writer.records else None
    return BlockResult(task.file.index, task.block, stats, shard, records)


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


def _bag_line(tokens, table):
    """<|bagoftoken|> substitution, line by line as released (a run never spans lines)."""
    return compress_runs(np.asarray(tokens, np.int64), table) if len(tokens) else \
        np.zeros(0, np.int64)


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
                tokens = _bag_line(encode(line, clean_lm), table)
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


def convert_released_process(job, process, num_process, files, enc=None, table=None):
    """One released process: its files -> one shard; returns a BlockResult."""
    if enc is None:
        enc = job.encoder_factory()
        table = TokenTable(enc)
    stats = Counter()
    writer = None
    if job.output_dir is not None:
        writer = ShardWriter(os.path.join(job.output_dir, shard_name(job.name, process, 0)),
                             class_id=None)
    # released: the prefix (and a next sentence) as written, the LM part cleaned
    clean = (True, True) if job.clean_text else (False, True)
    try:
        for example, i in released_examples(files, process, num_process, job.layout, enc,
                                            table, clean, job.seed, stats):
            stats["records"] += 1
            if writer is not None:
                writer.write(example, i)
    except BaseException:
        if writer is not None:
            writer.discard()
        raise
    shard = None
    if writer is not None:
        writer.commit()
        shard = os.path.basename(writer.path) if writer.records else None
    return BlockResult(process, 0, stats, shard, stats["records"])


def _released_worker(job, process, num_process, files):
    if "enc" not in _WORKER:
        enc = job.encoder_factory()
        _WORKER.update(enc=enc, table=TokenTable(enc))
    return convert_released_process(job, process, num_process, files, _WORKER["enc"],
                                    _WORKER["table"])


def convert_released(files, job, num_process=1, stats=None, progress=True):
    """--layout released: the files, shuffled by --seed, dealt out to --num_process
    released processes (file k to process k mod num_process); one shard per process."""
    from tqdm import tqdm
    stats = stats if stats is not None else RunStats()
    stats["files"] += len(files)
    present = []
    for f in files:
        if f.weight == 0:
            stats["zero_weight_files"] += 1
        elif not os.path.isfile(f.path):
            stats.skip("missing_files", "missing: %s" % f.path)
        else:
            stats["bytes"] += os.path.getsize(f.path)
            present.append((f.path, None if job.running_ids else f.class_id))
    order = released_file_order(present, job.seed)
    groups = [order[k::num_process] for k in range(num_process)]
    bar = tqdm(total=num_process, unit="process", desc="make_tfrecord", file=sys.stderr,
               disable=not progress)
    results = []
    try:
        if num_process == 1:
            results.append(convert_released_process(job, 0, 1, groups[0]))
            bar.update(1)
        else:
            context = multiprocessing.get_context("spawn")
            with ProcessPoolExecutor(min(num_process, os.cpu_count() or 1),
                                     mp_context=context) as pool:
                futures = [pool.submit(_released_worker, job, k, num_process, g)
                           for k, g in enumerate(groups) if g]
                for future in futures:
                    results.append(future.result())
                    bar.update(1)
            bar.update(num_process - len(futures))
    finally:
        bar.close()
    shards = {}
    for r in sorted(results, key=lambda r: r.file_index):
        stats.update(r.stats)
        if r.shard:
            shards[r.shard] = r.records
    stats["shards"] += len(shards)
    return stats, shards


# Per-process state of pool workers: the progress queue, then the encoder, loaded by the
# first task so that a failure reaches the caller as that task's exception.
_WORKER = {}


def _init_worker(progress_queue):
    _WORKER["queue"] = progress_queue


def _worker_convert(job, task):
    if "enc" not in _WORKER:  # a pool serves one run, so one job
        enc = job.encoder_factory()
        _WORKER.update(enc=enc, table=TokenTable(enc))
    w = _WORKER
    return convert_block(task, job, w["enc"], w["table"], lambda *item: w["queue"].put(item))


def run_blocks(tasks, job, num_process, progress):
    """Convert every block, in this process or in a pool; returns the BlockResults.

    `progress` gets report(file_index, bytes, tokens) and block_done(file_index) calls.
    A worker that fails or dies (BrokenProcessPool) ends the run with that error.
    """
    results = []
    if num_process <= 1 or len(tasks) <= 1:
        enc = job.encoder_factory()
        table = TokenTable(enc)
        for task in tasks:
            results.append(convert_block(task, job, enc, table, progress.report))
            progress.block_done(task.file.index)
        return results
    # spawn, not fork: the caller may have TensorFlow's threads running
    context = multiprocessing.get_context("spawn")
    progress_queue = context.Queue()
    pool = ProcessPoolExecutor(min(num_process, len(tasks)), mp_context=context,
                               initializer=_init_worker, initargs=(progress_queue,))
    try:
        pending = {pool.submit(_worker_convert, job, t) for t in tasks}
        while pending:
            done, pending = wait(pending, timeout=0.1, return_when=FIRST_COMPLETED)
            _drain(progress_queue, progress.report)
            for future in done:
                results.append(future.result())
                progress.block_done(results[-1].file_index)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    _drain(progress_queue, progress.report)
    return results


def _drain(progress_queue, report):
    try:
        while True:
            report(*progress_queue.get_nowait())
    except queue_lib.Empty:
        pass


# ---------------------------------------------------------------- inputs
def _resolve(path, base):
    if os.path.isabs(path):
        return path
    beside = os.path.join(base, path)
    return beside if os.path.exists(beside) or not os.path.exists(path) else path


def files_from_globs(patterns):
    files = []
    for pattern in (p.strip() for p in patterns.split(",")):
        if pattern:
            files.extend(sorted(p for p in glob.glob(pattern, recursive=True)
                                if os.path.isfile(p)))
    files = list(dict.fromkeys(files))
    if not files:
        cli.fail("--input_files matched no files: %s" % patterns)
    return [InputFile(i, path, i) for i, path in enumerate(files)]


def _read_text(path, what):
    cli.require_file(path, what)
    with open(path, encoding="utf-8", errors="replace", newline="") as f:
        return f.read()


def files_from_list(path):
    base = os.path.dirname(os.path.abspath(path))
    entries = [line.strip() for line in _read_text(path, "input list").splitlines()]
    entries = [e for e in entries if e and not e.startswith("#")]
    if not entries:
        cli.fail("input list %s names no files" % path)
    return [InputFile(i, _resolve(e, base), i) for i, e in enumerate(entries)]


def _csv_row(row, line, base):
    """InputFile fields from one CSV row, or a reason why the row is bad."""
    name = (row.get("filename") or "").strip()
    try:
        class_id = int((row.get("fileid") or "").strip())
        weight = float((row.get("weight") or "1").strip())
    except ValueError:
        return "line %d: fileid must be an integer and weight a number" % line
    if not name:
        return "line %d: empty filename" % line
    if class_id < 0 or not (weight >= 0 and math.isfinite(weight)):
        return "line %d: fileid and weight must not be negative" % line
    return _resolve(name, base), class_id, weight


def files_from_csv(path, stats):
    """InputFiles from `filename,fileid[,weight]`; malformed rows are counted in stats."""
    rows = csv.DictReader(_read_text(path, "input CSV").splitlines())
    header = [h.strip() for h in rows.fieldnames or []]
    if "filename" not in header or "fileid" not in header:
        cli.fail("%s: the CSV header must be filename,fileid[,weight], got %s"
                 % (path, ",".join(header) or "nothing"))
    rows.fieldnames = header
    base, files = os.path.dirname(os.path.abspath(path)), []
    for line, row in enumerate(rows, start=2):
        parsed = _csv_row(row, line, base)
        if isinstance(parsed, str):
            stats.skip("bad_csv_rows", "%s %s" % (path, parsed))
            continue
        files.append(InputFile(len(files), *parsed))
    return files


def plan_blocks(files, block_bytes, stats):
    """Split each existing file into blocks; missing files are counted, not fatal."""
    tasks = []
    for f in files:
        if f.weight == 0:
            stats["zero_weight_files"] += 1
            continue
        try:
            size = os.path.getsize(f.path) if os.path.isfile(f.path) else None
        except OSError:
            size = None
        if size is None:
            stats.skip("missing_files", "missing: %s" % f.path)
            continue
        stats["bytes"] += size
        for block in range(max(1, -(-size // block_bytes))):
            tasks.append(BlockTask(f, block, block * block_bytes,
                                   min(size, (block + 1) * block_bytes)))
    return [dataclasses.replace(t, ordinal=k, num_blocks=len(tasks))
            for k, t in enumerate(tasks)]


# ---------------------------------------------------------------- the whole run
def load_swe_encoder(vocabulary, emoji):
    import encode_swe
    return encode_swe.load_encoder(vocabulary or encode_swe.DEFAULT_VOCAB,
                                   emoji or encode_swe.DEFAULT_EMOJI)


def check_encoder(factory):
    """Load the encoder once up front, so a bad vocabulary is one clear error."""
    try:
        enc = factory()
        TokenTable(enc)
    except (OSError, ValueError, KeyError, ImportError) as e:
        cli.fail("cannot load the encoder: %s" % e)
    return len(enc)


class ProgressBar:
    """tqdm over input bytes, with files done and tokens as postfix."""

    def __init__(self, tasks, enabled=True):
        from tqdm import tqdm
        self.blocks_left = Counter(t.file.index for t in tasks)
        self.files, self.files_done, self.tokens = len(self.blocks_left), 0, 0
        self.bar = tqdm(total=sum(t.end - t.start for t in tasks), unit="B", unit_scale=True,
                        desc="make_tfrecord", file=sys.stderr, disable=not enabled,
                        mininterval=0.5)
        self._postfix()

    def _postfix(self):
        self.bar.set_postfix_str("files %d/%d, tokens %s"
                                 % (self.files_done, self.files, f"{self.tokens:,}"),
                                 refresh=False)

    def report(self, file_index, nbytes, tokens):
        self.tokens += tokens
        self._postfix()
        self.bar.update(nbytes)

    def block_done(self, file_index):
        self.blocks_left[file_index] -= 1
        if not self.blocks_left[file_index]:
            self.files_done += 1
            self._postfix()
            self.bar.refresh()

    def close(self):
        self.bar.close()


def convert(files, job, num_process=1, block_bytes=8 << 20, stats=None, progress=True):
    """Convert InputFiles; returns (RunStats, {shard name: records})."""
    stats = stats if stats is not None else RunStats()
    stats["files"] += len(files)
    tasks = plan_blocks(files, block_bytes, stats)
    bar = ProgressBar(tasks, enabled=progress)
    try:
        results = run_blocks(tasks, job, num_process, bar)
    finally:
        bar.close()
    shards, documents, unreadable = {}, Counter(), set()
    for r in sorted(results, key=lambda r: (r.file_index, r.block)):
        stats.update(r.stats)
        documents[r.file_index] += r.stats["documents"]
        if r.stats["unreadable_blocks"]:
            unreadable.add(r.file_index)
        if r.shard:
            shards[r.shard] = r.records
    for f in sorted({t.file for t in tasks}, key=lambda f: f.index):
        if f.index in unreadable:
            stats.skip("unreadable_files", "unreadable: %s" % f.path)
        elif not documents[f.index]:
            stats.skip("empty_files", "empty: %s" % f.path)
    stats["shards"] += len(shards)
    return stats, shards


SUMMARY_ROWS = (
    ("files", "input files"), ("missing_files", "missing files (skipped)"),
    ("unreadable_files", "unreadable files (skipped)"), ("empty_files", "empty files"),
    ("bad_csv_rows", "malformed CSV rows (skipped)"),
    ("zero_weight_files", "files with weight 0 (skipped)"),
    ("undecodable_lines", "lines with undecodable UTF-8 (skipped)"),
    ("bytes", "input bytes"), ("documents", "documents"), ("lines", "lines"),
    ("tokens", "tokens"), ("examples", "examples laid out"),
    ("sampled_out", "examples dropped by fractional weights"), ("records", "records"),
    ("shards", "shards"), ("examples_with_prefix", "examples with a prefix"),
    ("prefix_tokens", "prefix tokens"), ("masked_tokens", "masked prefix tokens"),
    ("lm_tokens", "LM-part tokens"), ("bag_runs", "<|bagoftoken|> runs"),
    ("nextsent_true", "next sentence: true"), ("nextsent_false", "next sentence: random"),
    ("padding_tokens", "padding tokens"), ("target_tokens", "positions with a target"),
)


def format_summary(stats, seconds):
    width = max(len(label) for _, label in SUMMARY_ROWS)
    rows = ["%-*s %s" % (width, label, f"{stats.get(key, 0):,}")
            for key, label in SUMMARY_ROWS if stats.get(key, 0) or key in ("files", "records")]
    if seconds > 0:
        rows.append("%-*s %.1f s, %.2f MB/s" % (width, "time", seconds,
                                                 stats.get("bytes", 0) / 1e6 / seconds))
    notes = ["note: %s" % n for n in stats.notes[:20]]
    if len(stats.notes) > 20:
        notes.append("note: ... %d more in the summary JSON" % (len(stats.notes) - 20))
    return "\n".join(rows + notes)


# ---------------------------------------------------------------- command line
def build_parser():
    p = cli.ArgumentParser(description=__doc__.split("\n\n")[0],
                           epilog="See the module docstring (tools/make_tfrecord.py) for "
                                  "the exact layout and file naming.")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--input_files", help="glob(s) of UTF-8 text files, comma-separated")
    src.add_argument("--input_list", help="file listing one input path per line")
    src.add_argument("--input_csv", help="CSV with header filename,fileid[,weight]")
    p.add_argument("--output_dir", help="folder for the shards (required unless --dry_run)")
    p.add_argument("--name", default="train", help="shard name prefix")
    p.add_argument("--mode", choices=MODES, default="hybrid", help="prefix layout")
    p.add_argument("--layout", choices=LAYOUTS, default="pack",
                   help="pack: fill every example with consecutive text, documents joined "
                        "with <|endoftext|> (no padding but at block ends); document: one "
                        "document per example, padded; released: consecutive lines until "
                        "the context is full, the rest of the last line cut")
    p.add_argument("--hybrid_rate", type=float, default=1.0,
                   help="share of hybrid examples in hybrid mode (the rest plain LM; "
                        "released 1.0)")
    p.add_argument("--num_mask", type=float, default=0.08, help="prefix masking rate")
    p.add_argument("--max_mask", type=int, default=100, help="most masked tokens per example")
    p.add_argument("--use_nextsent", action="store_true", help="add the next-sentence part")
    p.add_argument("--num_context", type=int, default=1280, help="tokens per example")
    p.add_argument("--clean_text", action="store_true",
                   help="encode all text, prefix and next sentence included, with cleaning "
                        "(URLs, e-mail addresses, dates, ... become <URL>, <EMAIL>, <DATE>, "
                        "...). Off (default): --layout released encodes the LM lines with "
                        "cleaning and the prefix and next sentence as written (released); "
                        "--layout pack/document encode everything as written")
    p.add_argument("--num_process", type=int, default=1,
                   help="worker processes; with --layout released also the released "
                        "process count, which decides the output (see the docstring)")
    p.add_argument("--seed", type=int, default=0,
                   help="random seed (--layout released: 0 draws as the released tool)")
    p.add_argument("--block_mb", type=float, default=8.0,
                   help="MiB of input text per shard; part of what determines the output")
    p.add_argument("--vocabulary", help="vocabulary file; when not given, encode_swe's own")
    p.add_argument("--emoji", help="emoji table; when not given, encode_swe's own")
    p.add_argument("--dry_run", action="store_true", help="print the statistics only")
    p.add_argument("--force", action="store_true",
                   help="write into a non-empty --output_dir, replacing earlier shards")
    p.add_argument("--no_progress", action="store_true", help="hide the progress bar")
    return p


def check_args(args):
    def need(ok, message):
        if not ok:
            cli.fail(message)
    need(args.num_context >= MIN_CONTEXT, "--num_context must be at least %d" % MIN_CONTEXT)
    need(0 <= args.hybrid_rate <= 1, "--hybrid_rate must be in [0, 1]")
    need(0 <= args.num_mask <= 1, "--num_mask must be in [0, 1]")
    need(args.max_mask >= 0, "--max_mask must not be negative")
    need(args.num_process >= 1, "--num_process must be at least 1")
    need(args.seed >= 0, "--seed must not be negative")
    need(args.block_mb > 0, "--block_mb must be positive")
    need(args.dry_run or args.output_dir, "--output_dir is required (or use --dry_run)")
    need(bool(args.name) and os.sep not in args.name, "--name must be a plain file name")
    for path, what in ((args.vocabulary, "vocabulary file"), (args.emoji, "emoji file")):
        if path is not None:
            cli.require_file(path, what)


def prepare_output_dir(path, force, name="train"):
    """Make the folder; returns True when it held an earlier incomplete run of ours
    (replaced like --force would, since nothing in it was written by anyone else)."""
    if os.path.exists(path) and not os.path.isdir(path):
        cli.fail("--output_dir %s is a file" % path)
    if os.path.isdir(path) and os.listdir(path) and not force:
        if own_incomplete_output(path, name):
            return True
        cli.fail("--output_dir %s is not empty; use --force to write into it" % path)
    os.makedirs(path, exist_ok=True)
    return False


def remove_stale_outputs(output_dir, name, keep, temporary_only=False):
    """Drop temporary shards, and (after a --force run) shards this run did not write."""
    pattern = os.path.join(glob.escape(output_dir), glob.escape(name) + "-*-*.tfrecord")
    stale = glob.glob(pattern + ".tmp") + ([] if temporary_only else glob.glob(pattern))
    for path in stale:
        if os.path.basename(path) not in keep:
            os.remove(path)


def vocabulary_record(args, size):
    """Size and SHA-256 of the vocabulary files, for readers to check records against."""
    import encode_swe

    def sha(path):
        with open(path, "rb") as f:
            return hashlib.sha256(f.read()).hexdigest()
    return {"size": int(size), "sha256": sha(args.vocabulary or encode_swe.DEFAULT_VOCAB),
            "emoji_sha256": sha(args.emoji or encode_swe.DEFAULT_EMOJI)}


def write_summary(path, args, stats, shards, complete, vocabulary):
    summary = {"complete": bool(complete), "vocabulary": vocabulary,
               "options": {k: v for k, v in vars(args).items() if k != "verbose"},
               "stats": dict(stats), "notes": stats.notes, "shards": shards}
    write_json_atomic(summary, path)


def own_incomplete_output(path, name):
    """True when `path` holds only an interrupted or failed run's output of this tool:
    an incomplete <name>-summary.json plus <name>-*-*.tfrecord[.tmp] shards."""
    summary = os.path.join(path, name + SUMMARY_SUFFIX)
    try:
        with open(summary, encoding="utf-8") as f:
            if json.load(f).get("complete", True) is not False:
                return False
    except (OSError, ValueError, AttributeError):
        return False
    prefix = name + "-"
    for entry in os.listdir(path):
        if entry == name + SUMMARY_SUFFIX:
            continue
        if not (entry.startswith(prefix)
                and (entry.endswith(".tfrecord") or entry.endswith(".tfrecord.tmp"))):
            return False
    return True


class Interrupted(BaseException):
    """SIGTERM or SIGINT arrived; carries the signal number."""

    def __init__(self, signum):
        super().__init__(signum)
        self.signum = signum


def _raise_interrupted(signum, frame):
    raise Interrupted(signum)


def list_inputs(args, stats):
    if args.input_csv:
        return files_from_csv(args.input_csv, stats)
    if args.input_list:
        return files_from_list(args.input_list)
    return files_from_globs(args.input_files)


def run_conversion(files, job, args, stats):
    if args.layout == "released":
        return convert_released(files, job, args.num_process, stats,
                                progress=not args.no_progress)
    return convert(files, job, args.num_process, int(args.block_mb * (1 << 20)), stats,
                   progress=not args.no_progress)


def main(args):
    check_args(args)
    stats = RunStats()
    files = list_inputs(args, stats)
    replace = args.force
    if not args.dry_run:
        replace = prepare_output_dir(args.output_dir, args.force, args.name) or args.force
    layout = LayoutOptions(args.mode, args.num_context, args.hybrid_rate, args.num_mask,
                           args.max_mask, args.use_nextsent, args.layout)
    factory = functools.partial(load_swe_encoder, args.vocabulary, args.emoji)
    vocabulary_size = check_encoder(factory)
    job = Job(layout, factory, args.seed, args.clean_text,
              None if args.dry_run else args.output_dir, args.name,
              running_ids=not args.input_csv)
    began = time.time()
    if args.dry_run:
        stats, shards = run_conversion(files, job, args, stats)
        print(format_summary(stats, time.time() - began))
        if not stats["records"]:
            cli.fail("no examples were produced (see the counts above)")
        return 0
    summary_path = os.path.join(args.output_dir, args.name + SUMMARY_SUFFIX)
    vocabulary = vocabulary_record(args, vocabulary_size)
    # The incomplete marker goes down before any shard, so that even a SIGKILL leaves
    # a directory that readers recognise as unfinished.
    handlers = {s: signal.signal(s, _raise_interrupted) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        write_summary(summary_path, args, stats, {}, False, vocabulary)
        stats, shards = run_conversion(files, job, args, stats)
    except Interrupted as e:
        # workers killed mid-shard leave temporary files behind; finished shards stay,
        # listed nowhere, under the incomplete summary
        remove_stale_outputs(args.output_dir, args.name, keep=(), temporary_only=True)
        write_summary(summary_path, args, stats, {}, False, vocabulary)
        print("make_tfrecord: interrupted by %s; %s is marked incomplete, rerun to replace it"
              % (signal.Signals(e.signum).name, args.output_dir), file=sys.stderr)
        return 128 + e.signum
    except BaseException:
        # a failed run removes what it wrote (shards of this run name and its summary),
        # so the retry finds the folder as it was
        remove_stale_outputs(args.output_dir, args.name, keep=(), temporary_only=True)
        _remove_own_output(args.output_dir, args.name, summary_path)
        raise
    finally:
        for s, h in handlers.items():
            signal.signal(s, h)
    if replace:
        remove_stale_outputs(args.output_dir, args.name, shards)
    print(format_summary(stats, time.time() - began))
    if not stats["records"]:
        _remove_own_output(args.output_dir, args.name, summary_path)
        cli.fail("no examples were produced (see the counts above)")
    write_summary(summary_path, args, stats, shards, True, vocabulary)
    return 0


def _remove_own_output(output_dir, name, summary_path):
    remove_stale_outputs(output_dir, name, keep=())
    if os.path.exists(summary_path):
        os.remove(summary_path)


if __name__ == "__main__":
    cli.run(main, build_parser())
