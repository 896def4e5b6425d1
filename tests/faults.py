"""Damage checkpoints and record files the ways real faults do (a full disk, a
killed copy, a stray edit), for the reliability tests."""
import glob
import os


def _shards(prefix):
    return sorted(glob.glob(prefix + ".data-*"))


def truncate(path, keep=0.5):
    """Cut a file to `keep` of its size (0: empty)."""
    size = os.path.getsize(path)
    with open(path, "r+b") as f:
        f.truncate(int(size * keep))
    return path


def truncate_data(prefix, keep=0.5):
    """Truncate (keep=0: empty) the first data shard of checkpoint `prefix`."""
    return truncate(_shards(prefix)[0], keep)


def truncate_index(prefix, keep=0.5):
    return truncate(prefix + ".index", keep)


def garbage_index_file(model_dir, text="this is not a checkpoint state\x00\xff"):
    """Overwrite the `checkpoint` index file with junk."""
    with open(os.path.join(model_dir, "checkpoint"), "w", encoding="latin-1") as f:
        f.write(text)


def remove_index_file(model_dir):
    os.remove(os.path.join(model_dir, "checkpoint"))


def index_names_deleted(model_dir, name="model.ckpt-999999"):
    """Point the `checkpoint` index file at a checkpoint that does not exist."""
    with open(os.path.join(model_dir, "checkpoint"), "w") as f:
        f.write('model_checkpoint_path: "%s"\nall_model_checkpoint_paths: "%s"\n' % (name, name))


def empty_record_file(path):
    open(path, "wb").close()
    return path


def corrupt_record(path, offset=20):
    """Flip bytes inside the first record's payload so its CRC fails (DataLossError)."""
    with open(path, "r+b") as f:
        f.seek(offset)
        data = f.read(8)
        f.seek(offset)
        f.write(bytes(b ^ 0xFF for b in data))
    return path
