"""Checkpoint bookkeeping for training: which checkpoint to resume from,
retention across restarts, and an exclusive lock on the output directory.

The `checkpoint` index file is only a hint: it can be missing, garbage or name
a deleted checkpoint while trained `model.ckpt-N` files sit next to it, so the
files on disk decide what exists.
"""
import json
import os
import re
import socket
import sys

from model.errors import UserError

_NUMBERED = re.compile(r"^model\.ckpt-(\d+)\.index$")
LOCK_NAME = ".gptsan-training.lock"


def numbered(output_dir):
    """[(step, prefix)] of the model.ckpt-N checkpoints with an index file, newest first."""
    if not os.path.isdir(output_dir):
        return []
    found = []
    for name in os.listdir(output_dir):
        m = _NUMBERED.match(name)
        if m:
            found.append((int(m.group(1)), os.path.join(output_dir, name[:-len(".index")])))
    return sorted(found, reverse=True)


def has_checkpoint_files(output_dir):
    """Anything that looks like a saved model (index, data shard or index file)."""
    if not os.path.isdir(output_dir):
        return False
    return any(n.startswith("model.ckpt") or n == "checkpoint" for n in os.listdir(output_dir))


def problem(prefix):
    """Why the checkpoint at `prefix` cannot be restored, or None when it looks complete.

    Reads the index (a truncated one is 'not an sstable') and checks that every data
    shard it implies exists and is not empty; truncation inside a shard surfaces when
    the tensors are read, which `restore_first` handles.
    """
    from model.compat import tf
    index = prefix + ".index"
    if not os.path.isfile(index) or os.path.getsize(index) == 0:
        return "index file %s is missing or empty" % index
    try:
        reader = tf.train.load_checkpoint(prefix)
        names = reader.get_variable_to_shape_map()
    except Exception as e:  # truncated or foreign index
        return "cannot read %s (%s)" % (index, str(e).strip().splitlines()[0])
    if not names:
        return "%s lists no variables" % index
    folder, base = os.path.split(prefix)
    shards = [n for n in os.listdir(folder or ".") if n.startswith(base + ".data-")]
    if not shards:
        return "no data shard %s.data-* next to the index" % prefix
    m = re.search(r"-of-(\d+)$", shards[0])
    expected = int(m.group(1)) if m else len(shards)
    for k in range(expected):
        shard = "%s.data-%05d-of-%05d" % (prefix, k, expected)
        if not os.path.isfile(shard):
            return "data shard %s is missing" % shard
        if os.path.getsize(shard) == 0:
            return "data shard %s is empty" % shard
    return None


def readable_error(prefix, exc):
    """One line for a checkpoint whose tensors could not be read."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return "checkpoint %s is damaged (%s)" % (prefix, text)


def candidates(output_dir):
    """Checkpoint prefixes to try, best first, and the problems of the skipped ones.

    Newest numbered checkpoint first; a prefix named by the index file that is not a
    numbered one (a converted model's model.ckpt) comes after those.
    """
    from model.compat import tf
    ordered = [prefix for _, prefix in numbered(output_dir)]
    try:
        named = tf.train.latest_checkpoint(output_dir)
    except Exception:  # garbage index file
        named = None
    if named and os.path.abspath(named) not in map(os.path.abspath, ordered):
        ordered.append(named)
    good, skipped = [], []
    for prefix in ordered:
        why = problem(prefix)
        (skipped.append((prefix, why)) if why else good.append(prefix))
    return good, skipped


def recover_retention(saver, output_dir, keep):
    """Tell the Saver about checkpoints written by earlier runs, so max_to_keep holds
    across restarts (the released Saver semantics). The Saver deletes the oldest only
    after a newer save has completed, so the checkpoint resumed from survives until then."""
    paths = [prefix for _, prefix in sorted(numbered(output_dir))]
    if keep and paths:
        saver.recover_last_checkpoints(paths)


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


class OutputLock:
    """An exclusive lock on a training output directory for the whole run.

    The lock file holds the holder's pid and host. A lock left by a dead process on
    this host is taken over with a message; a live holder (or one on another host,
    which cannot be checked) makes the second run fail naming it.
    """

    def __init__(self, output_dir):
        self.path = os.path.join(output_dir, LOCK_NAME)
        self.held = False

    def _holder(self):
        try:
            with open(self.path, encoding="utf-8") as f:
                return json.load(f)
        except (OSError, ValueError):
            return None

    def acquire(self):
        os.makedirs(os.path.dirname(self.path) or ".", exist_ok=True)
        me = {"pid": os.getpid(), "host": socket.gethostname()}
        for _ in range(3):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                holder = self._holder()
                if holder == me:  # this process already holds it (a second Trainer)
                    self.held = True
                    return self
                if holder is None:
                    # Half-written by a process that died between create and write.
                    os.unlink(self.path)
                    continue
                if holder.get("host") == me["host"] and not _alive(int(holder.get("pid", -1))):
                    print("taking over the stale lock %s of pid %s, which is no longer "
                          "running" % (self.path, holder.get("pid")), file=sys.stderr)
                    os.unlink(self.path)
                    continue
                raise UserError("%s is in use by another training run (pid %s on host %s, "
                                "lock file %s); wait for it to finish or use another "
                                "output directory" % (os.path.dirname(self.path), holder.get("pid"),
                                                  holder.get("host"), self.path))
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump(me, f)
            self.held = True
            return self
        raise UserError("cannot take the lock %s" % self.path)

    def release(self):
        if self.held and self._holder() == {"pid": os.getpid(), "host": socket.gethostname()}:
            try:
                os.unlink(self.path)
            except FileNotFoundError:
                pass
        self.held = False
