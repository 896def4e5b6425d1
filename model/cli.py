"""Shared command-line hygiene for every run_*.py and tools/*.py script.

A user mistake ends with one line on stderr and exit status 2, never a traceback.
TensorFlow's C++ and Python logging is silenced unless --verbose is given
(`run` decides that before the script imports TensorFlow).
"""
import argparse
import os
import sys
import warnings

from model.errors import UserError


class ArgumentParser(argparse.ArgumentParser):
    """argparse with defaults shown in --help and one-line errors (exit 2)."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", argparse.ArgumentDefaultsHelpFormatter)
        super().__init__(*args, **kwargs)
        self.add_argument("--verbose", action="store_true",
                          help="show TensorFlow logging and full tracebacks")

    def error(self, message):
        self.exit(2, "%s: error: %s (see --help)\n" % (self.prog, message))


def quiet_tensorflow(verbose=False):
    """Choose, before TensorFlow is imported, whether it may talk.

    model.compat, the one place TensorFlow is imported, silences its C++ and
    Python logging unless GPTSAN_VERBOSE is set; a script also hides Python
    warnings unless --verbose is given.
    """
    if verbose:
        os.environ["GPTSAN_VERBOSE"] = "1"
        return
    warnings.filterwarnings("ignore")


def fail(message):
    """Raise a UserError; `run` turns it into one line and exit status 2."""
    raise UserError(message)


def require_file(path, what, hint=""):
    if path and os.path.isdir(path):
        fail("%s %s is a directory, not a file" % (what, path))
    if not path or not os.path.isfile(path):
        fail("%s not found: %s%s" % (what, path, (". " + hint) if hint else ""))
    if not os.access(path, os.R_OK):
        fail("cannot read %s %s (permission denied)" % (what, path))
    return path


def read_lines(path, what="input file"):
    """The lines of a UTF-8 text file, without their line ends; a file in another
    encoding is one clear error naming it."""
    try:
        with open(path, encoding="utf-8") as f:
            return f.read().splitlines()
    except UnicodeDecodeError:
        fail("%s %s is not UTF-8 text" % (what, path))


def check_output_file(path, force, flag="--output"):
    """Before any work: an output path that is a directory, exists without --force,
    or sits in a directory that cannot be written is one clear error."""
    if os.path.isdir(path):
        fail("%s %s is a directory; give a file name" % (flag, path))
    if os.path.exists(path) and not force:
        fail("output file exists: %s (use --force to overwrite)" % path)
    parent = os.path.dirname(os.path.abspath(path))
    while not os.path.exists(parent):  # it will be created: check the first existing one
        parent = os.path.dirname(parent)
    if not os.access(parent, os.W_OK):
        fail("cannot write %s %s: %s is not writable (permission denied)" % (flag, path, parent))
    return path


def run(main, parser):
    """Parse arguments, quiet TensorFlow, run main(args); map user errors to exit 2."""
    args = parser.parse_args()
    quiet_tensorflow(args.verbose)
    try:
        result = main(args)
    except UserError as e:
        if args.verbose:
            raise
        sys.stderr.write("%s: error: %s\n" % (parser.prog, e))
        sys.exit(2)
    except PermissionError as e:
        # Root never sees these; users on shared machines do, for any input or output.
        if args.verbose:
            raise
        sys.stderr.write("%s: error: permission denied: %s (check the file's permissions "
                         "or choose another path)\n" % (parser.prog, e.filename or e))
        sys.exit(2)
    except KeyboardInterrupt:
        sys.stderr.write("%s: interrupted\n" % parser.prog)
        sys.exit(130)
    sys.exit(result or 0)
