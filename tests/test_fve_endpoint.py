"""The critic through an OpenAI-compatible endpoint, against a real HTTP server on 127.0.0.1 started here
(tests/openai_server.py): what is sent (instruction before the image, temperature 0, the image resized
to the pixel budget, guided JSON), retries on a slow reply / HTTP 500 / a dropped connection, failures
that keep the answers received, the key from an environment variable, and every fault of issue 24 (a
reply that is not text, a trickled reply, a refused key, an unknown model or route, TLS to a plain server,
a foreign model list, URLs that cannot work): a one-line error or a logged, rejected answer."""

import os

import pytest

from openai_server import ScriptedServer, image_of
from recbole_reveal.fve.critic.critic import CriticRequest, acceptance, run_critic
from recbole_reveal.fve.critic.generation.endpoint import EndpointGenerator, GenerationError
from recbole_reveal.fve.critic.generation.openai_http import EndpointError
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
    kw = dict(dict(concurrency=4, timeout=1.0, retries=2, max_new_tokens=64,
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
        with pytest.raises(EndpointError, match="HTTP 401"):
            EndpointGenerator.from_settings(settings)
        monkeypatch.setenv("FVE_KEY", "sekret")
        records, _ = run_critic(EndpointGenerator.from_settings(settings), requests(1), load_templates())
        assert records[0].fallback is None


SETTINGS = {"fve_generation_backend": "endpoint", "fve_generation_endpoint": "http://127.0.0.1:8000/v1",
            "fve_generation_model": None, "fve_generation_api_key_env": None, "fve_generation_concurrency": 4,
            "fve_generation_timeout": 30, "fve_generation_retries": 2, "fve_generation_guided_json": False}


def test_generation_settings_are_checked():
    base = SETTINGS
    assert generation_settings(base)["fve_generation_backend"] == "endpoint"
    for key, value, match in (("fve_generation_endpoint", None, "base URL"), ("fve_generation_backend", "vllm", "one of"),
                              ("fve_generation_concurrency", 0, "concurrency"), ("fve_generation_timeout", -1, "timeout")):
        with pytest.raises(ConfigError, match=match):
            generation_settings(dict(base, **{key: value}))
    with pytest.raises(ConfigError, match="guided_json needs fve_generation_backend: endpoint"):
        generation_settings(dict(base, fve_generation_backend="transformers", fve_generation_guided_json=True))


# ---- faults a serving engine produces (issue 24): each a one-line error, or a logged answer ------------------
def title_of(text):
    import re

    return re.search(r'The image shows the item "([^"]*)"', text).group(1)


def test_content_that_is_not_text_is_a_rejected_answer_and_never_crashes_a_rerun(tmp_path):
    contents = {"Thing 0": [{"type": "text", "text": "ANALYSIS: dull.\n"}, {"type": "text", "text": "NEW_PROMPT: A red tent."}],
                "Thing 1": 5, "Thing 2": {"text": "ANALYSIS: x"}, "Thing 3": [{"type": "image_url"}]}
    with ScriptedServer(lambda text: (contents[title_of(text)], "stop")) as server:
        records, counts = run_critic(generator(server), requests(), load_templates(), answers_dir=str(tmp_path))
    assert records[0].fallback is None and records[0].new_prompt == "A red tent."     # content parts: their texts
    assert records[1].fallback.startswith("unusable answer (message.content is int 5, not text")
    assert records[2].fallback.startswith("unusable answer (message.content is dict")
    assert records[3].fallback.startswith("unusable answer (message.content is list")
    assert counts["fallback: unusable answer"] == 3 and acceptance(counts)["answered"] == 4
    # the rerun against a healthy server: the logged answers are read back, nothing is asked again, no crash
    with ScriptedServer(answer_by_title) as healthy:
        again, _ = run_critic(generator(healthy), requests(), load_templates(), answers_dir=str(tmp_path))
        assert healthy.requests == [] and again == records


def test_a_logged_answer_that_is_not_text_is_rejected_when_read_back(tmp_path):
    """An answer log written before answers were checked (its ``text`` a number) is read as rejected."""
    import json

    with ScriptedServer(answer_by_title) as server:
        run_critic(generator(server), requests(2), load_templates(), answers_dir=str(tmp_path))
        log = tmp_path / "answers.jsonl"
        rows = [json.loads(line) for line in log.read_text().splitlines()]
        log.write_text("".join(json.dumps(dict(row, text=[5])) + "\n" for row in rows))
        records, counts = run_critic(generator(server), requests(2), load_templates(), answers_dir=str(tmp_path))
        assert len(server.requests) == 2
    assert counts["fallback: unusable answer"] == 2
    assert all(r.fallback.startswith("unusable answer (the logged text is list") for r in records)


def test_the_timeout_bounds_a_whole_request_not_each_read():
    """A reply trickled one byte every 0.2 s (about a minute in all) against a 1 s timeout: the request
    fails as timed out instead of waiting for the last byte."""
    with ScriptedServer(answer_by_title, faults={0: "trickle"}, slow_s=0.2) as server:
        with pytest.raises(GenerationError, match=r"1 of 1 requests .* failed.*no complete reply within 1 s"):
            run_critic(generator(server, retries=0), requests(1), load_templates())


def test_a_refused_key_or_an_unknown_model_stops_before_any_request():
    with ScriptedServer(answer_by_title, api_key="sekret") as server:
        with pytest.raises(EndpointError, match=r"GET /models at .* was refused \(HTTP 401: bad key\)"):
            generator(server, api_key="wrong", retries=3)
    with ScriptedServer(answer_by_title) as server:
        with pytest.raises(ConfigError, match=r"fve_generation_model is 'no-such-model', but the server at .* "
                                              r"serves \['qwen-test'\]"):
            generator(server, model="no-such-model", retries=3)
        with pytest.raises(EndpointError, match=r"GET /models at http://127.0.0.1:\d+ does not exist \(HTTP 404"):
            EndpointGenerator(server.url[:-len("/v1")], retries=3)          # the base URL without /v1
        assert server.posts == 0


def test_a_404_during_the_critic_stops_it_at_once_keeping_the_answers(tmp_path):
    """The model goes away after the pre-flight: the first 404 stops the critic; requests not sent yet
    never are, and a rerun (the model back) asks only for the rest."""
    with ScriptedServer(answer_by_title) as server:
        gen = generator(server, concurrency=1, retries=3)
        run_critic(gen, requests(1), load_templates(), answers_dir=str(tmp_path))
        server.model = "renamed"
        with pytest.raises(EndpointError, match=r"POST /chat/completions at .* does not exist \(HTTP 404: The model "
                                                r"`qwen-test` does not exist.*1 answers received are kept"):
            run_critic(gen, requests(4), load_templates(), answers_dir=str(tmp_path))
        assert server.posts == 2                  # one answer, then one refused request, then nothing
        server.model = "qwen-test"
        records, _ = run_critic(gen, requests(4), load_templates(), answers_dir=str(tmp_path))
        assert server.posts == 2 + 3 and all(r.raw_answer for r in records)


def test_tls_to_a_plain_server_and_a_foreign_model_list_are_one_line_errors():
    with ScriptedServer(answer_by_title) as server:
        with pytest.raises(EndpointError, match=r"TLS handshake failed .*reached with http://, not https://"):
            EndpointGenerator(server.url.replace("http://", "https://"), retries=3)
    with ScriptedServer(answer_by_title, models_reply=["qwen-test"]) as server:
        with pytest.raises(EndpointError, match=r"GET /models at .* replied \[\"qwen-test\"\], not an OpenAI model list"):
            generator(server)


def test_progress_counts_answers_not_failed_requests(monkeypatch, caplog):
    import logging

    from recbole_reveal.fve.critic.generation import endpoint

    monkeypatch.setattr(endpoint, "PROGRESS_EVERY_S", 0.0)
    with ScriptedServer(answer_by_title, faults={0: "500", 1: "500"}) as server:
        with caplog.at_level(logging.INFO, logger="recbole_reveal.fve"), pytest.raises(GenerationError, match="2 of 4"):
            run_critic(generator(server, retries=0, concurrency=1), requests(), load_templates())
    lines = [r.getMessage() for r in caplog.records if " answered (" in r.getMessage()]
    assert len(lines) == 4 and lines[-1].startswith("FVE critic: 2/4 answered (2 failed)")


@pytest.mark.parametrize("url, match", [
    ("http://[::1/v1", r"is not a valid URL \(Invalid IPv6 URL\)"), ("http://:8000/v1", "names no host"),
    ("http://127.0.0.1:abc/v1", "is not a valid URL .*Port"), ("ftp://127.0.0.1/v1", "http:// or https://"),
    (None, "base URL"), ("http://127.0.0.1:8000/v1?x=1", "query"),
])
def test_endpoint_urls_that_cannot_work_are_config_errors(url, match):
    with pytest.raises(ConfigError, match=match):
        generation_settings(dict(SETTINGS, fve_generation_endpoint=url))


def test_an_unset_key_variable_is_a_config_error_when_the_settings_are_read(monkeypatch):
    monkeypatch.delenv("FVE_KEY", raising=False)
    with pytest.raises(ConfigError, match="fve_generation_api_key_env names the environment variable FVE_KEY"):
        generation_settings(dict(SETTINGS, fve_generation_api_key_env="FVE_KEY"))
    monkeypatch.setenv("FVE_KEY", "sekret")
    assert generation_settings(dict(SETTINGS, fve_generation_api_key_env="FVE_KEY"))
