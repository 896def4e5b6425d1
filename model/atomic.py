"""Atomic file writes: a temporary file in the same folder, then a rename, so a
crash never leaves a half-written file where the user expects a whole one."""
import contextlib
import json
import os
import tempfile


def _umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_output(path, binary=False):
    """A file object to write `path` with: a temporary file beside it that
    replaces `path` only when the block ends without an exception (the folder is
    created if needed).  Text mode writes UTF-8 with "\n" line ends unchanged."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=folder, prefix="." + os.path.basename(path) + ".",
                                         suffix=".tmp")
    try:
        with (os.fdopen(handle, "wb") if binary
              else os.fdopen(handle, "w", encoding="utf-8", newline="\n")) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.chmod(temporary, 0o666 & ~_umask())  # mkstemp makes it private (0600)
        os.replace(temporary, path)
    except BaseException:
        if os.path.exists(temporary):
            os.unlink(temporary)
        raise


def write_text_atomic(path, text):
    with atomic_output(path) as f:
        f.write(text)


def write_bytes_atomic(path, data):
    with atomic_output(path, binary=True) as f:
        f.write(data)


def write_json_atomic(obj, path):
    write_text_atomic(path, json.dumps(obj, indent=2, ensure_ascii=False) + "\n")


class JsonLinesOutput:
    """Rows printed to stdout as they come, or, with an output path, written
    atomically when `close()` is called (so a crash leaves no partial file)."""

    def __init__(self, path=None):
        self.path, self.lines = path, []

    def add(self, row):
        line = json.dumps(row, ensure_ascii=False)
        self.lines.append(line)
        if not self.path:
            print(line, flush=True)

    def close(self):
        if self.path:
            write_text_atomic(self.path, "".join(line + "\n" for line in self.lines))
