"""Item images: a parallel, resumable downloader (Amazon ``imUrl``) and a copier for local photo
archives (Yelp ``photos/<photo_id>.jpg``), one code path for both.

Per item, its candidate sources are tried in order until one gives a valid image:

* a URL (``http``/``https`` only) is fetched with ``urllib`` (``--timeout`` seconds, at most
  ``MAX_IMAGE_BYTES``); timeouts, connection errors, incomplete bodies and HTTP 408/429/5xx are
  retried ``--retries`` times with exponential backoff (``--backoff`` x 1, 2, 4, ... seconds); other
  HTTP errors (404, 403, ...) are final at once;
* a local path is read from disk;
* the bytes must decode completely with PIL (a truncated file fails) into an image whose sides
  are both at least ``MIN_IMAGE_SIDE`` pixels (Amazon serves a 1x1 GIF for missing images);
* the bytes are stored unchanged as ``images/<item_id><ext>`` (``ext`` from the decoded format,
  e.g. ``.jpg``), written to a temporary name and renamed.

Every failure is recorded (item, source, reason, detail) and never stops the run; an item with no
valid candidate is reported as failed. Resuming: ``images/sources.tsv`` lists, per stored image,
its source and sha256; an item whose listed source is still one of its candidates and whose file
still has that sha256 is not fetched again.
"""

import concurrent.futures
import hashlib
import http.client
import io
import logging
import os
import socket
import time
import urllib.error
import urllib.request
from collections import namedtuple

from recbole_reveal.infra.files import atomic_open, file_sha256

logger = logging.getLogger(__name__)

MIN_IMAGE_SIDE = 16
MAX_IMAGE_BYTES = 20 * 1024 * 1024
MANIFEST = "sources.tsv"
USER_AGENT = "recbole-reveal-prepare/0.1 (+https://github.com/; research dataset preparation)"
_EXTENSIONS = {"JPEG": ".jpg", "MPO": ".jpg", "PNG": ".png", "GIF": ".gif", "WEBP": ".webp",
               "BMP": ".bmp", "TIFF": ".tif"}
PROGRESS_EVERY_S = 10.0

# ``attempts``: the failed sources before the one used (Stored) or all of them (Failed), as
# ``(source, reason, detail)``.
Stored = namedtuple("Stored", "token file source sha256 cached candidate attempts")
Failed = namedtuple("Failed", "token attempts")


class ImageRejected(Exception):
    def __init__(self, reason, detail="", retry=False):
        super().__init__(f"{reason}: {detail}")
        self.reason, self.detail, self.retry = reason, detail, retry


def verify_image(data):
    """The file extension for ``data`` if it is a complete image of the minimum size, else
    :class:`ImageRejected` with the reason."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as im:
            fmt, (w, h) = im.format, im.size
            if min(w, h) < MIN_IMAGE_SIDE:
                raise ImageRejected("too_small", f"{w}x{h} pixels (a placeholder?)")
            if fmt == "JPEG":  # decode at 1/8 scale: same full read of the stream, 8x faster
                im.draft("RGB", (max(1, w // 8), max(1, h // 8)))
            im.load()
    except ImageRejected:
        raise
    except UnidentifiedImageError:
        raise ImageRejected("not_an_image", f"{len(data)} bytes, starting {data[:12]!r}")
    except Image.DecompressionBombError as e:
        raise ImageRejected("too_large", str(e)[:80])
    except Exception as e:  # noqa: BLE001  (PIL raises OSError, SyntaxError, ValueError, ...)
        raise ImageRejected("corrupt_image", f"{type(e).__name__}: {str(e)[:80]}")
    return _EXTENSIONS.get(fmt, "." + fmt.lower())


def http_get(url, timeout, max_bytes=MAX_IMAGE_BYTES):
    """The body of ``url``, or :class:`ImageRejected` (``retry`` tells whether to try again)."""
    if not url.lower().startswith(("http://", "https://")):
        raise ImageRejected("bad_url", f"not an http(s) URL: {url[:80]}")
    request = urllib.request.Request(url, headers={"User-Agent": USER_AGENT})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as resp:
            data = resp.read(max_bytes + 1)
            length = resp.headers.get("Content-Length")
    except urllib.error.HTTPError as e:
        retry = e.code in (408, 429) or e.code >= 500
        raise ImageRejected(f"http_{e.code}", str(e.reason)[:80], retry=retry)
    except urllib.error.URLError as e:
        if isinstance(e.reason, (socket.timeout, TimeoutError)):
            raise ImageRejected("timeout", f"no answer in {timeout} s", retry=True)
        raise ImageRejected("connection_error", str(e.reason)[:80], retry=True)
    except (socket.timeout, TimeoutError):
        raise ImageRejected("timeout", f"no answer in {timeout} s", retry=True)
    except (http.client.HTTPException, ConnectionError, OSError) as e:
        if isinstance(e, http.client.InvalidURL):
            raise ImageRejected("bad_url", str(e)[:80])
        raise ImageRejected("connection_error", f"{type(e).__name__}: {str(e)[:80]}", retry=True)
    except ValueError as e:  # unknown url type, malformed URL
        raise ImageRejected("bad_url", str(e)[:80])
    if len(data) > max_bytes:
        raise ImageRejected("too_large", f"more than {max_bytes} bytes")
    if length is not None and length.isdigit() and len(data) < int(length):
        raise ImageRejected("incomplete", f"{len(data)} of {length} bytes", retry=True)
    return data


def read_manifest(image_dir):
    path = os.path.join(image_dir, MANIFEST)
    entries = {}
    if os.path.isfile(path):
        with open(path, encoding="utf-8") as f:
            next(f, None)
            for line in f:
                parts = line.rstrip("\n").split("\t")
                if len(parts) == 4:
                    entries[parts[0]] = tuple(parts[1:])  # file, source, sha256
    return entries


def write_manifest(image_dir, stored):
    path = os.path.join(image_dir, MANIFEST)
    with atomic_open(path, "w", newline="\n") as f:
        f.write("item_id\tfile\tsource\tsha256\n")
        for s in sorted(stored, key=lambda s: s.token):
            f.write(f"{s.token}\t{s.file}\t{s.source}\t{s.sha256}\n")


class ImageFetcher:
    """Fetches, verifies and stores the images of many items in parallel threads."""

    def __init__(self, image_dir, workers=8, retries=3, backoff=1.0, timeout=20.0, offline=False):
        self.image_dir = image_dir
        self.workers, self.retries, self.backoff, self.timeout = workers, retries, backoff, timeout
        self.offline = offline
        os.makedirs(image_dir, exist_ok=True)
        self.manifest = read_manifest(image_dir)

    def _load(self, location):
        if "://" in location:
            if self.offline:
                raise ImageRejected("offline", "--offline: not downloaded")
            for attempt in range(self.retries + 1):
                try:
                    return http_get(location, self.timeout)
                except ImageRejected as e:
                    # the record holds the last answer only: the number of tries is transient and
                    # would make re-runs differ
                    if not e.retry or attempt == self.retries:
                        raise
                    logger.debug("retrying %s after %s (try %d)", location, e, attempt + 1)
                time.sleep(self.backoff * 2 ** attempt)
        try:
            with open(location, "rb") as f:
                data = f.read(MAX_IMAGE_BYTES + 1)
        except FileNotFoundError:
            raise ImageRejected("missing_file", "no such file")
        except OSError as e:
            raise ImageRejected("unreadable_file", f"{type(e).__name__}: {str(e)[:80]}")
        if len(data) > MAX_IMAGE_BYTES:
            raise ImageRejected("too_large", f"more than {MAX_IMAGE_BYTES} bytes")
        return data

    def _cached(self, token, labels):
        entry = self.manifest.get(token)
        if not entry or entry[1] not in labels:
            return None
        file, source, sha = entry
        path = os.path.join(os.path.dirname(self.image_dir), file)
        if os.path.isfile(path) and file_sha256(path) == sha:
            return Stored(token, file, source, sha, True, labels.index(source), [])
        return None

    def fetch_one(self, token, sources):
        """``Stored`` or ``Failed`` for one item; never raises for a bad source."""
        labels = [label for label, _ in sources]
        try:
            cached = self._cached(token, labels)
        except OSError:
            cached = None
        # Sources before the cached one are tried again, exactly as a fresh run would (a fresh run
        # would have used them had they been valid); only the cached one itself is not re-fetched.
        limit = cached.candidate if cached else len(sources)
        attempts = []
        for k, (label, location) in enumerate(sources[:limit]):
            try:
                data = self._load(location)
                ext = verify_image(data)
                name = token + ext
                path = os.path.join(self.image_dir, name)
                with atomic_open(path, "wb") as f:
                    f.write(data)
                rel = f"{os.path.basename(self.image_dir)}/{name}"
                return Stored(token, rel, label, hashlib.sha256(data).hexdigest(), False, k, attempts)
            except ImageRejected as e:
                attempts.append((label, e.reason, e.detail))
            except Exception as e:  # noqa: BLE001  (one bad source never aborts the run)
                attempts.append((label, "error", f"{type(e).__name__}: {str(e)[:80]}"))
        if cached:
            return cached._replace(attempts=attempts)
        if not sources:
            attempts.append(("", "no_source", "the item has no image source"))
        return Failed(token, attempts)

    def fetch_all(self, jobs):
        """``jobs``: list of ``(token, sources)``. Returns ``(stored, failed)``, both sorted by
        token; rewrites ``images/sources.tsv`` for the stored ones."""
        stored, failed = [], []
        total, start = len(jobs), time.perf_counter()
        last = start
        if total:
            logger.info("images: %d items, %d threads%s", total, self.workers,
                        " (offline: cached files only)" if self.offline else "")
        with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, self.workers)) as pool:
            futures = [pool.submit(self.fetch_one, token, sources) for token, sources in jobs]
            for done, fut in enumerate(concurrent.futures.as_completed(futures), 1):
                result = fut.result()
                (stored if isinstance(result, Stored) else failed).append(result)
                now = time.perf_counter()
                if now - last >= PROGRESS_EVERY_S or done == total:
                    logger.info("images: %d/%d done (%d reused from an earlier run), %d failed (%.1f items/s)",
                                done, total, sum(s.cached for s in stored), len(failed),
                                done / max(now - start, 1e-9))
                    last = now
        stored.sort(key=lambda s: s.token)
        failed.sort(key=lambda f: f.token)
        write_manifest(self.image_dir, stored)
        return stored, failed
