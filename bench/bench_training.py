"""Training throughput (tokens/s) of a small Switch Transformer on this machine:
C 256, 4 switch layers, H 256, 8 experts, batch 8, float32, synthetic records.
The first steps (graph optimisation, warm-up) are excluded.

Layout rows: the demo's training text (the get_corpus core packages, as copied in
shared/corpus/ja-docs-train beside the repository) made into the demo's records (hybrid,
num_context 128) with --layout document (one document per example, padded: the layout
before packing) and --layout pack, and the demo's model trained on each, alternating
timed blocks of steps. Training tokens/s counted over positions with a target = timed
positions/s x the records' share of positions with a target (batches are drawn
uniformly from the records)."""
import os
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402  (puts the repository on sys.path)


def write_records(path, n, length, vocab, seed=0):
    import numpy as np
    from model import tfrecord
    x = np.random.RandomState(seed).randint(0, vocab, (n, length))
    y = np.concatenate([x[:, 1:], np.full((n, 1), -1)], 1)
    with open(path, "wb") as f:
        f.write(tfrecord.tfrecord_frames(tfrecord.serialize_examples(
            {"x": x, "y": y, "num_input": np.zeros((n, 1), int), "i": np.zeros((n, 1), int)})))


SHARED = os.path.join(os.path.dirname(common.REPO), "shared")
DEMO_CORPUS = os.path.join(SHARED, "corpus", "ja-docs-train")
DEMO_FILES = ("manpages-ja.txt", "gimp-help-ja.txt", "debian-edu-doc-ja.txt", "kicad-doc-ja.txt")
# tools/demo.py's model and records
DEMO_SHAPE = dict(num_contexts=128, num_switch_layers=2, num_hidden=128, num_header=4,
                  num_experts=4)
DEMO_BATCH = 8


def demo_records(folder, layout):
    """The demo corpus laid out as the demo lays it out; returns make_tfrecord's stats."""
    import functools
    import bench_tfrecord
    from tools import make_tfrecord as mt
    vocab, emoji = bench_tfrecord.vocabulary_files()
    files = [mt.InputFile(i, os.path.join(DEMO_CORPUS, n), i) for i, n in enumerate(DEMO_FILES)]
    job = mt.Job(mt.LayoutOptions("hybrid", DEMO_SHAPE["num_contexts"], layout=layout),
                 functools.partial(mt.load_swe_encoder, vocab, emoji), seed=0,
                 output_dir=folder, name="train")
    os.makedirs(folder, exist_ok=True)
    stats, _ = mt.convert(files, job, 1, 8 << 20, progress=False)
    return stats


def layout_rows(quick=False):
    from model import devices as devicelib
    from model import params as params_lib, train
    if not all(os.path.isfile(os.path.join(DEMO_CORPUS, n)) for n in DEMO_FILES):
        print("bench_training: layout rows skipped, %s not found" % DEMO_CORPUS, file=sys.stderr)
        return []
    blocks, steps = (2, 3) if quick else (4, 10)
    shares, trainers, seconds = {}, {}, {}
    with tempfile.TemporaryDirectory() as d:
        for layout in ("document", "pack"):
            stats = demo_records(os.path.join(d, layout), layout)
            positions = stats["examples"] * DEMO_SHAPE["num_contexts"]
            shares[layout] = (stats["padding_tokens"] / positions,
                              stats["target_tokens"] / positions, stats["examples"])
            params = params_lib.default_params(num_vocabulary=36000, **DEMO_SHAPE) \
                .with_train(batch_size=DEMO_BATCH).with_model(train_mode="hybrid")
            opts = train.TrainOptions(
                params=params, input_files=os.path.join(d, layout, "*.tfrecord"),
                output_dir=os.path.join(d, layout + "-out"), max_training_step=3,
                devices=devicelib.local(mesh_shape="1x1"), progress=False, log_every=0)
            trainers[layout] = train.Trainer(opts).start()
            trainers[layout].run()  # graph optimisation and warm-up
            seconds[layout] = []
        for k in range(blocks):  # alternate, so a slow spell of the machine hits both
            for layout in (("document", "pack") if k % 2 == 0 else ("pack", "document")):
                seconds[layout].append(common.seconds_per_step(trainers[layout], steps))
        for trainer in trainers.values():
            trainer.close()
    per_step = DEMO_BATCH * DEMO_SHAPE["num_contexts"]
    rate = {k: per_step / min(v) for k, v in seconds.items()}
    target_rate = {k: rate[k] * shares[k][1] for k in rate}
    what = "demo corpus, C128 hybrid, %d (pack) vs %d (document) records" % (
        shares["pack"][2], shares["document"][2])
    return [
        dict(what="padding positions, --layout pack (vs document), " + what,
             ours=100 * shares["pack"][0], baseline=100 * shares["document"][0],
             ratio=shares["pack"][0] / shares["document"][0] if shares["document"][0] else None,
             unit="%"),
        dict(what="positions with a target, --layout pack (vs document), " + what,
             ours=100 * shares["pack"][1], baseline=100 * shares["document"][1],
             ratio=shares["pack"][1] / shares["document"][1], unit="%"),
        dict(what="training positions/s, demo model batch 8, --layout pack (vs document)",
             ours=rate["pack"], baseline=rate["document"], ratio=rate["pack"] / rate["document"],
             unit="positions/s"),
        dict(what="training tokens/s counted over positions with a target, demo model, "
                  "--layout pack (vs document)",
             ours=target_rate["pack"], baseline=target_rate["document"],
             ratio=target_rate["pack"] / target_rate["document"], unit="tokens/s"),
    ]


def run(quick=False):
    from model import params as params_lib, train
    from model import devices as devicelib
    length, vocab = 256, 36000
    params = params_lib.default_params(num_contexts=length, num_switch_layers=4, num_hidden=256,
                                       num_header=8, num_experts=8,
                                       num_vocabulary=vocab).with_train(batch_size=8)
    warmup, steps = (2, 4) if quick else (3, 15)
    with tempfile.TemporaryDirectory() as d:
        write_records(os.path.join(d, "r.tfrecord"), 64, length, vocab)
        opts = train.TrainOptions(params=params, input_files=os.path.join(d, "*.tfrecord"),
                                  output_dir=os.path.join(d, "out"), max_training_step=warmup,
                                  devices=devicelib.local(mesh_shape="1x1"),
                                  progress=False, log_every=0)
        trainer = train.Trainer(opts).start()
        trainer.run()
        rate = 8 * length / common.seconds_per_step(trainer, steps)
        trainer.close()
    return [dict(what="training, C256 4 switch layers H256 E8 batch 8 (fp32)", ours=rate,
                 baseline=None, ratio=None, unit="tokens/s")] + layout_rows(quick)


if __name__ == "__main__":
    common.print_table(run(quick=common.parser(__doc__).parse_args().quick))
