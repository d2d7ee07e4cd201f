"""Files written whole or not at all: into a temporary file beside the target, renamed over it once
complete (a reader never sees half a file; a failure leaves an existing file as it was), with the
permissions the user's umask gives a new file (tempfile.mkstemp's own are 0600, which breaks shared model
and result folders)."""
import contextlib
import os
import tempfile
from typing import Callable


def current_umask() -> int:
    try:  # Linux states it; reading it there changes nothing
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    umask = os.umask(0o022)  # elsewhere reading the umask means setting it: put it back at once
    os.umask(umask)
    return umask


def new_file_mode() -> int:
    """The permissions open() would give a new file under the user's umask (mkstemp's are 0600)."""
    return 0o666 & ~current_umask()


@contextlib.contextmanager
def atomic_path(path: str, suffix: str = ".tmp"):
    """A temporary path beside `path` to write to; renamed over `path` when the block ends without error,
    removed otherwise."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=suffix, dir=folder)
    os.close(fd)
    try:
        yield tmp
        os.chmod(tmp, new_file_mode())  # after the write: some writers (safetensors) make the file 0600 anew
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_atomically(path: str, write: Callable, suffix: str = ".tmp"):
    """Write the text file `path` through `write(text_file)`, atomically."""
    with atomic_path(path, suffix) as tmp:
        with open(tmp, "w", encoding="utf-8") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
