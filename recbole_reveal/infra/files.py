"""How the plugin writes files and keeps two runs out of one folder. Light: standard library only.

- **Atomic writes** (:func:`atomic_path`, :func:`atomic_open`, and :func:`write_json_atomic` for JSON): the new
  content goes to a temporary file beside the target with a name no other process or thread can pick
  (``.tmp-<pid>-<random>-<name>``), is flushed to disk, then renamed over the target in one step; a
  reader, a killed run or a second run never sees a half-written file, and a failed write leaves no
  temporary file behind.
- **Locks** (:func:`lock_file`, :func:`folder_lock`): an exclusive ``fcntl.flock`` on a lock file, so two
  runs never write one folder at once. The holder's pid, host, start time and command are written into
  the lock file; a second run either waits (``wait`` seconds) or stops with a :class:`FolderInUseError`
  that names them. The operating system releases the lock when the holder ends, even when it is killed,
  so a lock never outlives its run (on a network file system, only where it supports ``flock``).
"""

import contextlib
import json
import logging
import os
import socket
import sys
import time

from recbole_reveal.infra.errors import FolderInUseError

LOCK_NAME = ".reveal.lock"
_MAX_NAME = 255

logger = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------------------
# atomic writes
# ---------------------------------------------------------------------------------------------

def temporary_path(path):
    """A new, empty file beside ``path`` with a name unique to this call (created exclusively, with the
    permissions an ordinary ``open`` would give); the caller writes it and renames or removes it."""
    folder, name = os.path.split(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    while True:
        prefix = f".tmp-{os.getpid()}-{os.urandom(6).hex()}-"
        tmp = os.path.join(folder, prefix + name[-(_MAX_NAME - len(prefix)):])
        try:
            os.close(os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))
            return tmp
        except FileExistsError:         # practically never: 48 random bits
            continue


@contextlib.contextmanager
def atomic_path(path, fsync=True):
    """Yield a unique temporary path beside ``path`` for a writer that needs a file name (``torch.save``,
    ``savefig``); when the block ends without an error the file replaces ``path`` in one step, else it
    is removed. Keeps the extension, so writers that infer a format from it still do. (``torch.save``
    names its archive's records after the file: give it a file object from :func:`atomic_open` instead,
    so the same tensors give the same bytes.)"""
    tmp = temporary_path(path)
    try:
        yield tmp
        if fsync:
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def atomic_open(path, mode="w", encoding=None, newline=None, fsync=True):
    """``open(path, mode)`` for writing, atomically (module docstring): text modes default to UTF-8."""
    if "b" not in mode and encoding is None:
        encoding = "utf-8"
    with atomic_path(path, fsync=False) as tmp:
        with open(tmp, mode, encoding=encoding, newline=newline) as f:
            yield f
            f.flush()
            if fsync:
                os.fsync(f.fileno())


def jsonable(value):
    """``value`` with every leaf a JSON type, dict keys as sorted strings (the same value gives the same
    text and digest): numpy scalars become numbers, anything else its ``str``."""
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in sorted(value.items(), key=lambda kv: str(kv[0]))}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if hasattr(value, "item") and getattr(value, "ndim", 1) == 0:
        return value.item()
    return str(value)


def write_json_atomic(path, obj, indent=2, sort_keys=False):
    """Write ``obj`` as JSON (with a final newline), atomically."""
    with atomic_open(path, "w") as f:
        json.dump(obj, f, indent=indent, sort_keys=sort_keys)
        f.write("\n")
    return path


# ---------------------------------------------------------------------------------------------
# locks
# ---------------------------------------------------------------------------------------------

@contextlib.contextmanager
def lock_file(path, purpose, wait=0.0, poll=0.2, shared=False, advice=""):
    """Hold a lock on the file ``path`` (created if needed) for the block.

    Args:
        purpose: what the holder does (written into the lock file, shown to whoever waits).
        wait: seconds to wait for another holder to let go (polling every ``poll`` seconds); ``None`` = as
            long as it takes (woken by the kernel the moment the holder lets go); ``0`` = stop at once
            with a :class:`FolderInUseError` naming the holder.
        shared: a shared (reader's) lock: any number of them at once, none while an exclusive one is held.
        advice: how to proceed, appended to the error.
    """
    try:
        import fcntl
    except ImportError:                 # no flock on this platform (Windows): run unlocked, say so once
        logger.warning("no file locking on this platform: do not start two runs on %s at once", path)
        yield
        return
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    f = open(path, "a+", encoding="utf-8")
    try:
        kind = fcntl.LOCK_SH if shared else fcntl.LOCK_EX
        deadline = None if wait is None else time.monotonic() + wait
        try:
            fcntl.flock(f.fileno(), kind | fcntl.LOCK_NB)
        except BlockingIOError:
            if wait == 0:
                raise FolderInUseError(_in_use_message(path, purpose, advice)) from None
            logger.warning("%s; waiting%s", _in_use_message(path, purpose, ""),
                           "" if wait is None else f" up to {wait:g} s")
            if wait is None:
                fcntl.flock(f.fileno(), kind)       # the kernel wakes us when the holder lets go
            else:
                while True:
                    time.sleep(poll)
                    try:
                        fcntl.flock(f.fileno(), kind | fcntl.LOCK_NB)
                        break
                    except BlockingIOError:
                        if time.monotonic() >= deadline:
                            raise FolderInUseError(_in_use_message(path, purpose, advice)) from None
        if not shared:
            f.seek(0)
            f.truncate()
            json.dump(holder_info(purpose), f)
            f.flush()
        yield
    finally:
        if not shared and not f.closed:
            with contextlib.suppress(OSError):
                f.seek(0)
                f.truncate()
        f.close()                       # releases the lock


def folder_lock(folder, purpose, wait=0.0, advice=""):
    """:func:`lock_file` on ``<folder>/.reveal.lock``: one writer of the folder at a time."""
    return lock_file(os.path.join(folder, LOCK_NAME), purpose, wait=wait, advice=advice)


def holder_info(purpose):
    return {"pid": os.getpid(), "host": socket.gethostname(), "since": time.strftime("%Y-%m-%d %H:%M:%S"),
            "purpose": purpose, "command": " ".join(sys.argv)[:500]}


def read_holder(path):
    """What the current holder of lock file ``path`` wrote about itself (``{}`` when unknown)."""
    try:
        with open(path, encoding="utf-8") as f:
            return json.loads(f.read() or "{}")
    except (OSError, ValueError):
        return {}


def _in_use_message(path, purpose, advice):
    h = read_holder(path)
    who = (f"pid {h.get('pid', '?')} on host {h.get('host', '?')} since {h.get('since', '?')}, "
           f"{h.get('purpose', 'running')}: `{h.get('command', '?')}`") if h else "another process"
    folder = os.path.dirname(os.path.abspath(path))
    text = f"{folder} is in use by {who} (lock {path}); this run ({purpose}) would interleave its files with it"
    return f"{text}. {advice}" if advice else text


@contextlib.contextmanager
def locked_folders(folders, purpose, wait=0.0, advice=""):
    """:func:`folder_lock` on each distinct folder of ``folders`` (in a fixed order, so two runs that
    want the same folders never hold one each and wait for the other)."""
    with contextlib.ExitStack() as stack:
        for folder in sorted({os.path.realpath(f) for f in folders}):
            stack.enter_context(folder_lock(folder, purpose, wait=wait, advice=advice))
        yield


def file_sha256(path):
    """The SHA-256 (hex) of the bytes of the file at ``path``, read in chunks."""
    import hashlib

    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()
