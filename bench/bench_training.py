"""Training throughput (tokens/s) of a small Switch Transformer on this machine:
C 256, 4 switch layers, H 256, 8 experts, batch 8, float32, synthetic records.
The first steps (graph optimisation, warm-up) are excluded."""
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402,F401  (puts the repository on sys.path)


def write_records(path, n, length, vocab, seed=0):
    import numpy as np
    from model.compat import tf
    rng = np.random.RandomState(seed)
    with tf.io.TFRecordWriter(path) as w:
        for _ in range(n):
            x = rng.randint(0, vocab, length)
            feature = {"x": x, "y": np.append(x[1:], -1), "num_input": [0], "i": [0]}
            w.write(tf.train.Example(features=tf.train.Features(feature={
                k: tf.train.Feature(int64_list=tf.train.Int64List(value=list(map(int, v))))
                for k, v in feature.items()})).SerializeToString())


def run(quick=False):
    from model import params as params_lib, runtime, train
    from model import devices as devicelib
    length, vocab = 256, 36000
    params = params_lib.default_params(num_contexts=length, num_switch_layers=4, num_hidden=256,
                                       num_header=8, num_experts=8, num_vocabulary=vocab)
    params["train_params"]["batch_size"] = 8
    warmup, steps = (2, 4) if quick else (3, 15)
    with tempfile.TemporaryDirectory() as d:
        write_records(os.path.join(d, "r.tfrecord"), 64, length, vocab)
        opts = train.TrainOptions(params=params, input_files=os.path.join(d, "*.tfrecord"),
                                  output_dir=os.path.join(d, "out"), max_training_step=warmup,
                                  devices=devicelib.local(mesh_shape="1x1"),
                                  progress=False, log_every=0)
        trainer = train.Trainer(opts).start()
        trainer.run()
        trainer.opts.max_training_step = warmup + steps
        t = time.time()
        trainer.run()
        elapsed = time.time() - t
        trainer.close()
    rate = steps * 8 * length / elapsed
    return [dict(what="training, C256 4 switch layers H256 E8 batch 8 (fp32)", ours=rate,
                 baseline=None, ratio=None, unit="tokens/s")]


if __name__ == "__main__":
    common.print_table(run(quick="--quick" in sys.argv))
