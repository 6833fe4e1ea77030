"""yume-data recaption: windows, frames, prompts, validation, the captioner backends against
real local servers (a fault-injecting test server; ``transformers serve`` with the tiny
InternVL when it can run here), the server launcher, and the stage end to end on Ray.

Run as a script, this file is the test server: ``python tests/test_recaption.py --port P
[--delay S]``. It answers ``/health``, ``/v1/models`` and ``/v1/chat/completions``; what a
chat request gets is chosen by ``MODE:<mode>`` in its text (``ok``, ``500-once``,
``429-once``, ``slow-once``, ``truncated``, ``malformed``, ``empty``, ``length``, ``camera``,
``die``), "-once" modes failing only the first time a given text is seen.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import shutil
import signal
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

ROOT = Path(__file__).resolve().parents[1]
SERVER = [sys.executable, str(Path(__file__).resolve()), "--port", "{port}"]

GOOD = (
    "A woman crosses the street with a red umbrella while two cyclists ride past her, and "
    "the traffic light at the corner turns from green to red as a bus pulls away."
)


# ---- the test server ------------------------------------------------------------------------


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body are two writes: no 40 ms delayed-ACK stall
    seen: dict[str, int] = {}
    lock = threading.Lock()
    delay = 0.0

    def log_message(self, *args) -> None:  # quiet
        pass

    def _send(self, status: int, body: bytes, ctype: str = "application/json", **headers) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        for k, v in headers.items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:  # noqa: N802
        if self.path == "/health":
            self._send(200, b'{"status":"ok"}')
        elif self.path == "/v1/models":
            self._send(200, json.dumps({"data": [{"id": "test-internvl"}]}).encode())
        else:
            self._send(404, b"{}")

    def do_POST(self) -> None:  # noqa: N802
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        content = body["messages"][0]["content"]
        text = " ".join(p["text"] for p in content if p["type"] == "text")
        images = sum(p["type"] == "image_url" for p in content)
        assert all(
            p["image_url"]["url"].startswith("data:image/jpeg;base64,")
            for p in content
            if p["type"] == "image_url"
        )
        mode = (re.search(r"MODE:([a-z0-9-]+)", text) or [None, "ok"])[1]
        with self.lock:
            n = self.seen[text] = self.seen.get(text, 0) + 1
        if self.delay:
            time.sleep(self.delay)
        if mode == "die":
            os._exit(1)
        if mode.endswith("-once") and n == 1:
            mode = mode.removesuffix("-once")
            if mode == "500":
                return self._send(500, b'{"error":"boom"}')
            if mode == "429":
                return self._send(429, b'{"error":"slow down"}', **{"Retry-After": "0"})
            if mode == "slow":
                time.sleep(1.5)
        if mode == "truncated":
            return self._send(200, b'{"choices": [{"message": {"content": "A wo')
        if mode == "malformed":
            return self._send(200, b'{"result": "no choices here"}')
        answer = {"empty": "", "camera": GOOD + " The camera pans left."}.get(mode, GOOD)
        finish = "length" if mode == "length" else "stop"
        reply = {
            "choices": [{"message": {"role": "assistant", "content": answer},
                         "finish_reason": finish}],
            "usage": {"prompt_tokens": 256 * images + len(text.split()), "completion_tokens": 30},
        }  # fmt: skip
        self._send(200, json.dumps(reply).encode())


def serve(port: int, delay: float = 0.0) -> None:
    _Handler.delay = delay

    class Server(ThreadingHTTPServer):
        daemon_threads = True
        request_queue_size = 128  # 32 clients connect at once

    Server(("127.0.0.1", port), _Handler).serve_forever()


# ---- fixtures -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def server():
    from model.backends.launcher import ServerLauncher

    with ServerLauncher(SERVER, startup_timeout=60) as launcher:
        yield launcher


def _frames(n: int = 8) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 255, (n, 32, 32, 3), dtype=np.uint8)


def _client(server, **kw):
    from model.backends import load

    kw = {"timeout": 1.0, "retries": 2, "backoff": 0.01, "max_in_flight": 8} | kw
    return load("captioner", f"openai:{server.base_url}", **kw)


# ---- pure parts -----------------------------------------------------------------------------


def test_windows_and_frame_choice():
    from curation.recaption import Window, caption_windows, choose_frames

    assert caption_windows(48, 16.0, 0) == [Window(0, 0, 47)]
    # 2 s windows of 32 frames: 100 frames = 32+32+36 (a 4-frame remainder joins the last)
    assert [(w.start, w.end) for w in caption_windows(100, 16.0, 2.0)] == [
        (0, 31), (32, 63), (64, 99)
    ]  # fmt: skip
    assert [(w.start, w.end) for w in caption_windows(48, 16.0, 2.0)] == [(0, 31), (32, 47)]
    # segment midpoints: 80 frames in 8 segments of 10 -> 5, 15, ..., 75
    assert choose_frames(Window(0, 0, 79), 8) == [5, 15, 25, 35, 45, 55, 65, 75]
    assert choose_frames(Window(1, 32, 63), 4) == [36, 44, 52, 60]
    assert choose_frames(Window(0, 0, 4), 8) == [0, 1, 2, 3, 4]


def test_prompt_image_tokens_are_frames_times_tokens_per_frame():
    from curation.recaption import IMAGE, PROMPTS, build_prompt, expand_image_tokens

    prompt = build_prompt(8, "event-v1")
    assert prompt.startswith(f"Frame1: {IMAGE}\nFrame2: {IMAGE}\n")
    assert prompt.count(IMAGE) == 8 and prompt.endswith(PROMPTS["event-v1"])
    expanded = expand_image_tokens(prompt, 256)
    assert expanded.count("<IMG_CONTEXT>") == 8 * 256 and expanded.count("<img>") == 8
    with pytest.raises(ValueError, match="unknown prompt version"):
        build_prompt(8, "nope")

    from model.backends import load

    tiny = load("captioner", "tiny-random")
    ids = tiny.tok(tiny.chat_text(build_prompt(8, "event-v1")))["input_ids"]
    assert ids.count(tiny.tok.context_image_token_id) == 8 * tiny.tokens_per_image == 32
    res = tiny.submit(tiny.prepare(_frames()), build_prompt(8, "event-v1"), 7).result()
    again = tiny.submit(tiny.prepare(_frames()), build_prompt(8, "event-v1"), 7).result()
    assert res.text == again.text and res.output_tokens == 48 and tiny.tiny_random
    assert res.prompt_tokens == len(ids)


def test_openai_content_places_images_at_the_placeholders():
    from curation.recaption import build_prompt
    from model.backends.captioner_openai import chat_content

    content = chat_content(build_prompt(2, "event-v1"), ["data:a", "data:b"])
    kinds = [p["type"] for p in content]
    assert kinds == ["text", "image_url", "text", "image_url", "text"]
    assert content[0]["text"] == "Frame1: " and content[2]["text"] == "Frame2: "
    assert content[1]["image_url"] == {"url": "data:a", "max_dynamic_patch": 1}
    with pytest.raises(ValueError, match="placeholders"):
        chat_content(build_prompt(2, "event-v1"), ["data:a"])


@pytest.mark.parametrize(
    ("text", "finish", "reason"),
    [
        (GOOD, "stop", None),
        ("", "stop", "empty_caption"),
        (GOOD, "length", "truncated_caption"),
        ("A car.", "stop", "caption_too_short"),
        (GOOD * 20, "stop", "caption_too_long"),
        (GOOD + " The camera pans to the left.", "stop", "camera_wording"),
        (
            "Eine Frau überquert die Straße mit einem roten Schirm, zwei Radfahrer fahren vorbei.",
            "stop",
            "wrong_language",
        ),  # fmt: skip
        (
            "一个女人撑着红伞穿过街道，两个骑自行车的人从她身边经过，路口的红绿灯变成了红色。" * 2,
            "stop",
            "wrong_language",
        ),  # fmt: skip
    ],
)
def test_validation(text, finish, reason):
    from curation.recaption import Limits, validate_caption

    assert validate_caption(text, finish, Limits())[0] == reason


def test_validation_for_tiny_random_skips_language_and_truncation_only():
    from curation.recaption import Limits, validate_caption

    tiny = Limits(min_chars=8, check_language=False, check_truncation=False)
    assert validate_caption("q\x14\x15 3;(\r v0 ab", "length", tiny)[0] is None
    assert validate_caption("", "length", tiny)[0] == "empty_caption"
    assert validate_caption("xx the camera zooms", "length", tiny)[0] == "camera_wording"


# ---- the openai backend against the test server --------------------------------------------


def test_openai_backend_answers_and_every_fault_path(server):
    from model.backends.captioner_openai import CaptionError

    client = _client(server)
    try:
        assert client.model == "test-internvl"
        urls = client.prepare(_frames(8))
        prompt = "".join(f"Frame{i + 1}: <image>\n" for i in range(8))
        ok = client.submit(urls, prompt + "Describe. MODE:ok", 0).result()
        assert ok.text == GOOD and ok.finish_reason == "stop" and ok.retries == 0
        assert ok.prompt_tokens >= 8 * 256 and ok.output_tokens == 30
        for mode in ("500-once", "429-once", "slow-once"):  # a counted retry, then the answer
            res = client.submit(urls, f"{prompt}Describe. MODE:{mode}", 0).result()
            assert res.text == GOOD and res.retries == 1, mode
        for mode, reason in [("truncated", "malformed_answer"), ("malformed", "malformed_answer")]:
            with pytest.raises(CaptionError) as err:
                client.submit(urls, f"{prompt}Describe. MODE:{mode}", 0).result()
            assert err.value.reason == reason, mode
        assert client.submit(urls, prompt + "MODE:empty", 0).result().text == ""
        assert client.submit(urls, prompt + "MODE:length", 0).result().finish_reason == "length"
        assert client.transport_retries == 3 + 2  # truncated JSON is retried, a wrong shape not
    finally:
        client.close()
    dead = _client(server, retries=1)
    dead.http.port = 1  # nothing listens there
    dead._model = "x"
    with pytest.raises(CaptionError) as err:
        dead.submit([], "MODE:ok", 0).result()
    assert err.value.reason == "server_unreachable"
    dead.close()


def test_openai_backend_keeps_many_requests_in_flight(tmp_path):
    from model.backends.launcher import ServerLauncher

    with ServerLauncher([*SERVER, "--delay", "0.2"], startup_timeout=60) as slow:
        client = _client(slow, max_in_flight=16, timeout=5.0)
        urls = client.prepare(_frames(1))
        client.model  # noqa: B018
        t0 = time.perf_counter()
        futures = [client.submit(urls, f"Frame1: <image>\nn{i}", 0) for i in range(32)]
        assert all(f.result().text == GOOD for f in futures)
        took = time.perf_counter() - t0
        client.close()
    assert took < 32 * 0.2 / 4, took  # serial would take 6.4 s; 16 in flight ~0.4 s


# ---- the launcher ---------------------------------------------------------------------------


def test_launcher_start_health_restart_after_kill_and_stop():
    from model.backends.launcher import LaunchError, ServerLauncher

    launcher = ServerLauncher(SERVER, startup_timeout=60).start()
    try:
        assert launcher.healthy()
        assert not launcher.ensure()  # alive: nothing to do
        os.killpg(launcher.proc.pid, signal.SIGKILL)
        launcher.proc.wait(10)
        assert not launcher.healthy()
        assert launcher.ensure() and launcher.restarts == 1 and launcher.healthy()
    finally:
        launcher.stop()
    assert not launcher.alive()
    with pytest.raises(LaunchError, match="exited"):
        ServerLauncher([sys.executable, "-c", "raise SystemExit(3)"], startup_timeout=20).start()


def test_lmdeploy_backend_launches_its_server_and_survives_it_dying():
    """The lmdeploy backend with the test server in lmdeploy's place: the command template
    is filled in, the server launched and health-checked, and a server that dies mid-run
    is restarted and the request retried."""
    from model.backends import load

    template = f"{{python}} {Path(__file__).resolve()} --port {{port}} --model {{model}}"
    client = load(
        "captioner", "lmdeploy:/weights/InternVL3-78B", server_command_template=template,
        python=sys.executable, startup_timeout=60, retries=3, backoff=0.01, timeout=5.0,
    )  # fmt: skip
    try:
        assert client.family == "lmdeploy" and client.launcher.healthy()
        assert "/weights/InternVL3-78B" in client.launcher.command
        urls = client.prepare(_frames(2))
        prompt = "Frame1: <image>\nFrame2: <image>\nDescribe."
        assert client.submit(urls, prompt, 0).result().text == GOOD
        first_pid = client.launcher.proc.pid
        with pytest.raises(Exception):  # noqa: B017 (the server dies on this one)
            client.submit(urls, prompt + " MODE:die", 0).result()
        res = client.submit(urls, prompt, 1).result()  # the server was restarted
        assert res.text == GOOD and client.launcher.restarts >= 1
        assert client.launcher.proc.pid != first_pid
    finally:
        client.close()
    assert not client.launcher.alive()


# ---- transformers serve with the tiny InternVL (a real OpenAI-compatible server) ------------

_PROCESSOR = '''
import re

from transformers import InternVLProcessor
from transformers.processing_utils import ProcessorMixin


class NoVideoInternVLProcessor(InternVLProcessor):
    """InternVLProcessor without a video processor (torchvision is not installed)."""

    attributes = ["image_processor", "tokenizer"]

    def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
        kwargs.pop("video_processor", None)
        self.image_seq_length = kwargs.pop("image_seq_length", 4)
        ProcessorMixin.__init__(self, image_processor, tokenizer, chat_template=chat_template)
        self.start_image_token = tokenizer.start_image_token
        self.end_image_token = tokenizer.end_image_token
        self.start_image_token_id = tokenizer.start_image_token_id
        self.end_image_token_id = tokenizer.end_image_token_id
        self.image_token = tokenizer.context_image_token
        self.video_token = tokenizer.video_token
        self.image_token_id = tokenizer.context_image_token_id
        self.multimodal_pattern = re.compile(
            f"(?P<image>{re.escape(self.image_token)})|(?P<video>{re.escape(self.video_token)})"
        )
'''

_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
    "{% for part in message['content'] %}{% if part['type'] == 'image' %}<IMG_CONTEXT>\n"
    "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}{% endfor %}{% endif %}"
    "<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def _save_tiny_internvl(folder: Path) -> None:
    """The tiny-random InternVL saved as a transformers folder ``transformers serve`` loads."""
    from transformers import GotOcr2ImageProcessorPil

    from model.backends.captioner_transformers import tiny_model, tiny_tokenizer

    tok = tiny_tokenizer()
    tok.chat_template = _TEMPLATE
    model = tiny_model(len(tok), tok.context_image_token_id, seed=0)
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    GotOcr2ImageProcessorPil(
        size={"height": 56, "width": 56}, crop_to_patches=False, max_patches=1
    ).save_pretrained(folder)
    (folder / "processing_novideo.py").write_text(_PROCESSOR)
    config = {"processor_class": "NoVideoInternVLProcessor", "image_seq_length": 4,
              "auto_map": {"AutoProcessor": "processing_novideo.NoVideoInternVLProcessor"}}  # fmt: skip
    (folder / "processor_config.json").write_text(json.dumps(config))
    (folder / "chat_template.jinja").write_text(_TEMPLATE)


@pytest.mark.skipif(shutil.which("transformers", path=str(ROOT / ".venv/bin")) is None,
                    reason="transformers CLI not installed")  # fmt: skip
def test_openai_backend_against_transformers_serve_with_tiny_internvl(tmp_path):
    pytest.importorskip("fastapi")
    pytest.importorskip("uvicorn")
    pytest.importorskip("openai")
    from model.backends.launcher import ServerLauncher

    folder = tmp_path / "tiny-internvl"
    _save_tiny_internvl(folder)
    cli = str(ROOT / ".venv/bin/transformers")
    command = [cli, "serve", str(folder), "--device", "cpu", "--host", "{host}",
               "--port", "{port}", "--trust-remote-code"]  # fmt: skip
    env = {"HF_MODULES_CACHE": str(tmp_path / "modules"), "HF_HUB_OFFLINE": "1"}
    log = tmp_path / "serve.log"
    try:
        launcher = ServerLauncher(command, startup_timeout=120, env=env, log=log).start()
    except Exception as e:  # the serve CLI's flags differ between versions: say why
        pytest.skip(f"transformers serve did not start here: {e}"[:500])
    try:
        client = _client(launcher, timeout=60.0, max_tokens=8, model=str(folder))
        res = client.submit(client.prepare(_frames(8)), "".join(
            f"Frame{i + 1}: <image>\n" for i in range(8)) + "Describe.", 0).result()  # fmt: skip
        assert isinstance(res.text, str) and res.prompt_tokens >= 8 * 4, res
        client.close()
    finally:
        launcher.stop()


# ---- the stage end to end -------------------------------------------------------------------


def _shards(root: Path, keys_frames: dict[str, int], dataset: str = "sekai-real", **kw) -> None:
    from curation.dataroot import DataRoot
    from curation.shards import write_shards
    from tests.test_shards import make_mp4, make_sample

    samples = []
    for key, frames in keys_frames.items():
        mp4 = b"not an mp4 at all" if key.startswith("bad") else make_mp4(frames, 64, 48)
        samples.append((key, make_sample(key, frames, mp4=mp4)))
    write_shards(samples, DataRoot.at(root).shards(dataset), dataset, **kw)


def _config(**kw):
    from curation.stages.recaption import RecaptionConfig

    base = dict(captioner="tiny-random", frames_per_window=4, frame_size=56, window_seconds=1.0,
                min_frames=4, timings=False, batch=8)  # fmt: skip
    return RecaptionConfig(**(base | kw))


def _opts(root: Path, **kw):
    from jobs.runner import RunOptions

    return RunOptions(root=root, progress=False, **kw)


def test_tiny_random_end_to_end_on_ray_then_verify_and_the_reader(ray_local, tmp_path):
    from curation.dataroot import DataRoot
    from curation.shard_reader import make_window
    from curation.shards import iter_shard, read_index, verify_dataset
    from curation.stages.recaption import RecaptionStage
    from jobs.runner import run_stage

    root = tmp_path / "data"
    # clip_a: 32 frames at 16 fps = two 1 s windows; clip_b: 20 frames = one window (a
    # 4-frame remainder joins it); short: 3 frames (too few); bad: not an mp4
    _shards(root, {"clip_a": 32, "clip_b": 20, "short": 3, "bad_mp4": 16}, max_samples=2)
    s = run_stage(RecaptionStage, _config(), _opts(root))
    assert s["accounted"] and s["inputs"] == 5 and s["accepted"] == 3
    assert s["rejects_by_reason"] == {"too_few_frames": 1, "undecodable_clip": 1}
    assert s["tiny_random"] and any("tiny-random" in n for n in s["notes"])
    data = DataRoot.at(root)
    rows = pq.read_table(data.manifest("recaption")).to_pylist()
    assert [r["key"] for r in rows] == [
        "sekai-real/clip_a/w0/event-v1", "sekai-real/clip_a/w1/event-v1",
        "sekai-real/clip_b/w0/event-v1",
    ]  # fmt: skip
    a0, a1, b0 = rows
    assert (a0["frame_start"], a0["frame_end"], a1["frame_start"], a1["frame_end"]) == (
        0, 15, 16, 31,
    )  # fmt: skip
    assert a0["frames_shown"] == [2, 6, 10, 14] and (b0["frame_start"], b0["frame_end"]) == (0, 19)
    assert all(r["tiny_random"] and r["backend"] == "tiny-random" for r in rows)
    assert all(r["prompt_version"] == "event-v1" and r["caption"] for r in rows)
    assert a0["prompt_tokens"] > 4 * 4 and a0["seed"] != a1["seed"]

    out = data.shards("sekai-real-captioned")
    report = verify_dataset(out, decode="full")
    assert report["ok"], report["errors"]
    assert report["samples_indexed"] == 2 and set(read_index(out)["key"].to_pylist()) == {
        "clip_a", "clip_b",
    }  # fmt: skip
    assert all(read_index(out)["tiny_random"].to_pylist())
    samples = {k: m for shard in sorted(out.glob("*.tar")) for k, m in iter_shard(shard)}
    meta = json.loads(samples["clip_a"]["json"])
    wins = meta["captions"]["event_windows"]
    assert [(w["start"], w["end"]) for w in wins] == [(0, 15), (16, 31)]
    assert meta["captions"]["event"] == wins[0]["text"] == a0["caption"]
    assert meta["provenance"]["recaption"]["prompt_version"] == "event-v1"
    source = {k: m for shard in sorted(data.shards("sekai-real").glob("*.tar"))
              for k, m in iter_shard(shard)}  # fmt: skip
    assert samples["clip_a"]["mp4"] == source["clip_a"]["mp4"]  # copied, not re-encoded
    assert "event_windows" not in json.loads(source["clip_a"]["json"])["captions"]  # untouched
    # the trainer's I2V event text is the caption of the window holding the prediction block
    import random

    sample = {"__key__": "clip_a", **samples["clip_a"]}
    texts = set()
    for n in range(30):
        w = make_window(sample, 4, 4, task="i2v", rng=random.Random(n))
        pred_start = w["history_frames"]  # frames of this window in clip numbering:
        texts.add(w["event_text"])
        assert w["event_text"] in (wins[0]["text"], wins[1]["text"]), pred_start
    assert texts == {wins[0]["text"], wins[1]["text"]}
    t2v = make_window(sample, 0, 4, task="t2v", rng=random.Random(0))
    assert t2v["event_text"] == meta["captions"]["scene"]

    again = run_stage(RecaptionStage, _config(), _opts(root))  # resume: nothing to do
    assert again["this_run"]["processed"] == 0 and again["accepted"] == 3
    assert verify_dataset(out)["ok"]


def test_event_window_choice_in_the_reader():
    from curation.shard_reader import _event_text

    caps = {"event_windows": [{"start": 0, "end": 15, "text": "one"},
                              {"start": 16, "end": 31, "text": "two"}]}  # fmt: skip
    assert _event_text(caps, [14, 15, 16, 17, 18]) == "two"
    assert _event_text(caps, [3, 4]) == "one"
    assert _event_text({"scene": "s", "event": None, "action": None}, [1]) == ""


def test_an_empty_mp4_or_a_bad_json_is_named_before_captioning(tmp_path):
    """A json the captioned copy could not carry (no segments) was captioned and then
    refused by the shard writer, outside the stage's rejects; a 0-byte mp4 read as
    undecodable."""
    import jobs.runner as runner
    from curation.dataroot import DataRoot
    from curation.shards import write_shards
    from curation.stages.recaption import RecaptionStage
    from tests.test_shards import LAX_CLIP, drop_field, make_mp4, make_sample

    root = DataRoot.at(tmp_path / "data")
    samples = {k: make_sample(k, 16, mp4=make_mp4(16, 64, 48)) for k in ("no_segments", "empty")}
    samples["empty"]["mp4"] = b""
    drop_field(samples["no_segments"], "segments")
    write_shards(samples.items(), root.shards("sekai-real"), "sekai-real", kind=LAX_CLIP)
    stage = RecaptionStage(_config(window_seconds=0.0), root)
    items, _ = runner.discover(stage)
    stage.setup()
    got = {o.key.split("/")[1]: (o.reason, o.detail) for o in stage.process(items).outcomes}
    assert {k: r for k, (r, _) in got.items()} == {
        "no_segments": "bad_sample_json",
        "empty": "empty_clip",
    }
    assert "'segments' is a required property" in got["no_segments"][1]


def test_old_samples_stay_valid_and_bad_spans_are_refused():
    from schemas.common import SchemaError
    from schemas.sample import validate_sample
    from tests.test_shards import make_meta

    meta = make_meta("clip", 12)
    validate_sample(meta)  # no event_windows: an older sample
    meta["captions"]["event_windows"] = [{"start": 0, "end": 11, "text": "x", "model": "m",
                                          "prompt_version": "v", "backend": "b",
                                          "tiny_random": True}]  # fmt: skip
    validate_sample(meta)
    meta["captions"]["event_windows"][0]["end"] = 12
    with pytest.raises(SchemaError, match="event_windows"):
        validate_sample(meta)


def _in_process(monkeypatch) -> None:
    """Run the runner's batches in this process (for tests that patch module state)."""
    import jobs.runner as runner
    from curation.dataroot import DataRoot

    def local(stage, batches, opts, run):
        worker = type(stage)(stage.config, DataRoot.at(stage.root))
        worker.setup()
        for batch in batches:
            runner.process_batch(worker, batch, run)

    monkeypatch.setattr(runner, "_run_on_ray", local)


def test_faults_become_rejects_or_counted_retries(server, tmp_path, monkeypatch):
    """Against the test server: a 500 and a slow answer are retried and counted, a camera
    caption is retried once then rejected, a malformed answer is rejected; the job goes on."""
    import curation.recaption as rc
    from curation.dataroot import DataRoot
    from curation.stages.recaption import RecaptionStage
    from jobs.runner import run_stage

    _in_process(monkeypatch)
    for mode in ("500-once", "slow-once", "camera", "malformed", "empty"):
        monkeypatch.setitem(rc.PROMPTS, f"t-{mode}", f"Describe the events. MODE:{mode}")
    root = tmp_path / "data"
    _shards(root, {"clip_a": 16})
    cfg = _config(captioner=f"openai:{server.base_url}", window_seconds=0.0, timeout=1.0,
                  request_retries=2)  # fmt: skip
    results = {}
    for mode in ("500-once", "slow-once", "camera", "malformed", "empty"):
        s = run_stage(RecaptionStage, dataclasses.replace(cfg, prompt_version=f"t-{mode}"),
                      _opts(root))  # fmt: skip
        results[mode] = s
    rows = {r["prompt_version"]: r for r in
            pq.read_table(DataRoot.at(root).manifest("recaption")).to_pylist()}  # fmt: skip
    assert rows["t-500-once"]["transport_retries"] == 1
    assert rows["t-slow-once"]["transport_retries"] == 1
    assert rows["t-500-once"]["model"] == "test-internvl"
    rejects = {r["key"].rsplit("/", 1)[1]: r for r in
               pq.read_table(DataRoot.at(root).rejects("recaption")).to_pylist()}  # fmt: skip
    assert rejects["t-camera"]["reason"] == "camera_wording"
    assert "first try: camera_wording" in rejects["t-camera"]["detail"]
    assert rejects["t-malformed"]["reason"] == "malformed_answer"
    assert rejects["t-empty"]["reason"] == "empty_caption"
    # every version is recorded; the shards carry the current one, and say so
    last = results["empty"]
    assert last["prompt_versions_recorded"] == {"t-500-once": 1, "t-slow-once": 1}
    assert last["prompt_version_carried"] == "t-empty"


def test_new_prompt_version_keeps_old_captions_and_rebuilds_the_captioned_shards(
    tmp_path, monkeypatch
):
    import curation.recaption as rc
    from curation.dataroot import DataRoot
    from curation.shards import iter_shard, verify_dataset
    from curation.stages.recaption import RecaptionStage
    from jobs.runner import run_stage

    _in_process(monkeypatch)
    monkeypatch.setitem(rc.PROMPTS, "event-v2", "Say what happens in the frames.")
    root = tmp_path / "data"
    _shards(root, {"clip_a": 16, "clip_b": 16})
    cfg = _config(window_seconds=0.0)
    first = run_stage(RecaptionStage, cfg, _opts(root))
    assert first["accepted"] == 2 and first["datasets"]["sekai-real"]["rebuilt"] is False
    second = run_stage(RecaptionStage, dataclasses.replace(cfg, prompt_version="event-v2"),
                       _opts(root))  # fmt: skip
    assert second["this_run"]["processed"] == 2 and second["accepted"] == 4
    assert second["prompt_versions_recorded"] == {"event-v1": 2, "event-v2": 2}
    assert second["prompt_version_carried"] == "event-v2"
    assert second["datasets"]["sekai-real"]["rebuilt"] is True
    out = DataRoot.at(root).shards("sekai-real-captioned")
    assert verify_dataset(out)["ok"]
    metas = [json.loads(m["json"]) for s in out.glob("*.tar") for _, m in iter_shard(s)]
    assert {m["captions"]["event_windows"][0]["prompt_version"] for m in metas} == {"event-v2"}
    assert not list(out.parent.glob(".*"))  # no rebuild leftovers
    # a third run of v2: nothing to do, nothing rebuilt
    third = run_stage(RecaptionStage, dataclasses.replace(cfg, prompt_version="event-v2"),
                      _opts(root))  # fmt: skip
    assert third["this_run"]["processed"] == 0 and not third["datasets"]["sekai-real"]["rebuilt"]


# ---- the stage contract case (registered in tests/test_stage_contract.py) -------------------


class RecaptionCase:
    """Two 16-frame clips and a 3-frame clip (too_few_frames) in two sekai-real shards; the
    tiny-random captioner, one window per clip, timings off (so reruns are byte-identical).

    The inputs are the root's clips (``<shards folder>/<key>#w<window>``), as for
    encode-latents: the killed-run check must copy ``shards/`` into the clean root for this
    stage too, and a repack of the shards moves no input."""

    follows_moves = True

    from curation.stages.recaption import RecaptionStage as stage

    def _write(self, tmp: Path, max_samples: int) -> None:
        _shards(tmp / "data", {"clip_0": 16, "clip_1": 16, "short": 3}, max_samples=max_samples)

    def build(self, tmp: Path):
        self._write(tmp, max_samples=2)  # clip_0 clip_1 | short
        return _config(window_seconds=0.0), {"too_few_frames": 1}

    def changed(self, config):
        return dataclasses.replace(config, frames_per_window=2)

    def more(self, tmp: Path, config):
        from curation.dataroot import DataRoot
        from curation.shards import write_shards
        from tests.test_shards import make_mp4, make_sample

        folder = DataRoot.at(tmp / "data").shards("sekai-real")
        write_shards([("extra_0", make_sample("extra_0", 16, mp4=make_mp4(16, 64, 48)))],
                     folder, "sekai-real")  # fmt: skip
        return config, 1

    def moved(self, tmp: Path, config):
        """The same clips repacked: clip_1 now lives in another shard."""
        from curation.dataroot import DataRoot

        shutil.rmtree(DataRoot.at(tmp / "data").shards("sekai-real"))
        self._write(tmp, max_samples=1)
        return config

    def empty(self, tmp: Path):
        from curation.dataroot import DataRoot
        from curation.manifest import write_table
        from curation.shards import INDEX_NAME
        from schemas.sample import SHARD_INDEX_SCHEMA

        folder = DataRoot.at(tmp / "data").shards("sekai-real")
        folder.mkdir(parents=True)
        write_table(SHARD_INDEX_SCHEMA.empty_table(), folder / INDEX_NAME, SHARD_INDEX_SCHEMA)
        return _config()

    def relative(self, config, base: Path):
        return config  # no path fields: the root (and so the inputs) are made absolute

    not_applicable = {
        "empty_text": "the stage reads no input text (the json's captions are copied); the "
        "text it checks is the model's answer: empty_caption (test_validation)",
        "long_text": "the stage reads no input text; an answer over max_chars is "
        "caption_too_long (test_validation)",
    }

    def damage(self, tmp: Path, config):
        """Clips of shards that were damaged after indexing (garbage, cut in half), a 0-byte
        mp4 and a json without a required field (test_encode_latents.damaged_clip_shards)."""
        from curation.dataroot import DataRoot
        from tests.test_encode_latents import damaged_clip_shards
        from tests.test_shards import make_mp4, make_sample

        good = make_mp4(16, 64, 48)
        folder = DataRoot.at(tmp / "data").shards("sekai-real")
        damaged_clip_shards(
            folder, lambda k, mp4: make_sample(k, 16, mp4=good if mp4 is None else mp4)
        )
        return config, {
            "sekai-real/dmg_garbage/w0/event-v1": ("garbage", "unreadable_shard"),
            "sekai-real/dmg_empty/w0/event-v1": ("empty", "empty_clip"),
            "sekai-real/dmg_cut/w0/event-v1": ("truncated", "unreadable_shard"),
            "sekai-real/dmg_nofield/w0/event-v1": ("missing_field", "bad_sample_json"),
        }

    def vanish(self, tmp: Path, items: list[dict]) -> dict:
        """The shard of a discovered clip is deleted before a worker reads it."""
        item = next(it for it in items if it["sample"] == "dmg_gone")
        Path(item["shard"]).unlink()
        return {item["key"]: ("vanished", "missing_shard")}


def test_contract_case_shape():
    case = RecaptionCase()
    for name in ("build", "changed", "more", "moved", "empty", "relative"):
        assert callable(getattr(case, name))
    assert case.stage.name == "recaption"


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="the recaption tests' OpenAI-compatible server")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--delay", type=float, default=0.0)
    parser.add_argument("--model", default="test-internvl")
    args = parser.parse_args()
    serve(args.port, args.delay)
