"""Small raw files in the exact public formats (Amazon 2014, Yelp), each planted case named, plus a
local HTTP server on 127.0.0.1 serving fixture images (good, broken, 404, flaky, slow).

Every case the converter has a rule for appears here; tests/test_prepare.py checks the outcome.
"""

import gzip
import http.server
import io
import json
import os
import threading
import time

from PIL import Image

DAY = 86400
BASE_TIME = 1_388_534_400  # 2014-01-01 00:00 UTC


def image_bytes(color, fmt="JPEG", size=(40, 32)):
    img = Image.new("RGB", size, color)
    for x in range(0, size[0], 4):  # a little texture so JPEG keeps something to decode
        img.putpixel((x, x % size[1]), (255 - color[0], 255 - color[1], 255 - color[2]))
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    return buf.getvalue()


def _color(k):
    return ((37 * k) % 256, (91 * k + 40) % 256, (53 * k + 90) % 256)


TINY_GIF = image_bytes((0, 0, 0), "GIF", (1, 1))
BROKEN = b"\x89PNG\r\n\x1a\n" + b"garbage" * 20
TRUNCATED_JPEG = image_bytes((200, 30, 30), "JPEG", (64, 64))[:300]
HTML_PAGE = b"<html><body>Image not found</body></html>"


# --------------------------------------------------------------------------- HTTP server

class FixtureServer:
    """``ThreadingHTTPServer`` on 127.0.0.1 (random port). Paths:

    ``/img/<name>`` the registered bytes (404 when unknown); ``/flaky/<name>`` 503 on the first
    request of each path, then the bytes; ``/slow/<name>`` answers after ``slow_s`` seconds;
    ``/length/<name>`` claims a Content-Length longer than the body. Requests are counted per path.
    The server stops itself after ``lifetime_s`` seconds at the latest.
    """

    def __init__(self, files, slow_s=1.5, lifetime_s=120):
        self.files, self.slow_s = dict(files), slow_s
        self.requests = {}
        self._lock = threading.Lock()
        owner = self

        class Handler(http.server.BaseHTTPRequestHandler):
            timeout = 10

            def log_message(self, *args):
                pass

            def do_GET(self):
                with owner._lock:
                    owner.requests[self.path] = owner.requests.get(self.path, 0) + 1
                    count = owner.requests[self.path]
                _, kind, name = (self.path.split("/", 2) + ["", ""])[:3]
                body = owner.files.get(name)
                if body is None or kind not in ("img", "flaky", "slow", "length"):
                    self.send_error(404)
                    return
                if kind == "flaky" and count == 1:
                    self.send_error(503)
                    return
                if kind == "slow":
                    time.sleep(owner.slow_s)
                self.send_response(200)
                self.send_header("Content-Type", "application/octet-stream")
                extra = 1000 if kind == "length" else 0
                self.send_header("Content-Length", str(len(body) + extra))
                self.end_headers()
                try:
                    self.wfile.write(body)
                except OSError:
                    pass

        class Server(http.server.ThreadingHTTPServer):
            request_queue_size = 128  # the converter opens up to --workers connections at once

        self.httpd = Server(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.base = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self._thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                        daemon=True)
        self._timer = threading.Timer(lifetime_s, self.stop)
        self._timer.daemon = True

    def start(self):
        self._thread.start()
        self._timer.start()
        return self

    def stop(self):
        self._timer.cancel()
        self.httpd.shutdown()
        self.httpd.server_close()

    def hits(self, prefix=""):
        with self._lock:
            return sum(n for p, n in self.requests.items() if p.startswith(prefix))


# --------------------------------------------------------------------------- Amazon 2014

GOOD = [f"B00000000{k}" if k < 10 else f"B0000000{k}" for k in range(1, 13)]  # 12 valid items
# Items that must be removed, each for one reason (each has >= 5 reviewers, so only the rule removes it).
NO_META, NO_IMAGE_URL, NO_TEXT = "B0000000NM", "B0000000NI", "B0000000NT"
IMG_404, IMG_BROKEN, IMG_TINY, IMG_TRUNCATED, IMG_HTML = "B0000000E4", "B0000000EB", "B0000000ES", "B0000000ET", "B0000000EH"
PROBLEM = [NO_META, NO_IMAGE_URL, NO_TEXT, IMG_404, IMG_BROKEN, IMG_TINY, IMG_TRUNCATED, IMG_HTML]
THIN = "B0000000TH"  # survives the content filter, falls in the k-core cascade
FLAKY = GOOD[3]      # served 503 once, then fine: the retry must get it
PNG_ITEM = GOOD[4]   # served as PNG: stored as .png
N_CORE_USERS = 40


def amazon_users():
    """``{user: [(asin, day), ...]}`` before any planted malformed line."""
    users = {}
    for c in range(N_CORE_USERS):
        items = [GOOD[(c + 5 * k) % 12] for k in range(7)] + [PROBLEM[c % len(PROBLEM)]]
        users[f"AC{c:03d}XYZ"] = [(a, k // 2) for k, a in enumerate(items)]  # pairs share a day: ties
    # k-core cascade: ALOW (4 interactions) -> THIN (5 -> 4) -> AEDGE (5 -> 4), three removal passes
    users["ALOWUSER01"] = [(THIN, 0), (GOOD[0], 1), (GOOD[1], 2), (GOOD[2], 3)]
    for c in range(3):
        users[f"AC{c:03d}XYZ"].append((THIN, 20))
    users["AEDGEUSER1"] = [(THIN, 1), (GOOD[5], 2), (GOOD[6], 3), (GOOD[7], 4), (GOOD[8], 5)]
    # image cascade: exactly 5 interactions, one with the 404 image -> removed by the second k-core
    users["AFAILUSER1"] = [(IMG_404, 0), (GOOD[9], 1), (GOOD[10], 2), (GOOD[11], 3), (GOOD[0], 4)]
    return users


def _review(user, asin, day, rating=5.0, text=None, summary="Nice", **extra):
    rec = {"reviewerID": user, "asin": asin, "reviewerName": "Some One", "helpful": [0, 0],
           "reviewText": text if text is not None else f"Review of {asin} by {user}.",
           "overall": rating, "summary": summary, "unixReviewTime": BASE_TIME + day * DAY,
           "reviewTime": time.strftime("%m %d, %Y", time.gmtime(BASE_TIME + day * DAY))}
    rec.update(extra)
    return rec


def amazon_review_lines():
    """The review file's lines (bytes, without newline), and the planted cases."""
    lines = []
    for user, items in amazon_users().items():
        for asin, day in items:
            lines.append(json.dumps(_review(user, asin, day, rating=float(1 + (day % 5)))).encode())
    u = "AC007XYZ"
    cases = {
        # repeated pair: a later review of an item the user already reviewed (dropped)
        "duplicate": json.dumps(_review(u, GOOD[(7 + 5) % 12], 30, rating=4.0)).encode(),
        "json_error": b'{"reviewerID": "AC001XYZ", "asin": ',
        "not_object": b'[1, 2, 3]',
        "missing_reviewerID": json.dumps({k: v for k, v in _review(u, GOOD[0], 3).items() if k != "reviewerID"}).encode(),
        "bad_asin": json.dumps(_review(u, "B 0001", 3)).encode(),
        "bad_overall": json.dumps(_review(u, GOOD[1], 3, rating="5.0")).encode(),
        "bad_overall_bool": json.dumps(_review(u, GOOD[1], 3, rating=True)).encode(),
        "bad_reviewerID_na": json.dumps(_review("NA", GOOD[1], 3)).encode(),
        "bad_unixReviewTime": json.dumps(_review(u, GOOD[2], 3, unixReviewTime="soon", reviewTime="never")).encode(),
    }
    # valid interactions with text quirks (for users that exist): fallbacks, kept and counted
    quirks = {
        "timestamp_from_reviewTime": _review("AQUIRKUSR1", GOOD[0], 0, unixReviewTime=None, reviewTime="01 2, 2014"),
        "lone_surrogate": _review("AQUIRKUSR1", GOOD[1], 1, text="broken emoji \ud83d here"),
        "control_chars": _review("AQUIRKUSR1", GOOD[2], 2, text='tab\there\nnewline\u2028sep\x00nul "quoted"'),
        "missing_reviewText": _review("AQUIRKUSR1", GOOD[3], 3),
        "summary_only": _review("AQUIRKUSR1", GOOD[6], 4, text="", summary="Only a summary"),
    }
    del quirks["missing_reviewText"]["reviewText"]
    quirk_lines = [json.dumps(q).encode() for q in quirks.values()]
    invalid_utf8 = json.dumps(_review("AQUIRKUSR1", GOOD[5], 5, text="bad bytes XX here")).encode().replace(b"XX", b"\xff\xfe")
    all_lines = lines + list(cases.values()) + quirk_lines + [invalid_utf8, b"", b"   "]
    return all_lines, cases


def amazon_meta_lines(base):
    """The metadata file's lines (Python-literal dicts, as in the 2014 files)."""
    def meta(asin, **kw):
        rec = {"asin": asin, "title": f"Item {asin}", "price": 9.99, "imUrl": f"{base}/img/{asin}.jpg",
               "related": {"also_bought": ["B000XXXXXX"]}, "salesRank": {"Sports & Outdoors": 100},
               "brand": "Acme Outdoor Co", "categories": [["Sports & Outdoors", "Camping &amp; Hiking"],
                                                          ["Sports & Outdoors", "Fitness"]]}
        rec.update(kw)
        return {k: v for k, v in rec.items() if v is not ...}

    metas = []
    for k, asin in enumerate(GOOD):
        kw = {}
        if asin == FLAKY:
            kw["imUrl"] = f"{base}/flaky/{asin}.jpg"
        if asin == PNG_ITEM:
            kw["imUrl"] = f"{base}/img/{asin}.png"
        metas.append(meta(asin, **kw))
    special = {
        GOOD[0]: dict(title='Cafe\u0301 Tent "Ultra" &amp; more\tdeluxe', brand="Unknown"),  # NFC, quote, entity, tab, placeholder brand
        GOOD[1]: dict(title="", categories=[["Sports & Outdoors"]]),                           # empty title, text from categories
        GOOD[2]: dict(title=..., categories="not a list"),                                      # missing title, bad categories, brand only
        GOOD[6]: dict(categories=["Sports & Outdoors", "Flat List"]),                          # flat list: one path
        GOOD[7]: dict(categories=..., brand=...),                                              # missing categories and brand
    }
    metas = [dict(m, **special.get(m["asin"], {})) for m in metas]
    metas = [{k: v for k, v in m.items() if v is not ...} for m in metas]
    metas += [
        meta(NO_IMAGE_URL, imUrl=...),
        meta(NO_TEXT, title="N/A", categories=[], brand=...),
        meta(IMG_404, imUrl=f"{base}/img/missing-{IMG_404}.jpg"),
        meta(IMG_BROKEN), meta(IMG_TINY, imUrl=f"{base}/img/{IMG_TINY}.gif"), meta(IMG_TRUNCATED),
        meta(IMG_HTML),
        meta(THIN),
    ]
    lines = [repr(m).encode() for m in metas]
    # a JSON-formatted line (true/null are not Python literals): read through the JSON fallback
    lines[8] = json.dumps(dict(metas[8], extra=None, flag=True)).encode()
    lines += [repr(meta(f"B00NOTREV{k}")).encode() for k in range(30)]  # not reviewed: skipped unparsed
    lines += [
        repr(dict(metas[9], title="A later duplicate")).encode(),  # duplicate_asin: first kept
        b"{'asin': 'B0000000" + b"01', 'title': 'unterminated",  # parse_error (asin of a reviewed item)
        b"this is not a dict at all",                           # parse_error
    ]
    return lines


def amazon_images():
    files = {}
    for k, asin in enumerate(GOOD + [THIN]):
        files[f"{asin}.png" if asin == PNG_ITEM else f"{asin}.jpg"] = image_bytes(
            _color(k), "PNG" if asin == PNG_ITEM else "JPEG")
    files[f"{IMG_BROKEN}.jpg"] = BROKEN
    files[f"{IMG_TINY}.gif"] = TINY_GIF
    files[f"{IMG_TRUNCATED}.jpg"] = TRUNCATED_JPEG
    files[f"{IMG_HTML}.jpg"] = HTML_PAGE
    return files


def write_lines(path, lines, gz):
    data = b"\n".join(lines) + b"\n"
    if gz:
        with gzip.GzipFile(path, "wb", mtime=0) as f:
            f.write(data)
    else:
        with open(path, "wb") as f:
            f.write(data)
    return path


def write_amazon_raw(raw_dir, base, category="Sports_and_Outdoors", order=None):
    """``reviews_<category>_5.json.gz`` and ``meta_<category>.json.gz`` in ``raw_dir``; ``order``
    permutes the review lines (same content, another line order)."""
    os.makedirs(raw_dir, exist_ok=True)
    lines, cases = amazon_review_lines()
    if order is not None:
        lines = [lines[k] for k in order]
    write_lines(os.path.join(raw_dir, f"reviews_{category}_5.json.gz"), lines, gz=True)
    write_lines(os.path.join(raw_dir, f"meta_{category}.json.gz"), amazon_meta_lines(base), gz=True)
    return cases


# --------------------------------------------------------------------------- Yelp

def ybiz(k):
    return f"-biz{k:018d}"  # 22 characters, may start with '-' like real Yelp ids


def yuser(k):
    return f"usr_{k:018d}"


Y_GOOD = [ybiz(k) for k in range(8)]
Y_FALLBACK = Y_GOOD[1]       # first-choice photo missing on disk: the next candidate is used
Y_NO_CATEGORIES = Y_GOOD[2]  # categories null: text from the name
Y_CORRUPT = ybiz(90)         # its only photo is corrupt -> removed
Y_NO_PHOTO = ybiz(91)        # no photo at all -> removed
Y_NO_TEXT = ybiz(92)         # no name, categories null -> removed
Y_PROBLEM = [Y_CORRUPT, Y_NO_PHOTO, Y_NO_TEXT]


def write_yelp_raw(raw_dir):
    os.makedirs(os.path.join(raw_dir, "photos"), exist_ok=True)
    reviews = []
    for c in range(24):
        items = [Y_GOOD[(c + 3 * k) % 8] for k in range(6)] + [Y_PROBLEM[c % 3]]
        for k, b in enumerate(items):
            reviews.append({"review_id": f"r{c}_{k}", "user_id": yuser(c), "business_id": b,
                            "stars": 1 + (c + k) % 5, "useful": 0, "funny": 0, "cool": 0,
                            "text": f"Visit {k} to {b}.\nGreat place \u00e9\u00e8.",
                            "date": f"2019-0{1 + k % 9}-{10 + c % 18:02d} {k % 24:02d}:30:00"})
    reviews[0]["date"] = "2019-01-10"  # date only: midnight
    reviews.append(dict(reviews[1], review_id="dup", date="2020-01-01 00:00:00", stars=1))  # repeated pair
    bad = [dict(reviews[2], date="2019-13-01 00:00:00"), dict(reviews[2], date="2019-02-30 10:00:00"),
           dict(reviews[2], stars=None), {k: v for k, v in reviews[2].items() if k != "business_id"}]
    lines = [json.dumps(r).encode() for r in reviews + bad] + [b"{broken json"]
    write_lines(os.path.join(raw_dir, "yelp_academic_dataset_review.json"), lines, gz=False)

    businesses = []
    for b in Y_GOOD + Y_PROBLEM + [ybiz(99)]:
        businesses.append({"business_id": b, "name": f"Place {b[-2:]}", "address": "1 Main St",
                           "city": "Springfield", "state": "PA", "postal_code": "19000", "latitude": 40.0,
                           "longitude": -75.0, "stars": 4.0, "review_count": 10, "is_open": 1,
                           "attributes": {"WiFi": "u'free'"}, "categories": "Restaurants, Pizza, Ice Cream & Frozen Yogurt",
                           "hours": None})
    businesses[2]["categories"] = None
    businesses[Y_GOOD.index(Y_GOOD[3])]["name"] = "Jo\u2019s \"Diner\""
    no_text = next(x for x in businesses if x["business_id"] == Y_NO_TEXT)
    no_text.update(name=None, categories=None)
    lines = [json.dumps(x).encode() for x in businesses]
    write_lines(os.path.join(raw_dir, "yelp_academic_dataset_business.json"), lines, gz=False)

    photos, files = [], {}
    for k, b in enumerate(Y_GOOD):
        # per business: a menu photo, a food photo, an inside photo -> the food one is picked
        for label, suffix in (("menu", "m"), ("food", "f"), ("inside", "i")):
            pid = f"p{k}{suffix}" + "x" * 19
            photos.append({"photo_id": pid, "business_id": b, "caption": "", "label": label})
            files[pid] = image_bytes(_color(10 * k + len(suffix) + ord(suffix)), "JPEG")
    fallback_food = f"p{Y_GOOD.index(Y_FALLBACK)}f" + "x" * 19
    del files[fallback_food]  # listed in photos.json, missing on disk
    photos.append({"photo_id": "pcorrupt" + "x" * 14, "business_id": Y_CORRUPT, "caption": "", "label": "food"})
    files["pcorrupt" + "x" * 14] = TRUNCATED_JPEG
    photos.append({"photo_id": "../escape", "business_id": Y_GOOD[0], "label": "food"})  # bad_photo_id
    for pid, data in files.items():
        with open(os.path.join(raw_dir, "photos", f"{pid}.jpg"), "wb") as f:
            f.write(data)
    write_lines(os.path.join(raw_dir, "photos.json"), [json.dumps(p).encode() for p in photos], gz=False)
    return {"fallback_food": fallback_food}
