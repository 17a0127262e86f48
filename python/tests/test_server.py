"""`autoneural serve` through the official `openai` client (and plain HTTP where the client
hides what is tested). Runs the real binary on the embedded default model, on loopback.

    AUTONEURAL=target/release/autoneural python -m pytest -q python/tests/test_server.py
"""
import base64
import json
import os
import pathlib
import re
import subprocess
import threading
import time
import urllib.error
import urllib.request

import openai
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
BIN = os.environ.get("AUTONEURAL", str(ROOT / "target" / "release" / "autoneural"))
MODEL = ROOT / "models" / "autoneural-cockpit-tiny"
RANDOM = ROOT / "models" / "autoneural-tiny-random"
IMAGE = ROOT / "assets" / "cockpit_road.png"
QUESTION = "What colour is the traffic light?"
KEY = "test-key-123"


class Server:
    def __init__(self, *args):
        self.proc = subprocess.Popen(
            [BIN, "serve", "--port", "0", *args],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        self.lines = []
        self.base = None
        deadline = time.time() + 60
        while self.base is None:
            line = self.proc.stderr.readline()
            if not line:
                raise RuntimeError("server exited: " + "".join(self.lines))
            self.lines.append(line)
            m = re.search(r"listening on (http://\S+)", line)
            if m:
                self.base = m.group(1)
            if time.time() > deadline:
                raise RuntimeError("server did not start")
        threading.Thread(target=self._drain, daemon=True).start()
        while True:  # /health is 503 until the model is loaded
            try:
                with urllib.request.urlopen(self.base + "/health") as r:
                    if r.status == 200:
                        break
            except urllib.error.HTTPError as e:
                assert e.code == 503
            except urllib.error.URLError:
                pass
            if time.time() > deadline:
                raise RuntimeError("model did not load")
            time.sleep(0.05)

    def _drain(self):
        for line in self.proc.stderr:
            self.lines.append(line)

    def client(self, key=KEY):
        return openai.OpenAI(base_url=self.base + "/v1", api_key=key, max_retries=0)

    def post(self, path, body, headers=None, raw=None):
        data = raw if raw is not None else json.dumps(body).encode()
        req = urllib.request.Request(self.base + path, data=data, method="POST",
                                     headers={"Content-Type": "application/json", **(headers or {})})
        try:
            with urllib.request.urlopen(req) as r:
                return r.status, json.loads(r.read())
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read())

    def metrics(self):
        with urllib.request.urlopen(self.base + "/metrics") as r:
            return r.read().decode()

    def stop(self):
        self.proc.terminate()
        self.proc.wait(10)


@pytest.fixture(scope="module")
def server():
    s = Server("--model", str(MODEL), "--api-key", KEY, "--max-body-bytes", str(4 << 20))
    yield s
    s.stop()


@pytest.fixture(scope="module")
def random_server():
    s = Server("--model", str(RANDOM), "--parallel", "1")
    yield s
    s.stop()


def data_uri(path):
    return "data:image/png;base64," + base64.b64encode(pathlib.Path(path).read_bytes()).decode()


def image_message(text=QUESTION):
    return {"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": data_uri(IMAGE)}},
        {"type": "text", "text": text}]}


@pytest.fixture(scope="module")
def reference():
    """`autoneural run` on the same image and question."""
    out = subprocess.run([BIN, "run", "--model", str(MODEL), "--image", str(IMAGE), "--prompt",
                          QUESTION, "--json"], check=True, capture_output=True, text=True)
    return json.loads(out.stdout)


def test_non_streamed_answer_matches_run(server, reference):
    r = server.client().chat.completions.create(model="any", messages=[image_message()],
                                                max_tokens=128)
    c = r.choices[0]
    assert c.message.role == "assistant"
    assert c.message.content == reference["text"]
    assert c.finish_reason == "stop"
    assert r.usage.prompt_tokens == reference["prompt_tokens"]
    assert r.usage.completion_tokens == len(reference["tokens"])
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens


def test_streamed_answer_matches_run(server, reference):
    stream = server.client().chat.completions.create(
        model="any", messages=[image_message()], stream=True, max_tokens=128,
        stream_options={"include_usage": True})
    chunks = list(stream)
    assert len({c.id for c in chunks}) == 1
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == reference["text"]
    finals = [c for c in chunks if c.choices and c.choices[0].finish_reason]
    assert len(finals) == 1 and finals[0].choices[0].finish_reason == "stop"
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == len(reference["tokens"])


def test_streams_carry_usage_only_when_asked(server):
    chunks = list(server.client().chat.completions.create(
        model="any", messages=[{"role": "user", "content": "Hello"}], stream=True, max_tokens=8))
    assert all(c.usage is None for c in chunks)


def test_multi_turn_conversation(server, reference):
    client = server.client()
    messages = [{"role": "system", "content": "You answer about the car's surroundings."},
                image_message()]
    first = client.chat.completions.create(model="any", messages=messages, max_tokens=64)
    messages += [{"role": "assistant", "content": first.choices[0].message.content},
                 {"role": "user", "content": "Is it safe to drive?"}]
    second = client.chat.completions.create(model="any", messages=messages, max_tokens=64)
    assert second.choices[0].message.content
    assert second.usage.prompt_tokens > first.usage.prompt_tokens + 3
    # The image was encoded once: the second turn found it in the cache.
    assert re.search(r"^autoneural_image_cache_hits_total\S* [1-9]", server.metrics(), re.M)


def test_stop_sequences(server, reference):
    text = reference["text"]
    assert len(text) > 2
    stop = text[1:3]
    r = server.client().chat.completions.create(model="any", messages=[image_message()],
                                                max_tokens=128, stop=[stop])
    assert r.choices[0].message.content == text[:1]
    assert r.choices[0].finish_reason == "stop"


def test_bad_image(server):
    bad = {"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,aGVsbG8="}},
        {"type": "text", "text": "hi"}]}
    with pytest.raises(openai.BadRequestError) as e:
        server.client().chat.completions.create(model="any", messages=[bad])
    assert e.value.body["type"] == "invalid_request_error"
    with pytest.raises(openai.BadRequestError):
        server.client().chat.completions.create(model="any", messages=[{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": "file:///etc/passwd"}}]}])


def test_oversized_body(server):
    status, body = server.post("/v1/chat/completions", None,
                               headers={"Authorization": "Bearer " + KEY},
                               raw=b"{" + b" " * (5 << 20) + b"}")
    assert status == 413
    assert body["error"]["type"] == "invalid_request_error"


def test_context_overflow(server):
    with pytest.raises(openai.BadRequestError) as e:
        server.client().chat.completions.create(
            model="any", messages=[{"role": "user", "content": "word " * 6000}])
    assert e.value.body["code"] == "context_length_exceeded"
    assert "context is 4096 tokens" in e.value.body["message"]


def test_api_key(server):
    for key in ["wrong", ""]:
        with pytest.raises(openai.AuthenticationError) as e:
            server.client(key=key or "x").chat.completions.create(
                model="any", messages=[{"role": "user", "content": "hi"}])
        assert e.value.status_code == 401
    status, _ = server.post("/v1/chat/completions", {"messages": []})
    assert status == 401
    with urllib.request.urlopen(server.base + "/health") as r:  # open without a key
        assert r.status == 200


def test_models_and_tokenize(server):
    models = server.client().models.list()
    assert [m.id for m in models.data] == ["autoneural-cockpit-tiny"]
    auth = {"Authorization": "Bearer " + KEY}
    status, t = server.post("/tokenize", {"content": "hello <|im_end|>"}, headers=auth)
    assert status == 200
    status, d = server.post("/detokenize", {"tokens": t["tokens"]}, headers=auth)
    assert status == 200 and d["content"] == "hello <|im_end|>"


def test_disconnect_cancels(random_server):
    """The random model never stops early: a client that leaves must free the only slot."""
    client = random_server.client()
    stream = client.chat.completions.create(
        model="any", messages=[{"role": "user", "content": "go"}], stream=True, max_tokens=3000)
    n = 0
    for _ in stream:
        n += 1
        if n == 3:
            break
    stream.close()
    t0 = time.time()
    # Another client (the first one is gone). With --parallel 1 this waits for the slot: it must
    # come well before 3000 tokens.
    r = random_server.client().chat.completions.create(model="any", messages=[{"role": "user", "content": "hi"}],
                                       max_tokens=2)
    assert r.usage.completion_tokens == 2
    waited = time.time() - t0
    m = random_server.metrics()
    generated = float(re.search(r"^autoneural_generated_tokens_total (\S+)", m, re.M).group(1))
    assert generated < 1000, (generated, waited)
