"""Layout nodes on the real host: rule-based and LLM planning, JSON input, preview; the API key stays secret."""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import torch
from comfy_inprocess import call_node

from r2moe_testkit.banks import add_random_concept

SECRET = "sk-host-test-SECRET-9876543210"
KEY_ENV = "R2MOE_HOST_TEST_KEY"
PROMPT = "<dog1> and <cat1> playing on a beach at sunset"
ANSWER = {
    "background": "a beach at sunset",
    "regions": [
        {"prompt": "a <dog1> dog", "box": [0.05, 0.1, 0.45, 0.9], "tokens": ["<dog1>"]},
        {"prompt": "a <cat1> cat", "box": [0.55, 0.1, 0.95, 0.9], "tokens": ["<cat1>"]},
    ],
}


@pytest.fixture(scope="module")
def bank(host, tiny):
    empty = call_node("R2MoENewBank", model=tiny[0], rank=4, top_k=3, prune_threshold=0.4, distill_lambda=1e-5)[0]
    with_dog = add_random_concept(host.core, empty, "dog", "<dog1>", seed=1)
    return add_random_concept(host.core, with_dog, "cat", "<cat1>", seed=2)


def plan(bank, planner="rule-based", width=512, height=384, **llm):
    return call_node(
        "R2MoELayoutPlanner", prompt=PROMPT, bank=bank, width=width, height=height, planner=planner, seed=0, **llm
    )


def test_rule_based_planner_gives_a_valid_layout_for_the_banks_concepts(host, bank):
    layout, text = plan(bank)
    assert isinstance(layout, host.core.Layout) and (layout.width, layout.height) == (512, 384)
    assert [r.tokens for r in layout.regions] == [("<dog1>",), ("<cat1>",)]
    assert host.core.validate_layout(layout, ["<dog1>", "<cat1>"]) == layout
    assert host.core.layout_from_json(text) == layout
    assert call_node("R2MoELayoutFromJSON", layout_json=text, bank=bank)[0] == layout


def test_planner_refuses_a_canvas_that_is_not_a_multiple_of_8(host, bank):
    with pytest.raises(host.core.InvalidInputError, match="multiple of 8"):
        plan(bank, width=500)


@pytest.mark.parametrize(
    "text",
    [
        '{"width": 512, "height": 512,',
        json.dumps({"width": 512, "height": 512, "background": "", "regions": [{"prompt": "x", "box": [0, 0, 2, 1]}]}),
        json.dumps({"width": 512, "height": 512, "background": "", "regions": [], "negative": "ugly"}),
    ],
)
def test_from_json_rejects_bad_layouts_with_the_validators_message(host, text):
    with pytest.raises(host.core.InvalidInputError) as expected:
        host.core.layout_from_json(text)
    with pytest.raises(host.core.InvalidInputError) as got:
        call_node("R2MoELayoutFromJSON", layout_json=text)
    assert str(got.value) == str(expected.value) and str(got.value).startswith("Invalid layout")


def test_from_json_with_a_bank_rejects_unknown_tokens(host, bank):
    region = {"prompt": "a <owl7>", "box": [0, 0, 1, 1]}
    text = json.dumps({"width": 512, "height": 512, "background": "", "regions": [region]})
    assert call_node("R2MoELayoutFromJSON", layout_json=text)[0].regions[0].tokens == ("<owl7>",)
    with pytest.raises(host.core.InvalidInputError, match="'<owl7>' is not a known concept token"):
        call_node("R2MoELayoutFromJSON", layout_json=text, bank=bank)


def test_preview_draws_the_canvas_and_one_mask_per_region(bank):
    layout, _ = plan(bank, width=256, height=192)
    image, masks = call_node("R2MoELayoutPreview", layout=layout)
    assert image.shape == (1, 192, 256, 3) and image.dtype == torch.float32
    assert masks.shape == (2, 192, 256)
    for mask, region in zip(masks, layout.regions, strict=True):
        x0, y0, x1, y1 = region.box
        assert mask[int((y0 + y1) / 2 * 192), int((x0 + x1) / 2 * 256)] == 1 and mask[0, 0] == 0
    x0, y0 = layout.regions[0].box[:2]
    edge = image[0, int((y0 + layout.regions[0].box[3]) / 2 * 192), int(x0 * 256) + 1]
    assert not torch.allclose(edge, image[0, 2, 2]), "the box outline must be drawn"
    photos = torch.rand(2, 64, 80, 3)
    over, _ = call_node("R2MoELayoutPreview", layout=layout, image=photos)
    assert over.shape == (2, 192, 256, 3) and not torch.equal(over[0], over[1])


class _Server:
    """A local OpenAI-compatible chat endpoint that answers ANSWER and records requests."""

    def __init__(self) -> None:
        self.requests: list[dict] = []
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                owner.requests.append({"headers": {k.lower(): v for k, v in self.headers.items()}, "body": body})
                message = {"role": "assistant", "content": json.dumps(ANSWER)}
                payload = {
                    "id": "c", "object": "chat.completion", "created": 0, "model": "m",
                    "choices": [{"index": 0, "message": message, "finish_reason": "stop"}],
                }
                data = json.dumps(payload).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.02,), daemon=True)


@pytest.fixture
def server(monkeypatch) -> Iterator[_Server]:
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    srv = _Server()
    srv.thread.start()
    yield srv
    srv.httpd.shutdown()
    srv.httpd.server_close()


def test_llm_planner_uses_the_key_from_the_env_and_never_shows_it(host, bank, server, monkeypatch, caplog):
    monkeypatch.setenv(KEY_ENV, SECRET)
    caplog.set_level(logging.DEBUG)
    inputs = {"base_url": server.url, "model": "test-model", "api_key_env": KEY_ENV, "timeout_s": 10.0}
    layout, text = plan(bank, planner="llm", **inputs)
    assert [r.prompt for r in layout.regions] == ["a <dog1> dog", "a <cat1> cat"]
    assert server.requests[0]["headers"]["authorization"] == f"Bearer {SECRET}", "the key must reach the server"
    assert SECRET not in json.dumps(inputs) and SECRET not in text and SECRET not in repr(layout)
    assert all(SECRET not in record.getMessage() for record in caplog.records)
    again, _ = plan(bank, planner="llm", **inputs)
    assert again == layout and len(server.requests) == 1, "a repeated plan comes from the cache"
    cache = host.base_dir / "user" / "__r2moe" / "planner_cache"
    cached = [p.read_text() for p in cache.glob("*.json")]
    assert cached and all(SECRET not in c for c in cached)


def test_a_key_pasted_into_api_key_env_is_refused_without_echoing_it(host, bank, server):
    with pytest.raises(host.core.InvalidInputError) as info:
        plan(bank, planner="llm", base_url=server.url, model="test-model", api_key_env=SECRET)
    assert "NAME of an environment variable" in str(info.value) and SECRET not in str(info.value)
    assert not server.requests
