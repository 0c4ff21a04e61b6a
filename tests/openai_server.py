"""A small OpenAI-compatible chat server for the tests: real HTTP on 127.0.0.1 (a thread of this process),
scripted answers per item, and scripted faults (a slow reply, HTTP 500, a dropped connection)."""

import base64
import io
import json
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

TITLE = re.compile(r'The image shows the item "([^"]*)"')


class ScriptedServer:
    """``answer(text) -> (content, finish_reason)`` scripts the replies; ``faults`` maps the n-th distinct
    item seen (0-based) to the fault its first request meets: ``"slow"`` (replies after ``slow_s``),
    ``"500"``, ``"drop"`` (closes the connection without a reply) or ``"trickle"`` (the reply's headers,
    then its body one byte every ``slow_s`` seconds). ``hold_after``: the first that many
    chat requests are answered, every later one waits until :meth:`release` (to kill a client in the middle
    of its critic). Which requests pass is decided on arrival, under the lock, so concurrent requests
    cannot slip past the count; a held request never times out on this side (a hold that ended by itself
    would answer the client and let its critic finish). ``held`` counts the requests waiting now."""

    def __init__(self, answer, faults=None, slow_s=2.0, model="qwen-test", api_key=None, hold_after=None,
                 models_reply=None):
        self.answer, self.faults, self.slow_s, self.model, self.api_key = answer, faults or {}, slow_s, model, api_key
        self.models_reply = models_reply        # GET /models replies this instead of the model list
        self.requests = []          # (title, body) of every chat request for the served model, in arrival order
        self.posts = 0              # every POST, refused ones included
        self.answered = 0
        self.hold_after = hold_after
        self.holding = threading.Event()      # set when a request waits on the hold
        self.held = 0
        self._passed = 0
        self._release = threading.Event()
        self._lock = threading.Lock()
        self._seen = []
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def url(self):
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self._release.set()
        self.httpd.shutdown()
        self.httpd.server_close()

    def release(self):
        self.hold_after = None
        self._release.set()

    def attempts(self, title):
        return sum(1 for t, _ in self.requests if t == title)

    def _handler(self):
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _reply(self, code, obj, trickle=False):
                data = json.dumps(obj).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if not trickle:
                    self.wfile.write(data)
                    return
                for k in range(len(data)):
                    self.wfile.write(data[k:k + 1])
                    self.wfile.flush()
                    time.sleep(server.slow_s)

            def _authorised(self):
                if server.api_key and self.headers.get("Authorization") != f"Bearer {server.api_key}":
                    self._reply(401, {"error": {"message": "bad key"}})
                    return False
                return True

            def do_GET(self):
                if not self._authorised():
                    return
                if self.path == "/v1/models":
                    self._reply(200, server.models_reply if server.models_reply is not None else
                                {"object": "list", "data": [{"id": server.model, "object": "model"}]})
                else:
                    self._reply(404, {"error": {"message": f"no route {self.path}"}})

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with server._lock:
                    server.posts += 1
                if not self._authorised():
                    return
                if self.path != "/v1/chat/completions":
                    self._reply(404, {"error": {"message": f"no route {self.path}"}})
                    return
                if body.get("model") != server.model:
                    self._reply(404, {"error": {"message": f"The model `{body.get('model')}` does not exist."}})
                    return
                text = body["messages"][0]["content"][0]["text"]
                match = TITLE.search(text)
                title = match.group(1) if match else text[:40]
                with server._lock:
                    server.requests.append((title, body))
                    first = title not in server._seen
                    if first:
                        server._seen.append(title)
                    fault = server.faults.get(server._seen.index(title)) if first else None
                    hold = server.hold_after is not None and server._passed >= server.hold_after
                    server._passed += 1
                    server.held += hold
                if hold:
                    server.holding.set()
                    server._release.wait()
                    with server._lock:
                        server.held -= 1
                if fault == "500":
                    self._reply(500, {"error": {"message": "scripted server error"}})
                    return
                if fault == "drop":
                    self.close_connection = True
                    self.connection.close()
                    return
                if fault == "slow":
                    time.sleep(server.slow_s)
                content, finish = server.answer(text)
                try:
                    self._reply(200, {"id": "x", "object": "chat.completion", "model": server.model,
                                      "choices": [{"index": 0, "finish_reason": finish,
                                                   "message": {"role": "assistant", "content": content}}]},
                                trickle=fault == "trickle")
                except OSError:        # the client went away (a killed run, a timed-out request)
                    return
                with server._lock:
                    server.answered += 1

        return Handler


def image_of(body):
    """The PIL image a chat request carries as a base64 data URL."""
    from PIL import Image

    url = body["messages"][0]["content"][1]["image_url"]["url"]
    assert url.startswith("data:image/png;base64,")
    return Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1])))
