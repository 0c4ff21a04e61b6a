"""FVE critic throughput (items/s): the transformers backend at several batch sizes vs the endpoint backend.

::

    python benchmarks/fve_critic_throughput.py [--threads 1]               # tiny random Qwen2.5-VL, CPU
    python benchmarks/fve_critic_throughput.py --vlm_path /models/Qwen2.5-VL-7B-Instruct --device cuda \\
        --endpoint http://127.0.0.1:8000/v1 --batch_sizes 1 16 32 --items 256    # vs a running vLLM / SGLang

Items are the synthetic demo's images with real critic instructions (``rewrite_instruction`` filled for
each item). Every variant answers the same items through :func:`~recbole_reveal.fve.critic.critic.run_critic`:

* ``transformers batch B``: the run's VLM, greedy ``generate`` in batches of B (images decoded per batch);
* ``endpoint``: the OpenAI-compatible client (``--concurrency`` requests in flight). Without
  ``--endpoint`` the server is a local HTTP server in this process that answers each request with the
  same VLM one at a time (HTTP, base64 images and the client's retries included: the client's overhead,
  not a serving engine's speed); with ``--endpoint`` it is your server.

The table gives items/s, the ratio to batch 1, and how many answers equal batch 1's (greedy decoding:
equal unless padding or the engine's numerics change a token).
"""

import argparse
import base64
import io
import json
import os
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from recbole_reveal.fve.critic.critic import CriticRequest, run_critic  # noqa: E402
from recbole_reveal.fve.critic.generation.endpoint import EndpointGenerator  # noqa: E402
from recbole_reveal.fve.critic.generation.transformers_backend import TransformersGenerator  # noqa: E402
from recbole_reveal.fve.prompts.records import read_items  # noqa: E402
from recbole_reveal.fve.prompts.templates import build_initial_prompts, load_templates  # noqa: E402
from recbole_reveal.fve.vlm.load import load_vlm  # noqa: E402
from recbole_reveal.testing.vlms import build_tiny_qwen2_5_vl  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEMO = os.path.join(ROOT, "dataset_atomic", "synthetic-demo")


def critic_requests(n):
    items = read_items(os.path.join(DEMO, "synthetic-demo.item"))
    prompts = {r["item_id"]: r for r in build_initial_prompts("synthetic-demo", os.path.dirname(DEMO))}
    out = []
    for k in range(n):
        it = items[k % len(items)]
        out.append(CriticRequest(f"{it.item_id}-{k}", os.path.join(DEMO, it.image), prompts[it.item_id]["prompt"],
                                 "pos" if k % 2 else "neg",
                                 "This item appeared in the top 20 of 7 evaluation users who did not choose it.",
                                 title=it.title, category=it.categories[-1] if it.categories else "", brand=it.brand))
    return out


class LocalServer:
    """``/v1/models`` and ``/v1/chat/completions`` answered by ``generator`` (one request at a time)."""

    def __init__(self, generator, model="local-tiny"):
        from PIL import Image

        lock = threading.Lock()

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _reply(self, obj):
                data = json.dumps(obj).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self):
                self._reply({"data": [{"id": model}]})

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                text, image = body["messages"][0]["content"]
                png = base64.b64decode(image["image_url"]["url"].split(",", 1)[1])
                with lock:
                    (answer, finished), = generator.generate_texts([Image.open(io.BytesIO(png)).convert("RGB")],
                                                                  [text["text"]])
                self._reply({"choices": [{"index": 0, "finish_reason": "stop" if finished else "length",
                                          "message": {"role": "assistant", "content": answer}}]})

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


def timed(label, fn, n):
    start = time.perf_counter()
    records, _ = fn()
    seconds = time.perf_counter() - start
    print(f"{label:<24} {n:>6} items {seconds:8.2f} s {n / seconds:9.2f} items/s", flush=True)
    return records, n / seconds


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--vlm_path", help="a local checkpoint (default: the tiny random test model)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--items", type=int, default=32)
    p.add_argument("--max_new_tokens", type=int, default=32)
    p.add_argument("--max_pixels", type=int, default=224 * 224)
    p.add_argument("--batch_sizes", type=int, nargs="+", default=[1, 4, 16])
    p.add_argument("--endpoint", help="an OpenAI-compatible base URL (default: a local server on this VLM)")
    p.add_argument("--model", help="the endpoint's model name (default: the one it serves)")
    p.add_argument("--concurrency", type=int, default=4)
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    a = p.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    templates = load_templates()
    requests = critic_requests(a.items)
    with tempfile.TemporaryDirectory() as tmp:
        folder = a.vlm_path or build_tiny_qwen2_5_vl(os.path.join(tmp, "tiny"))
        vlm = load_vlm(folder, device=a.device)
        print(f"model: {a.vlm_path or 'tiny random Qwen2.5-VL'} on {vlm.device} ({vlm.dtype}); {a.items} items, "
              f"max {a.max_new_tokens} new tokens, images <= {a.max_pixels} px; {torch.get_num_threads()} torch threads")
        warm = critic_requests(2)
        results = {}
        for b in a.batch_sizes:
            gen = TransformersGenerator(vlm, a.max_new_tokens, b, seed=0, max_pixels=a.max_pixels)
            run_critic(gen, warm, templates)
            results[f"transformers batch {b}"] = timed(f"transformers batch {b}",
                                                       lambda: run_critic(gen, requests, templates), a.items)
        server = None if a.endpoint else LocalServer(TransformersGenerator(vlm, a.max_new_tokens, 1, seed=0,
                                                                           max_pixels=a.max_pixels))
        try:
            client = EndpointGenerator(a.endpoint or server.url, a.model, concurrency=a.concurrency,
                                       max_new_tokens=a.max_new_tokens, max_pixels=a.max_pixels)
            label = f"endpoint x{a.concurrency}" + ("" if a.endpoint else " (local)")
            results[label] = timed(label, lambda: run_critic(client, requests, templates), a.items)
        finally:
            if server is not None:
                server.close()
    base_name = next(iter(results))
    base, base_rate = results[base_name]
    print(f"\n{'variant':<24} {'items/s':>9} {'vs ' + base_name:>28} {'answers equal':>14}")
    for name, (records, rate) in results.items():
        same = sum(r.raw_answer == s.raw_answer for r, s in zip(records, base))
        print(f"{name:<24} {rate:>9.2f} {rate / base_rate:>27.2f}x {same:>8}/{len(base)}")


if __name__ == "__main__":
    main()
