"""The critic through an OpenAI-compatible endpoint, against a real HTTP server on 127.0.0.1 started here
(tests/openai_server.py): what is sent (instruction before the image, temperature 0, the image resized
to the pixel budget, guided JSON), retries on a slow reply / HTTP 500 / a dropped connection, failures
that keep the answers received, and the key from an environment variable."""

import os

import pytest

from openai_server import ScriptedServer, image_of
from recbole_reveal.fve.critic.critic import CriticRequest, run_critic
from recbole_reveal.fve.critic.generation.endpoint import EndpointGenerator, GenerationError
from recbole_reveal.fve.critic.generation.factory import generation_settings
from recbole_reveal.fve.prompts.templates import load_templates
from recbole_reveal.infra.errors import ConfigError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
IMAGES = [os.path.join(ROOT, "dataset_atomic", "synthetic-demo", "images", f"i000{k}.png") for k in range(4)]


def answer_by_title(text):
    """Well-formed (with markdown) for items whose title ends in an even digit, malformed otherwise."""
    import re

    title = re.search(r'The image shows the item "([^"]*)"', text).group(1)
    if int(title[-1]) % 2 == 0:
        return f"**ANALYSIS:** The prompt misses the colour.\n**NEW_PROMPT:** A photo of {title}, its colour.", "stop"
    return "I think this prompt is fine.", "stop"


def requests(n=4):
    return [CriticRequest(f"i{k}", IMAGES[k % 4], f"An item image of thing {k}.", "pos", "fb", title=f"Thing {k}")
            for k in range(n)]


def generator(server, **kw):
    kw = dict(dict(concurrency=4, timeout=1.0, retries=2, max_new_tokens=64, backoff=0.05,
                   min_pixels=56 * 56, max_pixels=112 * 112), **kw)
    return EndpointGenerator(server.url, **kw)


def test_requests_carry_text_then_image_at_temperature_zero():
    with ScriptedServer(answer_by_title) as server:
        gen = generator(server)
        assert gen.model == "qwen-test"                     # the one model GET /models lists
        records, counts = run_critic(gen, requests(), load_templates())
    assert [r.item_id for r in records] == ["i0", "i1", "i2", "i3"]
    assert [r.fallback is None for r in records] == [True, False, True, False]
    assert records[2].new_prompt == "A photo of Thing 2, its colour." and records[2].notes == ["markdown"]
    assert records[1].fallback == "missing NEW_PROMPT"
    assert counts["accepted"] == 2 and counts["note: markdown"] == 2
    body = server.requests[0][1]
    content = body["messages"][0]["content"]
    assert [part["type"] for part in content] == ["text", "image_url"]      # instruction first: a shared prefix
    assert body["temperature"] == 0 and body["max_tokens"] == 64 and body["seed"] == 0
    assert "response_format" not in body
    image = image_of(body)          # resized here as the Qwen processor resizes: sides multiples of 28, in budget
    assert image.width % 28 == 0 and image.height % 28 == 0 and 56 * 56 <= image.width * image.height <= 112 * 112


def test_slow_500_and_dropped_connection_are_retried():
    with ScriptedServer(answer_by_title, faults={0: "slow", 1: "500", 2: "drop"}, slow_s=2.0) as server:
        records, counts = run_critic(generator(server), requests(), load_templates())
        attempts = {title: server.attempts(title) for title in ("Thing 0", "Thing 1", "Thing 2", "Thing 3")}
    assert sorted(attempts.values()) == [1, 2, 2, 2]       # three items met a fault once, then got their answer
    assert counts["accepted"] == 2 and counts["fallback"] == 2


def test_failed_requests_stop_the_critic_but_keep_the_answers(tmp_path):
    always_500 = ScriptedServer(answer_by_title, faults={k: "500" for k in range(4)})
    with always_500 as server:
        # every first request fails; with no retry the stage fails, naming the items
        with pytest.raises(GenerationError, match=r"4 of 4 requests .* failed.*HTTP 500"):
            run_critic(generator(server, retries=0), requests(), load_templates(), answers_dir=str(tmp_path))
        # the server recovers: a rerun asks again, and only for what is missing
        records, _ = run_critic(generator(server, retries=0), requests(), load_templates(), answers_dir=str(tmp_path))
        assert len(server.requests) == 8 and all(r.raw_answer for r in records)
        again, _ = run_critic(generator(server, retries=0), requests(), load_templates(), answers_dir=str(tmp_path))
        assert len(server.requests) == 8 and again == records


def test_a_wrong_model_name_fails_at_once_with_the_servers_message():
    with ScriptedServer(answer_by_title) as server:
        with pytest.raises(GenerationError, match="does not exist"):
            run_critic(generator(server, model="no-such-model", retries=3), requests(1), load_templates())
        assert len(server.requests) == 0


def test_guided_json_asks_for_the_schema_and_its_answer_parses():
    def json_answer(text):
        return '{"analysis": "misses the colour", "new_prompt": "A red tent."}', "stop"

    with ScriptedServer(json_answer) as server:
        records, _ = run_critic(generator(server, guided_json=True), requests(1), load_templates())
        body = server.requests[0][1]
    assert body["response_format"]["type"] == "json_schema"
    assert body["response_format"]["json_schema"]["schema"]["required"] == ["analysis", "new_prompt"]
    assert '"new_prompt"' in body["messages"][0]["content"][0]["text"]
    assert records[0].new_prompt == "A red tent." and records[0].notes == ["json"]


def test_cut_answers_are_rejected_as_truncated():
    def cut(text):
        return "ANALYSIS: The prompt misses\nNEW_PROMPT: A red tent with a", "length"

    with ScriptedServer(cut) as server:
        records, counts = run_critic(generator(server), requests(1), load_templates())
    assert counts["fallback: truncated"] == 1
    assert "max_new_tokens (64) before the NEW_PROMPT line ended" in records[0].fallback


def test_api_key_from_the_named_environment_variable(monkeypatch):
    settings = {"fve_generation_endpoint": None, "fve_generation_model": None, "fve_generation_api_key_env": "FVE_KEY",
                "fve_generation_concurrency": 2, "fve_generation_timeout": 5, "fve_generation_retries": 0,
                "fve_rewrite_max_new_tokens": 16, "fve_rewrite_seed": 0, "fve_min_pixels": 3136,
                "fve_max_pixels": 12544, "vlm_path": None, "fve_generation_guided_json": False,
                "fve_generation_backend": "endpoint"}
    with ScriptedServer(answer_by_title, api_key="sekret") as server:
        settings["fve_generation_endpoint"] = server.url
        monkeypatch.delenv("FVE_KEY", raising=False)
        with pytest.raises(ConfigError, match="FVE_KEY"):
            EndpointGenerator.from_settings(settings)
        monkeypatch.setenv("FVE_KEY", "wrong")
        with pytest.raises(GenerationError, match="HTTP 401"):
            EndpointGenerator.from_settings(settings)
        monkeypatch.setenv("FVE_KEY", "sekret")
        records, _ = run_critic(EndpointGenerator.from_settings(settings), requests(1), load_templates())
        assert records[0].fallback is None


def test_generation_settings_are_checked():
    base = {"fve_generation_backend": "endpoint", "fve_generation_endpoint": "http://127.0.0.1:8000/v1",
            "fve_generation_model": None, "fve_generation_api_key_env": None, "fve_generation_concurrency": 4,
            "fve_generation_timeout": 30, "fve_generation_retries": 2, "fve_generation_guided_json": False}
    assert generation_settings(base)["fve_generation_backend"] == "endpoint"
    for key, value, match in (("fve_generation_endpoint", None, "base URL"), ("fve_generation_backend", "vllm", "one of"),
                              ("fve_generation_concurrency", 0, "concurrency"), ("fve_generation_timeout", -1, "timeout")):
        with pytest.raises(ConfigError, match=match):
            generation_settings(dict(base, **{key: value}))
    with pytest.raises(ConfigError, match="guided_json needs fve_generation_backend: endpoint"):
        generation_settings(dict(base, fve_generation_backend="transformers", fve_generation_guided_json=True))
