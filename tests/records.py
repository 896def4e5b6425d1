"""Training records for tests, written with TensorFlow's own TFRecord writer and
tf.train.Example (independent of model/tfrecord.py, which tests compare to it)."""
from model.compat import tf


def write_records(path, rows):
    """rows: (x, y, num_input, i) per record, in make_tfrecord.py's layout."""
    with tf.io.TFRecordWriter(path) as writer:
        for x, y, num_input, i in rows:
            feature = {"x": x, "y": y, "num_input": [num_input], "i": [i]}
            writer.write(tf.train.Example(features=tf.train.Features(feature={
                key: tf.train.Feature(int64_list=tf.train.Int64List(value=[int(v) for v in values]))
                for key, values in feature.items()})).SerializeToString())
    return path
