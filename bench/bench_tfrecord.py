"""make_tfrecord throughput: MB of input text per second at 1 and 2 processes, and the
share of padding positions per --layout.

Input: all of shared/corpus/ja-docs-train (15 MB) (beside the repository), hybrid mode with
the next-sentence part, num_context 1280, shards written to a temporary folder. The
first row is the encoder alone on the same text, the ceiling for one process; a run's
time includes starting its worker processes. Rates per CPU-second (this process and its
workers) do not depend on what else the machine runs; wall-clock rates show the scaling.

Layout rows: the same text laid out (hybrid, num_context 1280, dry run) with --layout
document (one document per example, padded: the layout before packing) and --layout pack.
"positions with a target" is the share of the batch's positions that carry a loss; a
training step costs the same whatever the token values (fixed shapes), so training tokens
per second counted over positions with a target scale by exactly that share.
"""
import functools
import os
import resource
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402  (puts the repository on sys.path)
from tools import _layouts as layouts  # noqa: E402
from tools import make_tfrecord as mt  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED = os.path.join(os.path.dirname(REPO), "shared")
CORPUS = os.path.join(SHARED, "corpus", "ja-docs-train")
# The whole corpus (about 15 MB): each worker process pays a fixed ~0.8 CPU-s to start
# (interpreter, numpy, encoder tables), so scaling shows only once the input dwarfs that,
# as it does on real pretraining corpora. 1 MB for quick runs.
FULL_FILES = None
QUICK_FILES = ("debian-reference-ja.txt", "installation-guide-amd64.txt",
               "kicad-doc-ja.txt", "debian-history.txt")


def vocabulary_files():
    """The project's own vocabulary when it exists, else the released one."""
    import encode_swe
    if os.path.isfile(encode_swe.DEFAULT_VOCAB):
        return encode_swe.DEFAULT_VOCAB, encode_swe.DEFAULT_EMOJI
    reference = os.path.join(SHARED, "reference")
    return os.path.join(reference, "ja-swe36k.txt"), os.path.join(reference, "emoji.json")


def encoder_alone(paths, encoder):
    """CPU seconds to encode the files document by document."""
    began = time.process_time()
    for path in paths:
        with open(path, encoding="utf-8") as f:
            for document in f.read().split("\n\n\n"):
                encoder.encode(document)
    return time.process_time() - began


def cpu_seconds():
    """CPU time of this process and of its finished worker processes."""
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.process_time() + children.ru_utime + children.ru_stime


def convert_seconds(files, factory, num_process, block_bytes):
    """(wall seconds, CPU seconds, stats) of one conversion."""
    layout = layouts.LayoutOptions("hybrid", 1280, use_nextsent=True)
    with tempfile.TemporaryDirectory() as out:
        job = mt.Job(layout, factory, seed=0, output_dir=out, name="bench")
        wall, cpu = time.perf_counter(), cpu_seconds()
        stats, _ = mt.convert(files, job, num_process, block_bytes, progress=False)
        return time.perf_counter() - wall, cpu_seconds() - cpu, stats


def layout_shares(files, factory, block_bytes, layout):
    """(padding share, target share, examples) of the text laid out by `layout`."""
    options = layouts.LayoutOptions("hybrid", 1280, layout=layout)
    job = mt.Job(options, factory, seed=0, output_dir=None, name="bench")
    stats, _ = mt.convert(files, job, 1, block_bytes, progress=False)
    positions = stats["examples"] * 1280
    return stats["padding_tokens"] / positions, stats["target_tokens"] / positions, stats


def layout_rows(files, factory, block_bytes, steps_per_second=None):
    rows = []
    document = layout_shares(files, factory, block_bytes, "document")
    pack = layout_shares(files, factory, block_bytes, "pack")
    rows.append(dict(what="padding positions, --layout pack (vs document), %d vs %d examples"
                     % (pack[2]["examples"], document[2]["examples"]),
                     ours=100 * pack[0], baseline=100 * document[0],
                     ratio=None if not document[0] else pack[0] / document[0], unit="%"))
    rows.append(dict(what="positions with a target = training tokens/s counted over targets "
                          "per position/s, --layout pack (vs document)",
                     ours=100 * pack[1], baseline=100 * document[1],
                     ratio=pack[1] / document[1], unit="%"))
    return rows


def run(quick=False):
    names = QUICK_FILES if quick else FULL_FILES or sorted(
        n for n in (os.listdir(CORPUS) if os.path.isdir(CORPUS) else []) if n.endswith(".txt"))
    paths = [os.path.join(CORPUS, n) for n in names]
    missing = [p for p in paths if not os.path.isfile(p)]
    if missing:
        print("bench_tfrecord: skipped, corpus not found: %s" % missing[0], file=sys.stderr)
        return []
    vocab, emoji = vocabulary_files()
    factory = functools.partial(mt.load_swe_encoder, vocab, emoji)
    megabytes = sum(os.path.getsize(p) for p in paths) / 1e6
    files = [mt.InputFile(i, p, i) for i, p in enumerate(paths)]
    block_bytes = (1 << 18) if quick else (1 << 20)  # several blocks per file to share out
    alone = megabytes / encoder_alone(paths, factory())
    one_wall, one_cpu, stats = convert_seconds(files, factory, 1, block_bytes)
    two_wall, two_cpu, _ = convert_seconds(files, factory, 2, block_bytes)
    what = "make_tfrecord, %.1f MB -> %d records, " % (megabytes, stats["records"])

    def row(label, ours, baseline, unit):
        return dict(what=label, ours=ours, baseline=baseline,
                    ratio=None if baseline is None else ours / baseline, unit=unit)
    # CPU-second rates hold whatever else the machine runs; wall rates show the scaling
    return layout_rows(files, factory, block_bytes) + [
        row("encode_swe alone, same text", alone, None, "MB/CPU-s"),
        row(what + "1 process (vs encoder alone)", megabytes / one_cpu, alone, "MB/CPU-s"),
        row(what + "2 processes (vs 1 process)", megabytes / two_cpu, megabytes / one_cpu,
            "MB/CPU-s"),
        row(what + "1 process", megabytes / one_wall, None, "MB/s"),
        row(what + "2 processes (vs 1 process)", megabytes / two_wall, megabytes / one_wall,
            "MB/s"),
    ]


if __name__ == "__main__":
    common.print_table(run(quick=common.parser(__doc__).parse_args().quick))
