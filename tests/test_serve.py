"""chefgenius serve: the recipe API, OpenAI-compatible completions, bad requests, the queue, and a real browser."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

pytest.importorskip("fastapi", reason="chefgenius serve needs the 'serve' extra (fastapi, uvicorn)")
from fastapi.testclient import TestClient  # noqa: E402

from chefgenius.generation.decode import GenerationSettings, generate_texts, recipe_record  # noqa: E402  
from chefgenius.serving.app import MAX_INGREDIENTS, Server, Sources, create_app, generation_threads  # noqa: E402

from .conftest import quiet, tiny_config  # noqa: E402

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    from chefgenius.training.trainer import Trainer

    root = tmp_path_factory.mktemp("serve")
    cfg = tiny_config(training={"max_steps": 8, "grad_accum": 1}, checkpoint={"every_steps": 4, "keep_last": 5})
    Trainer(cfg, root / "run", log=quiet).fit()
    return root / "run"


@pytest.fixture(scope="module")
def server(run) -> Server:
    return Server(Sources(run / "final", run), max_queue=2, timeout_s=30)


@pytest.fixture(scope="module")
def client(server) -> TestClient:
    return TestClient(create_app(server))


def _events(response) -> list:
    out = []
    for block in response.text.split("\n\n"):
        if block.startswith("data: "):
            data = block[len("data: "):]
            out.append(data if data == "[DONE]" else json.loads(data))
    return out


def test_health_and_models(client):
    assert client.get("/healthz").json()["status"] == "ok"
    ids = [m["id"] for m in client.get("/v1/models").json()["data"]]
    assert ids == ["final", "step-0000008", "step-0000005", "step-0000004"]  # 5: a new best validation loss


def test_the_recipe_api_answers_what_generate_would(client, server):
    body = {"ingredients": ["egg", "milk", "flour"], "max_new_tokens": 60, "seed": 3}
    got = client.post("/v1/recipes", json=body)
    assert got.status_code == 200, got.text
    record = got.json()
    _, g = server.generator("final")
    text = generate_texts(g.model, g.tokenizer, g.is_seq2seq, body["ingredients"],
                          GenerationSettings(max_new_tokens=60, seed=3), max_prompt_tokens=g.max_prompt_tokens).texts[0]
    assert record == {"model": "final", "text": text, **recipe_record(body["ingredients"], text)}
    older = client.post("/v1/recipes", json={**body, "model": "step-0000004"}).json()
    assert older["model"] == "step-0000004" and set(older) == set(record)


def test_the_recipe_streams_and_ends_with_the_parsed_recipe(client):
    body = {"ingredients": ["egg", "milk"], "max_new_tokens": 50, "stream": True}
    events = _events(client.post("/v1/recipes", json=body))
    assert events[-1] == "[DONE]" and "recipe" in events[-2]
    streamed = "".join(e["text"] for e in events[:-2])
    assert len(events) > 4 and streamed.strip() == events[-2]["recipe"]["text"].strip()
    whole = client.post("/v1/recipes", json={**body, "stream": False}).json()
    assert whole["text"] == events[-2]["recipe"]["text"]


def test_openai_completions_and_their_stream(client):
    prompt = "Generate a recipe with: egg, milk\nTitle:"
    done = client.post("/v1/completions", json={"model": "final", "prompt": prompt, "max_tokens": 20}).json()
    assert done["object"] == "text_completion" and done["choices"][0]["finish_reason"] in ("stop", "length")
    assert done["usage"]["completion_tokens"] <= 20 and done["usage"]["prompt_tokens"] > 0
    events = _events(client.post("/v1/completions", json={"prompt": prompt, "max_tokens": 20, "stream": True}))
    assert events[-1] == "[DONE]"
    assert "".join(e["choices"][0]["text"] for e in events[:-1]) == done["choices"][0]["text"]
    assert events[-2]["choices"][0]["finish_reason"] == done["choices"][0]["finish_reason"]


def test_the_openai_client_works_unchanged(client):
    openai = pytest.importorskip("openai", reason="the openai client is not installed")
    api = openai.OpenAI(base_url="http://testserver/v1", api_key="unused", http_client=client)
    assert [m.id for m in api.models.list()][0] == "final"
    prompt = "Generate a recipe with: egg, milk\nTitle:"
    done = api.completions.create(model="final", prompt=prompt, max_tokens=12, temperature=0)
    streamed = "".join(c.choices[0].text for c in api.completions.create(model="final", prompt=prompt,
                                                                          max_tokens=12, temperature=0, stream=True))
    assert done.choices[0].text == streamed and done.usage.completion_tokens <= 12
    with pytest.raises(openai.BadRequestError, match="shorten it"):
        api.completions.create(model="final", prompt="egg " * 300, max_tokens=5)


@pytest.mark.parametrize(("body", "status", "words"), [
    ({"ingredients": []}, 400, "ingredients is empty"),
    ({"ingredients": ["egg"] * (MAX_INGREDIENTS + 1)}, 400, f"at most {MAX_INGREDIENTS}"),
    ({"ingredients": "chicken, rice"}, 400, "must be a list of strings"),
    ({"ingredients": ["egg"], "preset": "spicy"}, 400, "unknown preset 'spicy'"),
    ({"ingredients": ["egg"], "max_new_tokens": 100_000}, 400, "beyond the model's"),
    ({"ingredients": ["egg", " "]}, 400, "non-empty"),
    ({"ingredients": ["egg"], "model": "step-9"}, 404, "no model 'step-9'"),
    ({"ingredients": ["egg"], "temperature": 1}, 400, "'temperature' is not supported by this server"),
    ({"ingredients": [f"ingredient number {i}" for i in range(25)]}, 400, "prompt tokens the model was trained on"),
])
def test_bad_recipe_requests_get_a_4xx_and_one_sentence(client, body, status, words):
    got = client.post("/v1/recipes", json=body)
    message = got.json()["error"]["message"]
    assert got.status_code == status and words in message and "\n" not in message, got.text
    assert client.get("/healthz").status_code == 200


def test_malformed_json_and_overlong_prompts_are_refused(client):
    got = client.post("/v1/recipes", content=b'{"ingredients": [', headers={"Content-Type": "application/json"})
    assert got.status_code == 400 and "not valid JSON" in got.json()["error"]["message"]
    got = client.post("/v1/completions", json={"prompt": "egg " * 300, "max_tokens": 5})
    assert got.status_code == 400 and "shorten it" in got.json()["error"]["message"]


def test_a_full_queue_answers_429_with_retry_after_and_recovers(client, server):
    gate, jobs = threading.Event(), []
    assert server.queue.idle(30)  # the module's server: nothing of an earlier test still in it
    for _ in range(server.max_queue):  # the worker held on one job, the rest waiting behind it
        jobs.append(server.submit(lambda job: gate.wait(30)))
    try:
        got = client.post("/v1/recipes", json={"ingredients": ["egg"], "max_new_tokens": 5})
        assert got.status_code == 429 and int(got.headers["Retry-After"]) >= 1
        assert "limit is 2" in got.json()["error"]["message"]
        streamed = client.post("/v1/completions", json={"prompt": "Title:", "max_tokens": 5, "stream": True})
        assert streamed.status_code == 429  # refused before the stream starts, not as an event
        health = client.get("/healthz").json()
        assert (health["queued"], health["running"], health["limit"]) == (1, 1, 2)
    finally:
        gate.set()
    assert server.queue.idle(30)
    assert client.post("/v1/recipes", json={"ingredients": ["egg"], "max_new_tokens": 5}).status_code == 200


def test_a_slot_is_free_when_its_answer_arrives():
    # A client that sends its next request the moment it has an answer must never meet a 429 from the
    # job it just got back. What the queue counts is read at the instant the answer is handed over (a
    # done-callback runs right then), for an answer and for an error.
    from chefgenius.serving.jobs import Job, QueueFull, WorkQueue

    queue = WorkQueue(limit=1)
    try:
        for fn, failure in ((lambda job: "a recipe", None), (lambda job: 1 / 0, ZeroDivisionError)):
            job, seen = Job(fn, time.monotonic() + 30), []
            job.future.add_done_callback(lambda _, seen=seen: seen.append(queue.counts()))
            queue.submit(job)
            if failure is None:
                assert job.future.result(30) == "a recipe"
            else:
                assert isinstance(job.future.exception(30), failure)
            assert seen == [{"queued": 0, "running": 0}]
            try:
                queue.submit(Job(lambda job: None, time.monotonic() + 30)).future.result(30)
            except QueueFull as full:
                raise AssertionError(f"answered while its slot was still counted: {full}") from None
    finally:
        queue.close(grace_s=5)


@pytest.mark.skipif(CHROMIUM is None, reason="no chromium on this machine (Debian package 'chromium')")
def test_the_page_in_a_real_browser_streams_a_recipe_and_marks_the_ingredients(run, tmp_path, monkeypatch):
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
    # Pace the tiny model (it would finish in a few ms) so that a loaded machine's browser still reads
    # the stream in pieces: what is tested is that the page shows them as they come, not the timing.
    from chefgenius.serving import app as app_module
    from chefgenius.serving.app import start_in_thread

    unpaced = app_module.token_streamer
    monkeypatch.setattr(app_module, "token_streamer",
                        lambda tok, on_text: unpaced(tok, lambda t: (time.sleep(0.03), on_text(t))))

    server = Server(Sources(run / "final", run), max_queue=2, timeout_s=30)  # its own: stopping closes its queue
    web, port = start_in_thread(server)
    try:
        with sync_api.sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=[
                "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync"])
            page = browser.new_page()
            page.goto(f"http://127.0.0.1:{port}/")
            page.wait_for_function("document.getElementById('model-b').options.length > 1")
            assert page.is_hidden("#col-b")  # nothing compared: no empty second column
            page.fill("#ingredients", "egg, milk, saffron")
            page.fill("#title", "Saffron Custard")
            page.click("#advanced summary")
            page.select_option("#model-b", "step-0000004")
            page.evaluate("""() => { window.seen = []; const box = document.querySelector('#col-a .text');
                new MutationObserver(() => window.seen.push(box.textContent)).observe(box,
                    {childList: true, characterData: true, subtree: true}); }""")
            page.click("#go")
            page.wait_for_selector("#col-a[data-done='1']", timeout=60_000)
            page.wait_for_selector("#col-b[data-done='1']", timeout=60_000)
            title = page.inner_text("#col-a .recipe h2")
            steps = page.eval_on_selector_all("#col-a .recipe ol li", "els => els.map(e => e.textContent)")
            summary = page.inner_text("#col-a .summary")
            seen = page.evaluate("window.seen")
            used = page.eval_on_selector_all("#col-a .chip.used", "els => els.map(e => e.textContent)")
            unused = page.eval_on_selector_all("#col-a .chip.unused", "els => els.map(e => e.textContent)")
            assert page.is_visible("#col-b .recipe h2") and page.is_visible("#col-a .legend")
            page.screenshot(path=str(os.environ.get("CHEFGENIUS_SCREENSHOT") or tmp_path / "page.png"), full_page=True)
            streamed = max(seen, key=len)
            page.fill("#ingredients", "egg, " + "x" * 100)  # a request the server refuses
            page.select_option("#model-b", "")
            page.click("#go")
            page.wait_for_function("document.querySelector('#col-a .status').textContent.includes('80 characters')")
            error = page.inner_text("#col-a .status")
            browser.close()
    finally:
        web.should_exit = True
    record = recipe_record(["egg", "milk", "saffron"], streamed)
    assert streamed.startswith("Title: Saffron Custard") and title == record["title"] == "Saffron Custard"
    assert steps == record["directions"]
    partial = {t for t in seen if t and len(t.rstrip()) < len(streamed.rstrip())}
    assert len(partial) >= 3, seen  # the page showed the recipe in pieces, as it was generated
    assert all(streamed.startswith(t.rstrip()) for t in partial), seen
    assert sorted(used) == sorted(record["used"]) and sorted(unused) == sorted(record["unused"])
    assert summary.startswith(f"Uses {len(record['used'])} of your 3 ingredients")
    assert all(x in summary for x in record["used"] + record["unused"])
    assert error.startswith("Could not write a recipe:") and "longer than 80 characters" in error
    assert sorted(used + unused) == ["egg", "milk", "saffron"]


# ----- cancellation, limits and errors (a real uvicorn server where the path is the network) ---------------


@pytest.fixture
def paced(monkeypatch):
    """Each decoding step takes at least 20 ms, so that a request lasts long enough to be abandoned."""
    import torch
    from transformers import StoppingCriteria

    from chefgenius.serving import app as app_module

    real = app_module.stopping_criteria

    class Pace(StoppingCriteria):
        def __call__(self, input_ids, scores, **kwargs):
            time.sleep(0.02)
            return torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)

    def stopping(job):
        criteria = real(job)
        criteria.insert(0, Pace())  # the cancel check comes after the pause, in the same step
        return criteria

    monkeypatch.setattr(app_module, "stopping_criteria", stopping)


@pytest.fixture
def live(run, paced):
    from chefgenius.serving.app import start_in_thread

    server = Server(Sources(run / "final", run), max_queue=8, timeout_s=30, grace_s=0.5)
    web, port = start_in_thread(server)
    yield server, f"http://127.0.0.1:{port}"
    web.should_exit = True


LONG = {"prompt": "Generate a recipe with: egg, milk\nTitle:", "max_tokens": 100, "temperature": 0}


def test_clients_that_disconnect_cost_the_worker_at_most_a_step_and_free_their_slots(live):
    import httpx

    server, url = live
    for _ in range(6):  # each reads one event and goes away; the later ones are still queued when they do
        with httpx.stream("POST", f"{url}/v1/completions", json={**LONG, "stream": True}, timeout=30) as r:
            assert r.status_code == 200
            next(r.iter_lines())
    assert server.queue.idle(30)
    assert server.queue.cancelled == 6 and server.queue.completed == 0
    assert server.queue.abandoned_s < 6 * 0.5, server.queue.abandoned_s  # 100 steps each would be > 2 s
    assert httpx.get(f"{url}/healthz").json()["queued"] == 0
    t0 = time.perf_counter()
    good = httpx.post(f"{url}/v1/completions", json={**LONG, "max_tokens": 5}, timeout=30)
    assert good.status_code == 200 and time.perf_counter() - t0 < 5  # nothing abandoned ahead of it


def test_a_plain_request_whose_client_gives_up_is_cancelled(live):
    import httpx

    server, url = live
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(f"{url}/v1/completions", json=LONG, timeout=0.5)
    assert server.queue.idle(30)
    assert server.queue.cancelled == 1 and server.queue.completed == 0


def test_one_deadline_covers_the_whole_request_queue_and_every_decode(run, paced):
    server = Server(Sources(run / "final", run), max_queue=4, timeout_s=1.0)
    server.generator(None)  # loaded beforehand: what is timed is generation, not a loaded machine's disk
    client = TestClient(create_app(server))
    t0 = time.perf_counter()
    got = client.post("/v1/recipes", json={"ingredients": ["egg", "milk"], "coverage": True, "max_new_tokens": 100})
    took = time.perf_counter() - t0
    assert got.status_code == 504 and "limit of 1 s" in got.json()["error"]["message"], got.text
    assert took < 3, took  # five decodes of 100 paced steps would take > 10 s
    streamed = _events(client.post("/v1/completions", json={**LONG, "stream": True}))
    assert streamed[-1] == "[DONE]" and streamed[-2]["error"]["code"] == 504
    assert server.queue.idle(5) and server.queue.completed == 0


def test_shutdown_cancels_what_is_left_after_the_grace(run, paced):
    import httpx

    from chefgenius.serving.app import start_in_thread

    server = Server(Sources(run / "final", run), max_queue=8, timeout_s=60, grace_s=0.3)
    web, port = start_in_thread(server)
    streams = [httpx.stream("POST", f"http://127.0.0.1:{port}/v1/completions", json={**LONG, "stream": True},
                            timeout=30) for _ in range(3)]
    responses = [s.__enter__() for s in streams]
    assert all(r.status_code == 200 for r in responses)
    web.should_exit = True  # what uvicorn does on SIGTERM
    assert server.queue.idle(10)
    assert server.queue.cancelled == 3 and server.queue.completed == 0  # each would take 2 s or more to finish
    for s in streams:
        s.__exit__(None, None, None)


def test_bodies_and_prompts_are_bounded_before_any_work(run):
    server = Server(Sources(run / "final", run), max_queue=2, timeout_s=30, max_body_bytes=2000)
    client = TestClient(create_app(server))
    big = {"prompt": "egg " * 1000, "max_tokens": 5}
    got = client.post("/v1/completions", json=big)
    assert got.status_code == 413 and "larger than 2000 bytes" in got.json()["error"]["message"]
    chunked = client.post("/v1/completions", content=(json.dumps(big)[i:i + 500].encode() for i in range(0, 4100, 500)),
                          headers={"Content-Type": "application/json"})
    assert chunked.status_code == 413  # no Content-Length: counted while read
    server.max_body_bytes = 1 << 20
    got = client.post("/v1/completions", json={"prompt": "egg " * 520, "max_tokens": 5})
    assert got.status_code == 400 and "send at most 2048 characters" in got.json()["error"]["message"]
    assert client.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "egg," * 520}]}
                       ).status_code == 400
    assert server.queue.completed == 0  # refused before tokenising: the worker had nothing to do


@pytest.mark.parametrize("body", [
    b'{"prompt": "egg", "max_tokens": 1e300}', b'{"prompt": "egg", "seed": 100000000000000000000000}',
    b'{"prompt": "egg", "temperature": NaN}', b'{"prompt": "egg", "temperature": Infinity}',
    b'{"prompt": "egg", "max_tokens": -1}', b'{"prompt": "egg", "top_p": 1e-400}', b'{"prompt": 12}',
    b'{"prompt": "egg", "logit_bias": {"99999999": 5}}', b'{"prompt": "egg", "stop": ["a", "b", "c", "d", "e"]}',
])
def test_any_json_number_is_a_4xx_never_a_crash(client, body):
    got = client.post("/v1/completions", content=body, headers={"Content-Type": "application/json"})
    assert 400 <= got.status_code < 500 and got.json()["error"]["message"], got.text


def test_a_failure_on_the_worker_is_a_500_in_the_openai_shape(client, server, monkeypatch):
    def broken(name):
        raise RuntimeError("boom")

    monkeypatch.setattr(server, "generator", broken)
    got = client.post("/v1/completions", json={"prompt": "egg", "max_tokens": 3})
    assert got.status_code == 500 and got.json()["error"]["type"] == "server_error"
    assert "RuntimeError" in got.json()["error"]["message"]


def test_beam_search_streams_its_recipe_whole(client):
    events = _events(client.post("/v1/recipes", json={"ingredients": ["egg"], "preset": "beam", "stream": True,
                                                       "max_new_tokens": 30}))
    assert events[-1] == "[DONE]" and events[-2]["recipe"]["text"].startswith("Title:")
    assert "".join(e["text"] for e in events[:-2]) == events[-2]["recipe"]["text"]


# ----- OpenAI parameters and chat, with the official client ------------------------------------------------


@pytest.fixture
def api(client):
    openai = pytest.importorskip("openai", reason="the openai client is not installed")
    return openai, openai.OpenAI(base_url="http://testserver/v1", api_key="unused", http_client=client)


PROMPT = "Generate a recipe with: egg, milk\nTitle:"


def test_stop_echo_and_logprobs_are_honoured(api):
    openai, c = api
    full = c.completions.create(model="final", prompt=PROMPT, max_tokens=40, temperature=0).choices[0].text
    stop = full.strip()[4:7]
    cut = c.completions.create(model="final", prompt=PROMPT, max_tokens=40, temperature=0, stop=[stop])
    assert cut.choices[0].text == full[:full.index(stop)] and cut.choices[0].finish_reason == "stop"
    streamed = "".join(x.choices[0].text for x in c.completions.create(
        model="final", prompt=PROMPT, max_tokens=40, temperature=0, stop=stop, stream=True))
    assert streamed == cut.choices[0].text
    echoed = c.completions.create(model="final", prompt=PROMPT, max_tokens=5, temperature=0, echo=True)
    assert echoed.choices[0].text.startswith(PROMPT)
    lp = c.completions.create(model="final", prompt=PROMPT, max_tokens=6, temperature=0, logprobs=2)
    probs = lp.choices[0].logprobs
    assert len(probs.tokens) == lp.usage.completion_tokens == len(probs.token_logprobs)
    assert "".join(probs.tokens) == lp.choices[0].text
    assert all(len(t) == 2 and max(t.values()) == lp_ for t, lp_ in zip(probs.top_logprobs, probs.token_logprobs))


def test_penalties_bias_usage_and_seeds_are_honoured(api):
    openai, c = api
    plain = c.completions.create(model="final", prompt=PROMPT, max_tokens=30, temperature=0)
    penalised = c.completions.create(model="final", prompt=PROMPT, max_tokens=30, temperature=0,
                                     frequency_penalty=2.0, presence_penalty=2.0)
    assert penalised.choices[0].text != plain.choices[0].text
    forced = c.completions.create(model="final", prompt=PROMPT, max_tokens=4, temperature=0, logit_bias={"42": 100})
    token = c.completions.create(model="final", prompt=PROMPT, max_tokens=4, temperature=0, logprobs=0,
                                 logit_bias={"42": 100}).choices[0].logprobs.tokens
    assert len(set(token)) == 1 and forced.choices[0].text == token[0] * 4
    chunks = list(c.completions.create(model="final", prompt=PROMPT, max_tokens=5, temperature=0, stream=True,
                                       stream_options={"include_usage": True}))
    assert chunks[-1].usage.completion_tokens == 5 and not chunks[-1].choices
    sampled = {c.completions.create(model="final", prompt=PROMPT, max_tokens=12, temperature=1.0).choices[0].text
               for _ in range(3)}
    assert len(sampled) > 1  # no seed: a fresh one each time
    seeded = {c.completions.create(model="final", prompt=PROMPT, max_tokens=12, temperature=1.0, seed=7)
              .choices[0].text for _ in range(2)}
    assert len(seeded) == 1


@pytest.mark.parametrize(("kwargs", "words"), [
    ({"n": 2}, "n must be 1"), ({"best_of": 3}, "best_of must be 1"), ({"suffix": "x"}, "suffix is not supported"),
    ({"echo": True, "logprobs": 1}, "echo with logprobs"), ({"extra_body": {"mirostat": 1}}, "'mirostat' is not"),
])
def test_what_is_not_supported_is_refused_not_ignored(api, kwargs, words):
    openai, c = api
    with pytest.raises(openai.BadRequestError, match=words):
        c.completions.create(model="final", prompt=PROMPT, max_tokens=3, **kwargs)


def test_chat_completions_plain_and_streamed_through_the_saved_template(api, run):
    from transformers import AutoTokenizer

    openai, c = api
    messages = [{"role": "system", "content": "You are a chef."}, {"role": "user", "content": "egg, milk"}]
    tok = AutoTokenizer.from_pretrained(run / "final")
    assert tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True) == PROMPT
    done = c.chat.completions.create(model="final", messages=messages, max_tokens=30, temperature=0)
    text = done.choices[0].message.content
    assert text.startswith("Title:") and done.choices[0].message.role == "assistant"
    chunks = list(c.chat.completions.create(model="final", messages=messages, max_tokens=30, temperature=0,
                                            stream=True, stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(x.choices[0].delta.content or "" for x in chunks if x.choices) == text
    assert chunks[-1].usage.completion_tokens == done.usage.completion_tokens
    lp = c.chat.completions.create(model="final", messages=messages, max_tokens=4, temperature=0, logprobs=True,
                                   top_logprobs=2)
    assert len(lp.choices[0].logprobs.content) == 4 and len(lp.choices[0].logprobs.content[0].top_logprobs) == 2
    with pytest.raises(openai.BadRequestError, match="user message"):
        c.chat.completions.create(model="final", messages=[{"role": "system", "content": "hi"}], max_tokens=3)


def test_models_are_listed_and_retrieved_without_paths(api):
    openai, c = api
    listed = c.models.list().data
    assert all(m.created > 0 and "path" not in m.model_dump() for m in listed)
    assert c.models.retrieve("final").id == "final"
    with pytest.raises(openai.NotFoundError):
        c.models.retrieve("step-9")


def test_api_key_host_check_and_docs_when_exposed(run):
    from chefgenius.serving.app import exposure_warning

    server = Server(Sources(run / "final", run), api_key="s3cret", allowed_hosts=["127.0.0.1", "localhost"])
    client = TestClient(create_app(server), base_url="http://127.0.0.1")
    refused = client.get("/v1/models")
    assert refused.status_code == 401 and refused.json()["error"]["type"] == "authentication_error"
    assert client.get("/v1/models", headers={"Authorization": "Bearer s3cret"}).status_code == 200
    assert client.get("/healthz").status_code == 200 and client.get("/").status_code == 200  # the page asks for it
    rebound = TestClient(create_app(server), base_url="http://evil.example")
    assert rebound.get("/healthz").status_code == 400  # DNS rebinding: a foreign Host on a loopback server
    assert client.get("/docs").status_code == 404 and client.get("/openapi.json").status_code == 404
    assert "WARNING" in exposure_warning("0.0.0.0", 8000, None)
    assert exposure_warning("0.0.0.0", 8000, "k") is None and exposure_warning("127.0.0.1", 8000, None) is None


def test_one_structured_log_line_per_request(client, caplog):
    with caplog.at_level("INFO", logger="chefgenius.serve"):
        client.post("/v1/completions", json={"prompt": PROMPT, "max_tokens": 3, "temperature": 0})
        client.post("/v1/completions", json={"prompt": "egg", "max_tokens": 0})
    lines = [json.loads(r.message) for r in caplog.records if r.name == "chefgenius.serve"]
    ok, bad = lines[-2], lines[-1]
    assert ok["route"] == "/v1/completions" and ok["status"] == 200 and ok["model"] == "final"
    assert ok["completion_tokens"] <= 3 and ok["prompt_tokens"] > 0 and ok["ms"] > 0 and len(ok["id"]) == 12
    assert bad["status"] == 400


def test_a_bad_logit_bias_on_a_stream_is_an_http_error_not_an_event(client):
    got = client.post("/v1/completions", json={"prompt": PROMPT, "max_tokens": 3, "stream": True,
                                               "logit_bias": {"99999999": 5}})
    assert got.status_code == 400 and "not a token id of this model" in got.json()["error"]["message"]


def test_serve_leaves_a_core_to_the_http_side_by_default(run):
    """A real ``chefgenius serve``: generation takes every core but one unless --threads says otherwise
    (with every core, HTTP work preempted the intra-op team: bench/serve_load.py)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "chefgenius", "serve", "--run", str(run), "--port", str(port),
                             "--device", "cpu"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        said = next(line for line in proc.stderr if line.startswith("generation uses"))
        cores = len(os.sched_getaffinity(0))
        threads = max(1, cores - 1)
        assert said.startswith(f"generation uses {threads} CPU thread{'s' if threads > 1 else ''} of {cores} "), said
        deadline = time.monotonic() + 300  # the model loads before the server binds
        while True:
            try:
                assert httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=30).status_code == 200
                break
            except httpx.ConnectError:
                assert proc.poll() is None and time.monotonic() < deadline
                time.sleep(0.2)
    finally:
        proc.terminate()
        proc.wait(60)
    assert generation_threads(3) == 3 and generation_threads(None) == threads


def test_a_cancel_stops_the_model_at_its_next_layer_not_its_next_token(server):
    """Within a decoding step: a job cancelled while the model runs never reaches the next layer
    (the per-token stopping criterion alone would let the whole step finish first)."""
    import torch

    from chefgenius.serving.jobs import Cancelled, Job

    _, g = server.generator(None)
    layers = [m for stack in g.model.modules() if isinstance(stack, torch.nn.ModuleList) for m in stack]
    ran: list[int] = []
    handles = [layer.register_forward_hook(lambda m, a, o, i=i: ran.append(i)) for i, layer in enumerate(layers)]
    jobs: list[Job] = []

    def cancel_mid_step(module, args, output) -> None:
        for j in jobs:
            j.cancel("client")

    handles.append(layers[0].register_forward_hook(cancel_mid_step))
    ids = torch.tensor([g.tokenizer.encode("Generate a recipe with: egg\nTitle:")])
    try:
        with torch.no_grad():
            g.model(ids)  # outside the worker the check does nothing
            assert ran == list(range(len(layers))) and len(layers) >= 2
            ran.clear()
            job = Job(lambda job: g.model(ids), time.monotonic() + 30)
            jobs.append(job)
            server.queue.submit(job)
            with pytest.raises(Cancelled):
                job.future.result(30)
    finally:
        for h in handles:
            h.remove()
    assert ran == [0], ran  # the first layer finished, cancelled the job, and nothing ran after it
    assert server.queue.idle(5)
