"""Image digests for the FVE cache keys: :func:`image_digests` hashes image files in worker threads and
remembers each digest by the file's status (size, times, inode), so a later cycle of the same process
does not read the images again."""

import hashlib
import os
import threading
from concurrent.futures import ThreadPoolExecutor

from recbole_reveal.fve.encoding.images import read_image_bytes


def sha256_bytes(data):
    return hashlib.sha256(data).hexdigest()


_DIGESTS = {}                   # (path, size, mtime_ns, ctime_ns, inode) -> SHA-256 of the file's bytes
_DIGESTS_LOCK = threading.Lock()
_DIGESTS_MAX = 2_000_000


def image_digest(path):
    """``(sha256, None)`` of the file at ``path``, or ``(None, reason)`` when it is missing, unreadable
    or empty. Remembered by the file's status, so an unchanged file is read once per process."""
    if not path:
        return None, "no image path"
    try:
        st = os.stat(path)
    except OSError:
        return None, "file not found"
    memo = (os.path.abspath(path), st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino)
    digest = _DIGESTS.get(memo)
    if digest is not None:
        return digest, None
    data, reason = read_image_bytes(path)
    if data is None:
        return None, reason
    digest = sha256_bytes(data)
    with _DIGESTS_LOCK:
        if len(_DIGESTS) >= _DIGESTS_MAX:
            _DIGESTS.clear()
        _DIGESTS[memo] = digest
    return digest, None


def image_digests(paths, workers=4):
    """:func:`image_digest` of every path, in order, hashed by ``workers`` threads (file reads and
    SHA-256 release the GIL)."""
    paths = list(paths)
    if workers <= 1 or len(paths) < 2:
        return [image_digest(p) for p in paths]
    with ThreadPoolExecutor(min(int(workers), len(paths))) as pool:
        return list(pool.map(image_digest, paths, chunksize=64))
