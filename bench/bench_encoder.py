"""Encoder speed: encode_swe.SWEEncoder against bench/baseline_encoder.py.

Both encode the same sample of the demo corpus (../shared/corpus/ja-docs-train,
the first documents of every shard in proportion to its size) with the released vocabulary
(../shared/reference), clean=False and clean=True, and must return identical
ids (the run stops with an error otherwise).  Two ways of calling:

  text       one encode() call per shard sample (whole files, as the CLI does)
  documents  every document on its own: the baseline calls encode() per
             document, ours encode_batch() (what a data pipeline should use);
             one encode() call per document is reported too, without a target

Speed is MB of UTF-8 input per second of this process's CPU time, the best of
a few runs for each side (other processes on a shared machine then disturb the
numbers less).  The target is ratio >= 20 for "text" and "documents", what
makes encoding a corpus cheap next to training on it.

  python bench/bench_encoder.py            # 2 MB sample, 2 baseline runs each
  python bench/bench_encoder.py --quick    # 0.5 MB sample
  python bench/bench_encoder.py --all      # the whole corpus, 1 run (minutes)
"""
import argparse
import glob
import os
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

SHARED = os.path.join(os.path.dirname(REPO), "shared")
CORPUS = os.path.join(SHARED, "corpus", "ja-docs-train")
REFERENCE = os.path.join(SHARED, "reference")


def sample_shards(max_bytes):
    """{shard name: [documents]}: the first documents of every shard, each shard
    contributing in proportion to its size, about max_bytes of UTF-8 in all
    (None: everything)."""
    shards = {}
    for path in sorted(glob.glob(os.path.join(CORPUS, "*.txt"))):
        with open(path, encoding="utf-8", newline="") as f:
            shards[os.path.basename(path)] = f.read()
    if not shards:
        raise SystemExit("demo corpus not found: %s" % CORPUS)
    total = sum(len(t.encode("utf-8")) for t in shards.values())
    taken = {}
    for name, text in shards.items():
        documents, size = [], 0
        budget = None if max_bytes is None else max_bytes * len(text.encode("utf-8")) / total
        for document in text.split("\n\n\n"):
            if budget is not None and size >= budget:
                break
            documents.append(document)
            size += len(document.encode("utf-8"))
        taken[name] = documents
    return taken


def best_cpu_seconds(function, repeats):
    """Least CPU time of `repeats` calls, and the first call's result."""
    times, result = [], None
    for _ in range(repeats):
        start = time.process_time()
        value = function()
        times.append(time.process_time() - start)
        result = value if result is None else result
    return min(times), result


def compare(what, megabytes, ours, baseline, unit="MB/s"):
    (our_time, our_ids), (base_time, base_ids) = ours, baseline
    if our_ids != base_ids:
        raise AssertionError("%s: encode_swe ids differ from the baseline's" % what)
    ours_rate, base_rate = megabytes / our_time, megabytes / base_time
    return dict(what=what, ours=ours_rate, baseline=base_rate, ratio=ours_rate / base_rate,
                unit=unit)


def run(quick=False, max_bytes=None, whole_corpus=False, repeats=None):
    import encode_swe
    from bench.baseline_encoder import BaselineEncoder
    vocab, emoji = (os.path.join(REFERENCE, n) for n in ("ja-swe36k.txt", "emoji.json"))
    if not os.path.isfile(vocab):
        raise SystemExit("released vocabulary not found: %s" % vocab)
    ours, base = encode_swe.SWEEncoder(vocab, emoji), BaselineEncoder(vocab, emoji)
    shards = sample_shards(None if whole_corpus else max_bytes or (500_000 if quick else 2_000_000))
    repeats = repeats or (1 if whole_corpus else 2)
    texts = ["\n\n\n".join(docs) for docs in shards.values()]
    documents = [d for docs in shards.values() for d in docs]
    megabytes = sum(len(t.encode("utf-8")) for t in texts) / 1e6
    for warm in (ours.encode, base.encode):  # first calls fill caches
        warm("ウォームアップ (^_^) 2022年9月16日 https://example.com")
    rows = []
    for clean in (False, True):
        rows.append(compare(
            "encode, clean=%s, text (%d shards, %.1f MB)" % (clean, len(texts), megabytes),
            megabytes,
            best_cpu_seconds(lambda: [ours.encode(t, clean) for t in texts], 3 * repeats),
            best_cpu_seconds(lambda: [base.encode(t, clean) for t in texts], repeats)))
        base_documents = best_cpu_seconds(lambda: [base.encode(d, clean) for d in documents],
                                          repeats)
        rows.append(compare(
            "encode_batch, clean=%s, documents (%d)" % (clean, len(documents)), megabytes,
            best_cpu_seconds(lambda: ours.encode_batch(documents, clean), 3 * repeats),
            base_documents))
        rows.append(compare(
            "encode per document, clean=%s (no target)" % clean, megabytes,
            best_cpu_seconds(lambda: [ours.encode(d, clean) for d in documents], 3 * repeats),
            base_documents))
    return rows


def print_table(rows):
    print("%-58s %10s %10s %8s" % ("what", "ours", "baseline", "ratio"))
    for row in rows:
        print("%-58s %10.2f %10.3f %7.1fx  %s" % (row["what"], row["ours"], row["baseline"],
                                                   row["ratio"], row["unit"]))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="0.5 MB sample")
    parser.add_argument("--all", action="store_true", help="the whole demo corpus")
    parser.add_argument("--mb", type=float, help="sample size in MB")
    parser.add_argument("--repeats", type=int, help="baseline runs per row (ours: 3x)")
    args = parser.parse_args()
    print_table(run(args.quick, int(args.mb * 1e6) if args.mb else None, args.all, args.repeats))


if __name__ == "__main__":
    main()
