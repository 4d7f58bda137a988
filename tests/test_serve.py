"""chefgenius serve: the recipe API, OpenAI-compatible completions, bad requests, the queue, and a real browser."""

from __future__ import annotations

import json
import os
import shutil
import threading
import time
from pathlib import Path

import pytest

pytest.importorskip("fastapi", reason="chefgenius serve needs the 'serve' extra (fastapi, uvicorn)")
from fastapi.testclient import TestClient  # noqa: E402

from chefgenius.generation.decode import GenerationSettings, generate_texts, recipe_record  # noqa: E402  
from chefgenius.serving.app import MAX_INGREDIENTS, Server, Sources, create_app  # noqa: E402  

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
    for _ in range(server.max_queue):  # the worker held on one job, the rest waiting behind it
        jobs.append(server.submit(lambda job: gate.wait(30)))
    try:
        got = client.post("/v1/recipes", json={"ingredients": ["egg"], "max_new_tokens": 5})
        assert got.status_code == 429 and int(got.headers["Retry-After"]) >= 1
        assert "limit is 2" in got.json()["error"]["message"]
        streamed = client.post("/v1/completions", json={"prompt": "Title:", "max_tokens": 5, "stream": True})
        assert streamed.status_code == 429  # refused before the stream starts, not as an event
        assert client.get("/healthz").json() | {"default_model": None} == {
            "status": "ok", "default_model": None, "queued": 1, "running": 1, "limit": 2}
    finally:
        gate.set()
    assert server.queue.idle(30)
    assert client.post("/v1/recipes", json={"ingredients": ["egg"], "max_new_tokens": 5}).status_code == 200


@pytest.mark.skipif(CHROMIUM is None, reason="no chromium on this machine (Debian package 'chromium')")
def test_the_page_in_a_real_browser_streams_a_recipe_and_marks_the_ingredients(server, tmp_path, monkeypatch):
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
    from chefgenius.serving.app import start_in_thread

    # Pace the tiny model (it would finish in a few ms) so that a loaded machine's browser still reads
    # the stream in pieces: what is tested is that the page shows them as they come, not the timing.
    from chefgenius.serving import app as app_module

    unpaced = app_module.token_streamer
    monkeypatch.setattr(app_module, "token_streamer",
                        lambda tok, on_text: unpaced(tok, lambda t: (time.sleep(0.03), on_text(t))))

    web, port = start_in_thread(server)
    try:
        with sync_api.sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=[
                "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync"])
            page = browser.new_page()
            page.goto(f"http://127.0.0.1:{port}/")
            page.wait_for_function("document.getElementById('model-b').options.length > 1")
            page.fill("#ingredients", "egg, milk, saffron")
            page.fill("#title", "Saffron Custard")
            page.select_option("#model-b", "step-0000004")
            page.evaluate("""() => { window.seen = []; const pre = document.querySelector('#col-a .text');
                new MutationObserver(() => window.seen.push(pre.textContent)).observe(pre,
                    {childList: true, characterData: true, subtree: true}); }""")
            page.click("#go")
            page.wait_for_selector("#col-a[data-done='1']", timeout=60_000)
            page.wait_for_selector("#col-b[data-done='1']", timeout=60_000)
            shown = page.inner_text("#col-a .text")
            seen = page.evaluate("window.seen")
            used = page.eval_on_selector_all("#col-a .chip.used", "els => els.map(e => e.textContent)")
            unused = page.eval_on_selector_all("#col-a .chip.unused", "els => els.map(e => e.textContent)")
            page.screenshot(path=str(os.environ.get("CHEFGENIUS_SCREENSHOT") or tmp_path / "page.png"), full_page=True)
            browser.close()
    finally:
        web.should_exit = True
    record = recipe_record(["egg", "milk", "saffron"], shown)
    assert shown.startswith("Title: Saffron Custard") and "Ingredients:" in shown
    partial = {t for t in seen if t and len(t.rstrip()) < len(shown.rstrip())}
    assert len(partial) >= 3, seen  # the page showed the recipe in pieces, as it was generated
    assert all(shown.startswith(t.rstrip()) for t in partial), seen
    assert sorted(used) == sorted(record["used"]) and sorted(unused) == sorted(record["unused"])
    assert sorted(used + unused) == ["egg", "milk", "saffron"]
