"""TFRecord files of tf.train.Example records, written without TensorFlow.

tools/make_tfrecord.py writes its shards with ShardWriter: TFRecord framing (length,
masked CRC-32C of the length, data, masked CRC-32C of the data) and the protobuf encoding
of Examples with int64 features are done here in NumPy, so worker processes start in a
fraction of a second instead of importing TensorFlow; tests check the bytes against
TensorFlow's. count_records counts the records of a file from the length headers.
"""
import functools
import os

import numpy as np

from model.errors import UserError

_HEADER = 12  # uint64 length + uint32 masked CRC of the length


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
    # Not model.atomic.atomic_output: make_tfrecord finds an interrupted run's leftovers
    # by the fixed name <shard>.tmp, and a shard that got no records is removed, not
    # renamed into place.

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



def count_records(paths):
    """Number of records in TFRecord files, read from the length headers only."""
    from model.compat import tf  # gfile, so gs:// paths count too
    total = 0
    for path in paths:
        with tf.io.gfile.GFile(path, "rb") as f:
            size, pos = f.size(), 0
            while pos < size:
                f.seek(pos)
                header = f.read(_HEADER)
                if len(header) < _HEADER:
                    raise UserError("%s: truncated TFRecord at byte %d" % (path, pos))
                pos += _HEADER + int.from_bytes(header[:8], "little") + 4
                total += 1
            if pos != size:
                raise UserError("%s: truncated TFRecord at the end" % path)
    return total
