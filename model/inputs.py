"""Reading the TFRecord shards that tools/make_tfrecord.py writes.

Each record is a tf.train.Example with int64 features x [num_context], y [num_context]
(targets, -1 = no loss), num_input [1] (index of the LM part's <|segmenter|>) and i [1]
(class or file id). read_dataset yields batches of {x: [batch, num_context],
y: [batch, num_context], num_input: [batch], i: [batch]}, all int32.

TensorFlow is imported on first use, so tools can import this module cheaply.
"""
from model.errors import UserError
from model.tfrecord import count_records

FEATURES = ("x", "y", "num_input", "i")
SHUFFLE_BUFFER = 1024


def _tf():
    from model.compat import tf
    return tf


def list_record_files(file_pattern):
    """Files matching a comma-separated list of globs (local or gs://), sorted."""
    tf = _tf()
    files = []
    for pattern in (p.strip() for p in file_pattern.split(",")):
        if pattern:
            files.extend(sorted(tf.io.gfile.glob(pattern)))
    files = list(dict.fromkeys(files))
    if not files:
        raise UserError("no training records match %s" % file_pattern)
    return files


def _feature_spec(num_context):
    tf = _tf()
    return {"x": tf.io.FixedLenFeature([num_context], tf.int64),
            "y": tf.io.FixedLenFeature([num_context], tf.int64),
            "num_input": tf.io.FixedLenFeature([1], tf.int64),
            "i": tf.io.FixedLenFeature([1], tf.int64)}


def iter_examples(path):
    """The records of one file in file order, each {feature: list of ints}, read
    eagerly (no graph; for scans and small evaluations, not for training)."""
    tf = _tf()
    for data in tf.io.tf_record_iterator(path):
        feature = tf.train.Example.FromString(data).features.feature
        yield {name: list(feature[name].int64_list.value) for name in FEATURES}


def record_context_length(path):
    """num_context of the first record in `path` (None for an empty file)."""
    for example in iter_examples(path):
        return len(example["x"])
    return None


def _check_context_length(files, num_context):
    """A clear error instead of a parse failure deep inside the input pipeline:
    every file's first record must have the model's length (a mix of lengths
    would otherwise fail mid-run)."""
    for path in files:
        found = record_context_length(path)
        if found is not None and found != num_context:
            raise UserError("%s holds examples of %d tokens but the model uses "
                            "num_contexts %d; rebuild the records with "
                            "tools/make_tfrecord.py --num_context %d"
                            % (path, found, num_context, num_context))


def check_record_files(file_pattern, num_context):
    """Up-front scan of every input file before a graph is built: a directory, an
    unreadable or empty file, or records of another length is one clear error
    (an empty file would otherwise make a repeating pipeline spin forever)."""
    import os
    files = list_record_files(file_pattern)
    for path in files:
        if os.path.isdir(path):
            raise UserError("input pattern names a directory, not a record file: %s "
                            "(use a glob such as %s/*.tfrecord)" % (path, path.rstrip("/")))
        if "://" not in path and not os.access(path, os.R_OK):
            raise UserError("cannot read record file %s (permission denied)" % path)
        if count_records([path]) == 0:
            raise UserError("record file %s holds no records; remove it or rebuild it "
                            "with tools/make_tfrecord.py" % path)
    _check_context_length(files, num_context)
    return files


def read_dataset(file_pattern, batch_size, num_context, shuffle=True, seed=None, repeat=True,
                 shuffle_buffer=SHUFFLE_BUFFER):
    """A tf.data.Dataset of batches {x, y, num_input, i} (int32) from the shards.

    file_pattern: comma-separated globs. With shuffle, file order and records (through a
    buffer of `shuffle_buffer`) are shuffled anew each epoch; the same seed gives the
    same order. Incomplete final batches are dropped.
    """
    tf = _tf()
    files = list_record_files(file_pattern)
    _check_context_length(files, num_context)
    ds = tf.data.Dataset.from_tensor_slices(files)
    if shuffle:
        ds = ds.shuffle(len(files), seed=seed, reshuffle_each_iteration=True)
    ds = ds.interleave(tf.data.TFRecordDataset, cycle_length=min(len(files), 8),
                       num_parallel_calls=tf.data.experimental.AUTOTUNE, deterministic=True)
    if shuffle:
        ds = ds.shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=True)
    # Repeat only after the record shuffle: the buffer then never mixes two
    # epochs, so each epoch holds every record exactly once (a file of exactly
    # one batch gives that batch at every step).
    if repeat:
        ds = ds.repeat()
    ds = ds.batch(batch_size, drop_remainder=True)
    spec = _feature_spec(num_context)

    def parse(serialized):
        parsed = tf.io.parse_example(serialized, spec)
        for scalar in ("num_input", "i"):  # [batch, 1] -> [batch]
            parsed[scalar] = tf.reshape(parsed[scalar], [batch_size])
        return {name: tf.cast(parsed[name], tf.int32) for name in FEATURES}

    ds = ds.map(parse, num_parallel_calls=tf.data.experimental.AUTOTUNE)
    return ds.prefetch(2)
