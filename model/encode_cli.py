"""The command line of encode_swe.py (`python encode_swe.py encode|decode|count`),
kept apart from the encoder so that importing the encoder stays lean.

Standard input when no FILES.  encode writes one JSON line per input,
{"file": NAME, "ids": [...]}; see `python encode_swe.py --help`.
"""
import json
import os
import re
import sys

import encode_swe
from model import cli
from model.atomic import atomic_output

_EPILOG = """\
formats:
  encode  one JSON object per input file and line: {"file": NAME, "ids": [ID, ...]}
          (NAME is "-" for standard input)
  decode  reads lines that are such objects, JSON arrays of ids, or ids separated
          by spaces; writes each line's text followed by a newline
  count   "TOKENS<tab>NAME" per input file, then "TOKENS<tab>total" for several

examples:
  python encode_swe.py encode --clean a.txt b.txt --num_process 2 > ids.jsonl
  python encode_swe.py decode ids.jsonl
  echo 今日の天気 | python encode_swe.py count
"""

_ESCAPES = {"n": "\n", "t": "\t", "r": "\r"}


class _Parser(cli.ArgumentParser):
    def parse_args(self, args=None, namespace=None):
        return self.parse_intermixed_args(args, namespace)  # files after options too


def build_parser():
    parser = _Parser(
        prog="encode_swe.py", epilog=_EPILOG,
        description="Encode Japanese text into GPTSAN token ids, decode ids back into "
                    "text, or count tokens (files or standard input).")
    parser.add_argument("command", choices=("encode", "decode", "count"))
    parser.add_argument("files", nargs="*", default=[], help="input files; none: standard input")
    parser.add_argument("--vocabulary", default=encode_swe.DEFAULT_VOCAB, help="vocabulary file")
    parser.add_argument("--emoji", default=encode_swe.DEFAULT_EMOJI, help="emoji table")
    parser.add_argument("--clean", action="store_true",
                        help="encode/count: also replace URLs, e-mail addresses, phone "
                             "numbers, dates, prices and box drawing by <URL> ... <BLOCK>")
    parser.add_argument("--num_process", type=int, default=1,
                        help="encode/count: worker processes over several files")
    parser.add_argument("--breakline", default="\\n",
                        help="decode: text written for <BR> (\\n, \\t and \\r are understood)")
    parser.add_argument("--output", default="-", help="output file, '-' for standard output")
    parser.add_argument("--force", action="store_true", help="overwrite --output")
    parser.add_argument("--no_progress", action="store_true", help="no progress bar")
    return parser


def _check_arguments(args):
    hint = "Pass --vocabulary/--emoji (the released files are ../shared/reference/" \
           "ja-swe36k.txt and emoji.json) or build them with tools/build_vocab.py"
    cli.require_file(args.vocabulary, "vocabulary", hint)
    cli.require_file(args.emoji, "emoji table", hint)
    for path in args.files:
        cli.require_file(path, "input file")
    if args.num_process < 1:
        cli.fail("--num_process must be at least 1, got %d" % args.num_process)
    if args.output != "-" and os.path.exists(args.output) and not args.force:
        cli.fail("%s exists; pass --force to overwrite it" % args.output)
    if args.output != "-":
        cli.check_output_file(args.output, force=True)


def _encoded(args):
    """(name, ids) per input, files in parallel when asked, standard input otherwise."""
    if not args.files:
        try:  # the same strictness as for files: bad bytes are an error, not U+FFFD
            text = sys.stdin.buffer.read().decode("utf-8")
        except UnicodeDecodeError as e:
            cli.fail("standard input is not UTF-8 text (byte %d); convert it first" % e.start)
        yield "-", encode_swe.load_encoder(args.vocabulary, args.emoji).encode(text, args.clean)
        return
    yield from encode_swe.encode_files(args.files, args.clean, args.num_process,
                                       args.vocabulary, args.emoji,
                                       progress=not args.no_progress)


def _id_lists(lines):
    for number, line in enumerate(lines, 1):
        line = line.strip()
        if not line:
            continue
        try:
            record = json.loads(line) if line[0] in "[{" else [int(x) for x in line.split()]
            ids = record["ids"] if isinstance(record, dict) else record
            yield [int(i) for i in ids]
        except (ValueError, KeyError, TypeError):
            cli.fail("line %d: expected a JSON object with \"ids\", a JSON array of ids or "
                     "ids separated by spaces" % number)


def _decode_inputs(paths):
    for path in paths or ["-"]:
        if path == "-":
            yield from _id_lists(sys.stdin)
        else:
            with open(path, encoding="utf-8") as f:
                yield from _id_lists(f)


def _counts(encoded, files):
    total = 0
    for name, ids in encoded:
        total += len(ids)
        yield "%d\t%s" % (len(ids), name)
    if files > 1:
        yield "%d\ttotal" % total


def _write_lines(args, lines):
    if args.output == "-":
        for line in lines:
            sys.stdout.write(line + "\n")
        return
    with atomic_output(args.output) as f:
        for line in lines:
            f.write(line + "\n")


def run(args):
    _check_arguments(args)
    try:
        encoder = encode_swe.load_encoder(args.vocabulary, args.emoji)
        if args.command == "encode":
            lines = (json.dumps({"file": name, "ids": ids}) for name, ids in _encoded(args))
        elif args.command == "count":
            lines = _counts(_encoded(args), len(args.files))
        else:
            breakline = re.sub(r"\\[ntr]", lambda m: _ESCAPES[m.group()[1]], args.breakline)
            lines = (encoder.decode(ids, breakline) for ids in _decode_inputs(args.files))
        _write_lines(args, lines)
    except (encode_swe.VocabularyError, ValueError) as e:
        cli.fail(str(e))


def main():
    cli.run(run, build_parser())
