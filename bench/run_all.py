"""`make bench`: run every benchmark and write bench/results.md (one table).

Each bench module exposes run(quick=False) -> rows of
{what, ours, baseline, ratio, unit}. Ratios are measured side by side in one run.
Usage: python bench/run_all.py [--quick] [--only encoder,decoding,...]
"""
import argparse
import importlib
import os
import sys
import time
import traceback

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402  (puts the repository on sys.path)

BENCHES = ["bench_encoder", "bench_decoding", "bench_training", "bench_tfrecord"]


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="smaller inputs (a smoke run)")
    p.add_argument("--only", default="", help="comma-separated subset of " + ",".join(BENCHES))
    p.add_argument("--output", default=os.path.join(os.path.dirname(__file__), "results.md"))
    args = p.parse_args()
    chosen = [b for b in BENCHES if not args.only or b in args.only.split(",")
              or b.replace("bench_", "") in args.only.split(",")]
    rows, failures = [], []
    for name in chosen:
        t = time.time()
        print("== %s" % name, file=sys.stderr, flush=True)
        try:
            module = importlib.import_module(name)
            rows += module.run(quick=args.quick)
        except Exception:  # one broken bench must not hide the others' numbers
            failures.append(name)
            traceback.print_exc()
        print("   %.0f s" % (time.time() - t), file=sys.stderr)
    table = common.markdown_table(rows)
    header = "# Benchmarks\n\nWritten by `make bench` on %s%s.\n\n" % (
        time.strftime("%Y-%m-%d"), " (--quick)" if args.quick else "")
    # The peer and bandwidth sections below the table are written by their own runs.
    common.write_results(args.output, header + table)
    print(table)
    if failures:
        print("failed: %s" % ", ".join(failures), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
