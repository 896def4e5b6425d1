#!/usr/bin/env python3
"""Turn UTF-8 text into TFRecord shards for pretraining, in the released GPTSAN layout.

Inputs: --input_files (globs), --input_list (one path per line) or --input_csv
(filename,fileid[,weight]: class ids and weights). --layout pack (default) fills every
example with consecutive text of a block, document keeps one document per example and
released reproduces the released make_tfrecord_simple.py record for record. Output:
<output_dir>/<name>-FFFFF-BBBBB.tfrecord shards (released: <name>-PPPPP-00000, one per
process) and <name>-summary.json. README.md, "Training records", specifies the inputs,
the document split, every layout rule, the record ids and the file naming.

This script plans the run (inputs, blocks, processes), reads the text and writes the
shards and the summary; tools/_layouts.py turns token ids into examples and
model/tfrecord.py writes them.
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
from model.tfrecord import ShardWriter  # noqa: E402
from tools._documents import (  # noqa: E402
    encode_lines, encode_lines_both_ways, read_block_documents)
from tools._layouts import (  # noqa: E402
    Document, LayoutOptions, LineText, SentencePool, TokenTable, examples_from_document,
    released_examples, released_file_order)

MODES = ("lm", "mlm", "hybrid")
LAYOUTS = ("pack", "document", "released")
# which text is encoded with cleaning: "released" the LM part (the prefix and next
# sentence as written), "all" everything (--clean_text), "none" nothing (--raw_text)
CLEANINGS = ("released", "all", "none")
SUMMARY_SUFFIX = "-summary.json"
MIN_CONTEXT = 16
PROGRESS_BYTES = 1 << 18      # workers report progress at least this often


def pass_keep_rates(weight):
    """Keep probability of each pass over a file: w=2.5 -> [1, 1, 0.5]."""
    whole = int(math.floor(weight))
    rates = [1.0] * whole
    if weight > whole:
        rates.append(weight - whole)
    return rates


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
    cleaning: str = "released"  # one of CLEANINGS
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
    """Encode the documents of a block; returns the texts to lay out (pack: one)."""
    docs, done = [], task.start
    for lines, offset in read_block_documents(task.file.path, task.start, task.end, stats):
        if job.cleaning == "released":
            encoded = encode_lines_both_ways(lines, enc)
            count = sum(len(ids) for ids in encoded[0]) + len(lines) - 1  # and the <BR>s
        else:
            encoded = encode_lines(lines, enc, job.cleaning == "all")
            count = len(encoded)
        stats["documents"] += 1
        stats["lines"] += len(lines)
        stats["tokens"] += count
        reached = min(offset, task.end)
        progress.add(max(reached - done, 0), count)
        done = max(done, reached)
        if count:
            docs.append(encoded)
    progress.add(task.end - done, 0)
    if job.cleaning != "released":
        if job.layout.layout == "pack" and docs:
            # one text: documents joined with <|endoftext|>; the last one gets its
            # <|endoftext|> from the layout, like any text that ends in an example
            joined = []
            for tokens in docs:
                joined.extend(tokens)
                joined.append(table.eot)
            return [Document(joined[:-1], table)]
        return [Document(tokens, table) for tokens in docs]
    if job.layout.layout == "pack" and docs:
        return [line_text(docs, table)]
    return [line_text([doc], table) for doc in docs]


def line_text(docs, table):
    """The documents' lines as one text: lines joined with <BR>, documents with
    <|endoftext|>. A Document where cleaning changes no line (the same ids, and faster
    to lay out), else a LineText."""
    raw, cleaned = [], []
    for d, (doc_raw, doc_cleaned) in enumerate(docs):
        for k, (ids, cleaned_ids) in enumerate(zip(doc_raw, doc_cleaned)):
            if k + 1 < len(doc_raw):
                separator = [table.br]
            else:
                separator = [table.eot] if d + 1 < len(docs) else []
            raw.append(ids + separator)
            cleaned.append(raw[-1] if cleaned_ids is ids else cleaned_ids + separator)
    if all(c is r for c, r in zip(cleaned, raw)):
        return Document([t for ids in raw for t in ids], table)
    return LineText(raw, cleaned, table)


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
    clean = {"released": (False, True), "all": (True, True), "none": (False, False)}[
        job.cleaning]
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
                           epilog="See README.md, \"Training records\", for the exact layout "
                                  "and file naming.")
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
    cleaning = p.add_mutually_exclusive_group()
    cleaning.add_argument("--clean_text", action="store_true",
                          help="encode all text, prefix and next sentence included, with "
                               "cleaning (URLs, e-mail addresses, dates, ... become <URL>, "
                               "<EMAIL>, <DATE>, ...). Default (neither flag): as released, "
                               "the LM part cleaned, the prefix and next sentence as written "
                               "(a line keeps the encoding it was entered with)")
    cleaning.add_argument("--raw_text", action="store_true",
                          help="encode all text as written, nothing cleaned (see "
                               "--clean_text)")
    p.add_argument("--num_process", type=int, default=1,
                   help="worker processes; with --layout released also the released "
                        "process count, which decides the output (see README.md)")
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
    cleaning = "all" if args.clean_text else "none" if args.raw_text else "released"
    job = Job(layout, factory, args.seed, cleaning,
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

