"""`trtcompile serve` end to end: a live server on 127.0.0.1, driven by the official `openai` client.

Expected outputs come from the runtime itself (model.generate, model.run) and from transformers'
own chat-template rendering, never from the server's code.
"""

from __future__ import annotations

import base64
import json
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest

from live_server import LiveServer

openai = pytest.importorskip("openai")
pytest.importorskip("starlette")  # the server's own libraries (trtcompile[serve])
pytest.importorskip("uvicorn")

LONG_PROMPT = "w7 w8 w9"    # greedy: 2000 tokens without an eos (seconds of decoding)
EOS_PROMPT = "w10 w11"      # greedy: 3 tokens, then the eos


def client(server: LiveServer, **kw) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key=kw.pop("api_key", "unused"), max_retries=0, **kw)


@pytest.fixture(scope="module")
def hf_tokenizer(serve_packages):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(serve_packages["llama"] / "tokenizer"))


def chat_ids(hf_tokenizer, content: str) -> list[int]:
    text = hf_tokenizer.apply_chat_template([{"role": "user", "content": content}], add_generation_prompt=True,
                                            tokenize=False)
    return hf_tokenizer(text, add_special_tokens=False)["input_ids"]


def greedy(model, hf_tokenizer, ids: list[int], max_tokens: int) -> tuple[str, int, str]:
    """The runtime's own greedy answer: (text, completion tokens, finish_reason)."""
    new = model.generate(np.asarray([ids]), max_new_tokens=max_tokens)[0, len(ids):].tolist()
    stopped = new[-1] == 2 if new else False
    text = hf_tokenizer.decode(new[:-1] if stopped else new, skip_special_tokens=True)
    return text, len(new), "stop" if stopped else "length"


def stream_chat(cl: openai.OpenAI, content: str, **kw) -> tuple[str, str, dict]:
    pieces, finish, usage = [], None, None
    for chunk in cl.chat.completions.create(model="llama", messages=[{"role": "user", "content": content}],
                                            stream=True, stream_options={"include_usage": True}, **kw):
        if chunk.choices:
            pieces.append(chunk.choices[0].delta.content or "")
            finish = chunk.choices[0].finish_reason or finish
        if chunk.usage:
            usage = chunk.usage
    return "".join(pieces), finish, usage


@pytest.mark.parametrize("content, max_tokens", [(LONG_PROMPT, 24), (EOS_PROMPT, 24)])
def test_chat_equals_the_runtimes_greedy_output(server, runtime_model, hf_tokenizer, content, max_tokens):
    ids = chat_ids(hf_tokenizer, content)
    text, count, finish = greedy(runtime_model, hf_tokenizer, ids, max_tokens)
    cl = client(server)

    reply = cl.chat.completions.create(model="llama", messages=[{"role": "user", "content": content}],
                                       max_tokens=max_tokens, temperature=0)
    assert reply.choices[0].message.content == text and reply.choices[0].message.role == "assistant"
    assert reply.choices[0].finish_reason == finish
    assert (reply.usage.prompt_tokens, reply.usage.completion_tokens) == (len(ids), count)

    streamed, stream_finish, usage = stream_chat(cl, content, max_tokens=max_tokens, temperature=0)
    assert (streamed, stream_finish) == (text, finish)
    assert (usage.prompt_tokens, usage.completion_tokens, usage.total_tokens) == (len(ids), count, len(ids) + count)
    assert finish == ("stop" if content == EOS_PROMPT else "length")


def test_completions_from_text_and_from_token_ids(server, runtime_model, hf_tokenizer):
    cl = client(server)
    ids = hf_tokenizer("w5 w6 w7")["input_ids"]
    text, count, finish = greedy(runtime_model, hf_tokenizer, ids, 10)
    for prompt in ("w5 w6 w7", ids):
        reply = cl.completions.create(model="llama", prompt=prompt, max_tokens=10, temperature=0)
        assert (reply.choices[0].text, reply.choices[0].finish_reason) == (text, finish)
        assert reply.usage.completion_tokens == count
    streamed = "".join(c.choices[0].text for c in cl.completions.create(
        model="llama", prompt="w5 w6 w7", max_tokens=10, temperature=0, stream=True))
    assert streamed == text


def test_stop_strings_end_the_text_before_them(server, runtime_model, hf_tokenizer):
    full, _, _ = greedy(runtime_model, hf_tokenizer, chat_ids(hf_tokenizer, LONG_PROMPT), 30)
    words = full.split()
    stop = f"{words[5]} {words[6]}"  # two tokens: matched on the text, across a token boundary
    expected = full[:full.index(stop)]
    cl = client(server)
    reply = cl.chat.completions.create(model="llama", messages=[{"role": "user", "content": LONG_PROMPT}],
                                       max_tokens=30, temperature=0, stop=[stop, "never-said"])
    assert (reply.choices[0].message.content, reply.choices[0].finish_reason) == (expected, "stop")
    assert reply.usage.completion_tokens == 7  # up to the token that completed the stop string
    streamed, finish, _ = stream_chat(cl, LONG_PROMPT, max_tokens=30, temperature=0, stop=stop)
    assert (streamed, finish) == (expected, "stop")


def test_seeded_sampling_is_reproducible(server):
    cl = client(server)
    replies = [cl.chat.completions.create(model="llama", messages=[{"role": "user", "content": LONG_PROMPT}],
                                          max_tokens=12, temperature=0.9, top_p=0.9, seed=s).choices[0].message.content
               for s in (1, 1, 2)]
    assert replies[0] == replies[1] and len(replies[0].split()) >= 1


def test_eight_concurrent_streams_each_get_their_own_tokens(server, runtime_model, hf_tokenizer):
    prompts = [(f"w{20 + i} w{40 + i}", 8 + 3 * i) for i in range(8)]
    expected = [greedy(runtime_model, hf_tokenizer, chat_ids(hf_tokenizer, p), n)[::2] for p, n in prompts]
    cl = client(server)
    start = threading.Barrier(8)

    def one(i):
        start.wait()
        text, finish, _ = stream_chat(cl, prompts[i][0], max_tokens=prompts[i][1], temperature=0)
        return text, finish

    with ThreadPoolExecutor(8) as pool:
        got = list(pool.map(one, range(8)))
    assert got == expected


def mean_pooled(model, ids: list[int]) -> np.ndarray:
    """The runtime's own answer for one input: model.run at batch 1, mean over its tokens, L2-normalized."""
    feeds = {"input_ids": np.asarray([ids]), "attention_mask": np.ones((1, len(ids)), np.int64),
             "token_type_ids": np.zeros((1, len(ids)), np.int64)}
    hidden = model.run(feeds)["last_hidden_state"][0].astype(np.float64)
    pooled = hidden.mean(axis=0)
    return pooled / np.linalg.norm(pooled)


@pytest.fixture(scope="module")
def encoder(serve_packages):
    import tokenizers

    from trtcompile import runtime

    tok = tokenizers.Tokenizer.from_file(str(serve_packages["bert"] / "tokenizer" / "tokenizer.json"))
    with runtime.load(serve_packages["bert"], backend="onnxruntime") as model:
        yield model, tok


def test_embeddings_equal_model_run_and_mean_pooling(server, encoder):
    model, tok = encoder
    texts = ["w5 w6", "w7 w8 w9 w10 w11 w12 w13 w14 w15 w16 w17 w18 w19 w20 w21 w22 w23 w24 w25", "w30"]
    cl = client(server)
    want = np.stack([mean_pooled(model, tok.encode(t).ids) for t in texts])
    # The client asks for base64 and decodes it itself unless told a format; explicit base64 stays a string.
    for fmt in (openai.NOT_GIVEN, "float", "base64"):
        reply = cl.embeddings.create(model="bert", input=texts, encoding_format=fmt)
        if fmt == "base64":
            got = np.stack([np.frombuffer(base64.b64decode(d.embedding), "<f4") for d in reply.data])
        else:
            got = np.asarray([d.embedding for d in reply.data], np.float64)
        np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)
        assert reply.usage.prompt_tokens == sum(len(tok.encode(t).ids) for t in texts)
    ids = [2, 9, 10, 11, 3]
    reply = cl.embeddings.create(model="bert", input=ids, encoding_format="float")
    np.testing.assert_allclose(reply.data[0].embedding, mean_pooled(model, ids), atol=1e-5, rtol=0)


def test_embedding_requests_arriving_together_share_runs(server, encoder):
    model, tok = encoder
    texts = [" ".join(f"w{5 + (i * 7 + j) % 100}" for j in range(3 + i % 9)) for i in range(16)]
    runs_before = server.metric("trtcompile_embedding_batch_size_count", model="bert")
    cl = client(server)
    start = threading.Barrier(16)

    def one(text):
        start.wait()
        return cl.embeddings.create(model="bert", input=text, encoding_format="float").data[0].embedding

    with ThreadPoolExecutor(16) as pool:
        got = list(pool.map(one, texts))
    for text, vector in zip(texts, got):
        np.testing.assert_allclose(vector, mean_pooled(model, tok.encode(text).ids), atol=1e-5, rtol=0)
    runs = server.metric("trtcompile_embedding_batch_size_count", model="bert") - runs_before
    assert runs < len(texts)  # some requests shared a run


def test_models_health_and_metrics(server):
    cards = {m.id: m for m in client(server).models.list()}
    assert set(cards) == {"llama", "bert"}
    assert cards["llama"].model_extra["max_context"] == 2048
    assert cards["bert"].model_extra["pooling"] == "mean" and cards["bert"].model_extra["normalized"] is True
    assert httpx.get(f"{server.url}/health").json()["status"] == "ok"
    text = httpx.get(f"{server.url}/metrics").text
    for name in ("trtcompile_requests_total", "trtcompile_time_to_first_token_seconds_bucket",
                 "trtcompile_time_per_output_token_seconds_bucket", "trtcompile_queue_depth", "trtcompile_slots_in_use",
                 "trtcompile_tokens_per_second", "trtcompile_generated_tokens_total"):
        assert name in text, name
    assert server.metric("trtcompile_requests_total", endpoint="/v1/chat/completions", status="200") > 0


CHAT = {"model": "llama", "messages": [{"role": "user", "content": "w5"}]}


@pytest.mark.parametrize("path, body, status, param, words", [
    ("/v1/chat/completions", b'{"model": "llama", "messages": [', 400, None, ["not valid JSON"]),
    ("/v1/chat/completions", b'[1, 2]', 400, None, ["JSON object"]),
    ("/v1/chat/completions", {**CHAT, "max_tokenz": 5}, 400, "max_tokenz", ["unknown field", "max_tokens"]),
    ("/v1/chat/completions", {"model": "llama"}, 400, "messages", ["required"]),
    # The limits come from the package (GET /v1/models): today a prompt up to the prefill bucket
    # (512) and a context of 2048; a static-cache package prefills in chunks up to its cache length.
    # The chat prompt "<s> user w5 assistant" is 4 tokens.
    ("/v1/chat/completions", lambda lim: {**CHAT, "max_tokens": 5000}, 400, "max_tokens",
     lambda lim: ["5000", f"context of {lim['max_context']}", f"at most {lim['max_context'] - 4}"]),
    ("/v1/chat/completions", lambda lim: {**CHAT, "max_completion_tokens": lim["max_context"] - 3}, 400,
     "max_completion_tokens", lambda lim: [f"context of {lim['max_context']}"]),
    ("/v1/chat/completions",
     lambda lim: {**CHAT, "messages": [{"role": "user", "content": "w5 " * (lim["max_prompt"] - 2)}]}, 400, "messages",
     lambda lim: [f"{lim['max_prompt'] + 1} tokens", f"at most {lim['max_prompt']}"]),
    ("/v1/completions", lambda lim: {"model": "llama", "prompt": [5] * (lim["max_prompt"] + 1)}, 400, "prompt",
     lambda lim: [f"{lim['max_prompt'] + 1} tokens", f"at most {lim['max_prompt']}"]),
    ("/v1/completions", {"model": "llama", "prompt": [5, 999]}, 400, "prompt", ["999", "0..127"]),
    ("/v1/chat/completions", {**CHAT, "n": 2}, 400, "n", ["n"]),
    ("/v1/chat/completions", {**CHAT, "temperature": 3}, 400, "temperature", ["less than or equal to 2"]),
    ("/v1/chat/completions", {**CHAT, "messages": [{"role": "robot", "content": "w5"}]}, 400, "messages.0.role",
     ["robot"]),
    ("/v1/chat/completions", {**CHAT, "model": "gpt-4"}, 404, "model", ["'gpt-4' is not served", "llama"]),
    ("/v1/embeddings", {"model": "llama", "input": "w5"}, 400, "model", ["causal LM", "/v1/chat/completions"]),
    ("/v1/chat/completions", {**CHAT, "model": "bert"}, 400, "model", ["encoder", "/v1/embeddings"]),
    ("/v1/embeddings", {"model": "bert", "input": "w5 " * 70}, 400, "input", ["72 tokens", "at most 64"]),
    ("/v1/embeddings", {"model": "bert", "input": [[5, 6], []]}, 400, "input", ["non-empty"]),
    ("/v1/nothing", {}, 404, None, ["/v1/nothing"]),
])
def test_bad_requests_get_a_4xx_with_an_openai_error_body(server, path, body, status, param, words):
    if callable(body):
        limits = httpx.get(f"{server.url}/v1/models/llama").json()
        body, words = body(limits), words(limits)
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    reply = httpx.post(f"{server.url}{path}", content=content, headers={"Content-Type": "application/json"})
    assert reply.status_code == status, reply.text
    error = reply.json()["error"]
    assert error["param"] == param and error["type"] == "invalid_request_error"
    for word in words:
        assert word in error["message"], error["message"]


def test_the_openai_client_sees_the_error(server):
    with pytest.raises(openai.BadRequestError) as err:
        client(server).chat.completions.create(model="llama", messages=[{"role": "user", "content": "w5"}],
                                               max_tokens=4096, stream=True)
    assert err.value.status_code == 400 and err.value.body["param"] == "max_tokens"
    assert httpx.get(f"{server.url}/v1/chat/completions").status_code == 405


def events(response: httpx.Response):
    """The stream's events, parsed, up to [DONE]. Keep the iterator: dropping it closes the connection."""
    for line in response.iter_lines():
        if line == "data: [DONE]":
            return
        if line.startswith("data: "):
            yield json.loads(line[6:])


def test_api_key_full_queue_disconnect_and_sigterm_drain(serve_packages, runtime_model, hf_tokenizer, tmp_path):
    """One slot, no queue: 401 without the key; 429 while the slot is busy; a client that disconnects
    frees the slot at once (its 2000-token generation takes seconds); SIGTERM lets a stream in
    flight finish, then the server exits 0."""
    live = LiveServer([str(serve_packages["llama"]), "--name", "llama", "--max-batch", "1", "--max-queue", "0",
                       "--api-key", "sesame"], tmp_path / "server.log")
    try:
        with pytest.raises(openai.AuthenticationError) as err:
            client(live, api_key="wrong").models.list()
        assert err.value.status_code == 401 and err.value.body["code"] == "invalid_api_key"
        assert httpx.get(f"{live.url}/health").status_code == 200  # health and metrics stay open

        cl = client(live, api_key="sesame")
        headers = {"Authorization": "Bearer sesame"}
        body = {"model": "llama", "messages": [{"role": "user", "content": LONG_PROMPT}], "max_tokens": 2000,
                "temperature": 0, "stream": True}
        with httpx.Client(timeout=30) as http:
            with http.stream("POST", f"{live.url}/v1/chat/completions", json=body, headers=headers) as long:
                stream = events(long)
                assert long.status_code == 200 and next(stream)["choices"][0]["delta"]["role"] == "assistant"
                assert live.metric("trtcompile_slots_in_use", model="llama") == 1
                with pytest.raises(openai.RateLimitError) as err:
                    cl.chat.completions.create(model="llama", messages=[{"role": "user", "content": "w5"}],
                                               max_tokens=2)
                assert err.value.status_code == 429 and int(err.value.response.headers["Retry-After"]) >= 1
                assert err.value.body["code"] == "queue_full"
                closed = time.monotonic()
            del stream
        # The client is gone: the slot must be free long before the 2000 tokens (> 3 s) would be done.
        while live.metric("trtcompile_slots_in_use", model="llama") != 0:
            assert time.monotonic() - closed < 1.0, "the disconnected stream still holds its slot"
            time.sleep(0.02)
        reply = cl.chat.completions.create(model="llama", messages=[{"role": "user", "content": "w5"}], max_tokens=2)
        assert reply.usage.completion_tokens >= 1  # the next request is admitted

        body.update(max_tokens=800, stream_options={"include_usage": True})
        with httpx.Client(timeout=60) as http:
            with http.stream("POST", f"{live.url}/v1/chat/completions", json=body, headers=headers) as draining:
                stream = events(draining)
                received = [next(stream)]
                live.proc.send_signal(signal.SIGTERM)
                received += list(stream)
        assert received[-2]["choices"][0]["finish_reason"] == "length"
        assert received[-1]["usage"]["completion_tokens"] == 800
        text = "".join(e["choices"][0]["delta"].get("content", "") for e in received[:-1])
        assert text == greedy(runtime_model, hf_tokenizer, chat_ids(hf_tokenizer, LONG_PROMPT), 800)[0]
        assert live.proc.wait(30) == 0
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"{live.url}/health")
    finally:
        live.stop()
