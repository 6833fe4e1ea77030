"""The screening page: its server (range requests, origin checks, keys only from the events
manifest, decisions and claims through the decisions manifest) and the page itself in a real
headless Chromium (the video plays; keys keep, reject, undo and annotate; a reload resumes;
two screeners and a CSV batch never share a video; an import shows up in the open page; the
kept videos reach shards/event).
"""

from __future__ import annotations

import csv
import hashlib
import http.client
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from curation.dataroot import DataRoot
from curation.manifest import write_table
from curation.screening.decisions import (
    CLEARED,
    active_claims,
    append_decisions,
    latest_decisions,
    read_decisions,
)
from curation.screening.publish import write_event_shards
from curation.screening.server import (
    Conflict,
    Screening,
    ScreeningServer,
    byte_range,
    make_server,
)
from curation.shards import iter_shard
from curation.video import write_mp4
from schemas.events import EVENTS_SCHEMA
from schemas.sample import SAMPLE_SCHEMA_VERSION, validate_sample

CATEGORIES = ("urban_daily_life", "sci_fi", "fantasy", "weather")
CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")


def _key(i: int) -> str:
    return "evt_" + hashlib.sha256(f"serve {i}".encode()).hexdigest()[:16]


def _clip(i: int, frames: int, size: int) -> np.ndarray:
    """A bright square crossing a gradient: moving content that decodes to real frames."""
    y, x = np.mgrid[0:size, 0:size]
    base = np.stack([x * 4, y * 4, np.full_like(x, 40 * (i % 6))], -1).astype(np.uint8)
    out = np.repeat(base[None], frames, 0)
    for t in range(frames):
        p = (t * size) // frames
        out[t, p // 2 : p // 2 + 16, p : p + 16] = 255
    return out


def build_root(path: Path, n: int = 6, frames: int = 32, size: int = 64,
               outside: Path | None = None) -> tuple[DataRoot, list[str]]:  # fmt: skip
    """A data root as the events stage leaves it: ``n`` staged event samples (H.264 mp4s,
    2 s at 16 fps, txt, valid json) and manifests/events.parquet. ``outside``: one more row
    whose path leaves the root (the server must never send it)."""
    root = DataRoot.at(path)
    staging = root.staging("event-generated")
    rows = []
    for i in range(n):
        key, cat = _key(i), CATEGORIES[i % len(CATEGORIES)]
        text = f"event {i}: lightning splits the sky over the {cat.replace('_', ' ')} scene"
        mp4 = staging / f"{key}.mp4"
        write_mp4(mp4, _clip(i, frames, size), 16.0, size, size)
        meta = {
            "schema_version": SAMPLE_SCHEMA_VERSION, "key": key, "source": "event",
            "tasks": ["t2v", "i2v"], "fps": 16.0, "frames": frames, "width": size,
            "height": size, "source_video": mp4.name, "source_fps": 16.0,
            "source_frame_range": [0, frames - 1], "keys": [], "mouse": [], "segments": [],
            "captions": {"scene": None, "event": text, "action": None},
            "scores": {"aesthetic_quality": 0.5, "total": 0.5 + i / 100}, "screening": None,
            "meta": {"category": cat, "image": f"/images/{i}.png", "pair_id": f"p{i}", "seed": i},
            "provenance": {"stage": "events", "code_version": "test", "config_hash": "x",
                           "backend": "tiny-random", "tiny_random": True, "generated": True,
                           "generator": "tiny-random"},
        }  # fmt: skip
        validate_sample(meta)
        (staging / f"{key}.txt").write_text(text)
        (staging / f"{key}.json").write_text(json.dumps(meta))
        rows.append({"key": key, "category": cat, "event_text": text, "path": str(mp4.relative_to(root.path))})  # fmt: skip
    if outside is not None:
        rows.append({"key": "evt_" + "f" * 16, "category": "weather", "event_text": "escape",
                     "path": os.path.relpath(outside, root.path)})  # fmt: skip
    full = [{**r, "pair_id": "p", "image": "/i.png", "seed": 0, "frames": frames, "fps": 16.0,
             "width": size, "height": size, "steps": 2, "guidance_scale": 5.0,
             "guidance_scale_2": None, "boundary_ratio": None, "model_id": "tiny-random",
             "tiny_random": True, "tasks": ["t2v", "i2v"], "total": 0.5,
             "total_dimensions": ["aesthetic_quality"], "scorer": "builtin 1"} for r in rows]  # fmt: skip
    write_table(
        pa.Table.from_pylist(full, schema=EVENTS_SCHEMA), root.manifest("events"), EVENTS_SCHEMA
    )
    return root, sorted(_key(i) for i in range(n))


@contextmanager
def serving(root: DataRoot, screener: str, lease_s: float = 600.0):
    """A real screening server on a free port of 127.0.0.1, in a thread."""
    server = make_server(root, screener, port=0, lease_s=lease_s)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


def _request(server: ScreeningServer, method: str, path: str, body: object = None,
             headers: dict | None = None) -> tuple[int, dict, bytes]:  # fmt: skip
    host, port = server.server_address[:2]
    conn = http.client.HTTPConnection(host, port, timeout=10)
    data = json.dumps(body).encode() if body is not None else None
    base = {"Content-Type": "application/json"} if data is not None else {}
    conn.request(method, path, body=data, headers={**base, **(headers or {})})
    r = conn.getresponse()
    out = r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()
    conn.close()
    return out


def _get(server: ScreeningServer, path: str, **headers: str) -> tuple[int, dict, bytes]:
    return _request(server, "GET", path, headers=headers)


def _post(
    server: ScreeningServer, path: str, body: object, **headers: str
) -> tuple[int, dict, bytes]:
    return _request(server, "POST", path, body, headers)


def _recorded(reply: tuple[int, dict, bytes]) -> str:
    """The decision a post recorded (asserting it succeeded)."""
    status, _, body = reply
    assert status == 200, body
    return json.loads(body)["recorded"]["decision"]


def _csv_row(key: str, decision: str, note: str | None = None) -> dict:
    """A decision as `screening import` records it (another screener, from a CSV file)."""
    return {"key": key, "decision": decision, "note": note, "screener": "carol",
            "source": "csv:batch.csv"}  # fmt: skip


@pytest.fixture(scope="module")
def videos(tmp_path_factory) -> tuple[DataRoot, list[str], Path]:
    """One root for the server tests that do not decide (videos are made once)."""
    base = tmp_path_factory.mktemp("serve")
    secret = base / "secret.mp4"
    secret.write_bytes(b"SECRET-BYTES" * 100)
    root, keys = build_root(base / "root", n=4, outside=secret)
    return root, keys, secret


# ---- the server, without a browser ------------------------------------------------------


@pytest.mark.parametrize(("header", "size", "want"), [
    ("bytes=0-99", 1000, (0, 99)), ("bytes=900-", 1000, (900, 999)),
    ("bytes=-100", 1000, (900, 999)), ("bytes=-5000", 1000, (0, 999)),
    ("bytes=990-2000", 1000, (990, 999)), ("bytes=1000-", 1000, None),
    ("bytes=50-10", 1000, None), ("bytes=-0", 1000, None),
])  # fmt: skip
def test_byte_range(header, size, want):
    assert byte_range(header, size) == want


@pytest.mark.parametrize("header", ["bytes=0-1,5-9", "items=0-5", "bytes=-", "bytes=a-b"])
def test_byte_range_refuses_what_it_does_not_serve(header):
    with pytest.raises(ValueError):
        byte_range(header, 1000)


def test_range_requests_serve_exact_slices(videos):
    root, keys, _ = videos
    data = (root.path / "clips" / "event-generated" / f"{keys[0]}.mp4").read_bytes()
    size = len(data)
    with serving(root, "ann") as server:
        status, headers, body = _get(server, f"/video/{keys[0]}")
        assert status == 200 and body == data and headers["accept-ranges"] == "bytes"
        assert headers["content-type"] == "video/mp4"
        # one kept-alive connection, as the video element uses it
        conn = http.client.HTTPConnection(*server.server_address[:2], timeout=10)
        for rng, (a, b) in [("bytes=100-199", (100, 199)), ("bytes=-64", (size - 64, size - 1)),
                            ("bytes=500-", (500, size - 1)), ("bytes=0-", (0, size - 1)),
                            ("bytes=7-7", (7, 7))]:  # fmt: skip
            conn.request("GET", f"/video/{keys[0]}", headers={"Range": rng})
            r = conn.getresponse()
            body = r.read()
            assert r.status == 206, rng
            assert r.getheader("Content-Range") == f"bytes {a}-{b}/{size}"
            assert int(r.getheader("Content-Length")) == b - a + 1 and body == data[a : b + 1]
        conn.close()
        status, headers, _ = _get(server, f"/video/{keys[0]}", Range=f"bytes={size}-")
        assert status == 416 and headers["content-range"] == f"bytes */{size}"
        status, _, body = _get(server, f"/video/{keys[0]}", Range="bytes=0-1,4-5")
        assert status == 200 and body == data  # several ranges: the whole file, as HTTP allows


def test_foreign_origins_and_hosts_are_refused(videos):
    root, keys, _ = videos
    with serving(root, "ann") as server:
        own = f"127.0.0.1:{server.server_address[1]}"
        decide = {"key": keys[0], "decision": "keep", "note": None}
        for headers in ({"Origin": "http://evil.example"}, {"Origin": "null"},
                        {"Host": f"evil.example:{server.server_address[1]}"},
                        {"Sec-Fetch-Site": "cross-site"}):  # fmt: skip
            assert _request(server, "GET", "/api/state", headers=headers)[0] == 403, headers
            assert _request(server, "GET", f"/video/{keys[0]}", headers=headers)[0] == 403
            assert _request(server, "POST", "/api/decide", decide, headers)[0] == 403, headers
        assert read_decisions(root) == []  # nothing refused was recorded
        status, _, body = _request(server, "POST", "/api/decide", headers={
            "Content-Type": "text/plain", "Origin": f"http://{own}"})  # fmt: skip
        assert status == 400 and b"JSON" in body  # a foreign form cannot post JSON unasked
        assert read_decisions(root) == []
        status, headers, page = _request(server, "GET", "/", headers={"Origin": f"http://{own}"})
        assert status == 200 and b"<video" in page
        assert "script-src 'sha256-" in headers["content-security-policy"]
        assert "frame-ancestors 'none'" in headers["content-security-policy"]
        assert b"innerHTML" not in page  # data is only ever set as text


def test_keys_never_become_paths(videos):
    root, keys, secret = videos
    with serving(root, "ann") as server:
        for path in ["/video/evt_0000000000000000", "/video/../../etc/passwd",
                     "/video/..%2F..%2Fmanifests%2Fevents.parquet", "/sheet/..%2Fsecret.mp4",
                     f"/video/{keys[0]}%2F..%2F..%2Fsecret.mp4", "/video/", "/sheet/%00",
                     "/video/evt_" + "f" * 16, "/sheet/evt_" + "f" * 16, "/etc/passwd"]:  # fmt: skip
            status, _, body = _get(server, path)
            assert status == 404, path
            assert b"SECRET" not in body
        status, _, body = _post(server, "/api/decide", {"key": "../x", "decision": "keep"})
        assert status == 404 and read_decisions(root) == []


def test_contact_sheet_is_served_as_jpeg(videos):
    root, keys, _ = videos
    with serving(root, "ann") as server:
        status, headers, body = _get(server, f"/sheet/{keys[1]}")
    assert status == 200 and headers["content-type"] == "image/jpeg"
    assert body[:3] == b"\xff\xd8\xff" and len(body) > 500


def test_an_unreadable_video_is_one_error_reply(tmp_path):
    root, keys = build_root(tmp_path, n=1, frames=4, size=16)
    (root.staging("event-generated") / f"{keys[0]}.mp4").write_bytes(b"not an mp4" * 50)
    with serving(root, "ann") as server:
        status, headers, body = _get(server, f"/sheet/{keys[0]}")
        assert status == 404 and headers["content-type"].startswith("application/json")
        assert json.loads(body)["error"].startswith(f"no contact sheet of {keys[0]}: ")
        assert _get(server, "/api/state")[0] == 200  # the server goes on


def test_decide_undo_and_claims_through_the_manifest(tmp_path):
    root, keys = build_root(tmp_path, n=4, frames=8)
    ann, bob = Screening(root, "ann"), Screening(root, "bob")
    assert ann.next()["key"] == keys[0]
    assert bob.next()["key"] == keys[1]  # ann holds keys[0]
    assert {k: c["screener"] for k, c in active_claims(root).items()} == {
        keys[0]: "ann",
        keys[1]: "bob",
    }
    with pytest.raises(Conflict, match="bob"):
        ann.decide(keys[1], "keep", None)
    with serving(root, "ann") as server:
        assert _post(server, "/api/decide", {"key": keys[1], "decision": "keep"})[0] == 409
        for bad in ({"key": keys[0], "decision": "maybe"}, {"key": keys[0], "decision": ""},
                    {"key": keys[0], "decision": "keep", "note": "x" * 2001},
                    {"key": keys[0], "decision": "keep", "note": 5}):  # fmt: skip
            assert _post(server, "/api/decide", bad)[0] == 400, bad
        keep = {"key": keys[0], "decision": " Keep ", "note": " <b>ok</b> "}
        assert _recorded(_post(server, "/api/decide", keep)) == "keep"
        assert (
            _recorded(_post(server, "/api/decide", {"key": keys[0], "decision": "reject"}))
            == "reject"
        )
        # a CSV import meanwhile: the page's next state shows it at once
        append_decisions(root, [_csv_row(keys[2], "unsure", "csv")])
        state = json.loads(_get(server, f"/api/state?key={keys[2]}")[2])
        assert state["overall"] == {"total": 4, "decided": 2, "keep": 0, "reject": 1, "unsure": 1}
        assert (state["current"]["decision"], state["current"]["decided_by"]) == ("unsure", "carol")
        assert state["claimed_by_others"] == 1  # bob's
        # undo: the decision before comes back (keep with its note), then undecided again
        assert _recorded(_post(server, "/api/undo", {})) == "keep"
        assert latest_decisions(root)[keys[0]]["note"] == "<b>ok</b>"
        assert _recorded(_post(server, "/api/undo", {})) == CLEARED
        assert keys[0] not in latest_decisions(root)
        assert _post(server, "/api/undo", {})[0] == 409  # nothing left
        nxt = json.loads(_get(server, "/api/next?dir=first")[2])["item"]
        assert nxt["key"] == keys[0] and nxt["decision"] is None  # undecided again: first
        unsure = json.loads(_get(server, "/api/next?dir=first&decision=unsure")[2])["item"]
        assert unsure["key"] == keys[2]
        assert _get(server, "/api/next?dir=sideways")[0] == 400
        cat = ann.event(keys[3])["category"]
        in_cat = json.loads(_get(server, f"/api/state?category={cat}&decision=all")[2])
        want = sum(e["category"] == cat for e in ann.events().values())
        assert in_cat["matching"] == want and in_cat["categories"][cat]["total"] == want
        first = json.loads(_get(server, f"/api/next?dir=first&category={cat}&decision=all")[2])
        assert first["item"]["category"] == cat and first["item"]["count"] == want
    rows = read_decisions(root)
    assert [(r["decision"], r["screener"], r["source"]) for r in rows] == [
        ("keep", "ann", "web"), ("reject", "ann", "web"), ("unsure", "carol", "csv:batch.csv"),
        ("keep", "ann", "web"), (CLEARED, "ann", "web")]  # fmt: skip
    # an undo after someone else decided the key again is refused, not overwritten
    ann.decide(keys[3], "keep", None)
    append_decisions(root, [_csv_row(keys[3], "reject")])
    with pytest.raises(Conflict, match="carol"):
        ann.undo()
    assert latest_decisions(root)[keys[3]]["decision"] == "reject"


def _serve_cli(*args: str):
    """``yume-data screening serve ARGS`` in this process (its user errors)."""
    import typer
    from typer.testing import CliRunner

    from jobs.screening_serve import serve

    app = typer.Typer()
    app.command()(serve)
    return CliRunner().invoke(app, list(args))


def test_serve_command_user_errors(tmp_path):
    root, _ = build_root(tmp_path / "root", n=1, frames=4, size=16)
    with serving(root, "ann") as server:
        port = str(server.server_address[1])
        busy = _serve_cli(str(root.path), "--port", port)
    assert busy.exit_code == 1
    assert (
        busy.output.strip()
        == f"error: port {port} on 127.0.0.1 is in use: pick another with --port"
    )
    missing = _serve_cli(str(tmp_path / "nothing"))
    assert missing.exit_code == 1 and missing.output.startswith("error: ")
    assert "yume-data events" in missing.output and len(missing.output.splitlines()) == 1
    bad = _serve_cli(str(root.path), "--screener", "<script>")
    assert bad.exit_code == 2 and bad.output.startswith("error: screener name '<script>'")


def test_serve_command_stops_cleanly_on_ctrl_c(tmp_path):
    root, _ = build_root(tmp_path / "root", n=1, frames=4, size=16)
    code = "import typer, jobs.screening_serve as s; typer.run(s.serve)"
    proc = subprocess.Popen([sys.executable, "-c", code, str(root.path), "--port", "0", "--screener", "ann"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})  # fmt: skip
    try:
        line = proc.stdout.readline()
        assert "screening 1 event videos as 'ann': open http://127.0.0.1:" in line
        port = int(line.split("127.0.0.1:")[1].split("/")[0])
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        conn.request("GET", "/api/state")
        assert json.loads(conn.getresponse().read())["screener"] == "ann"
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == 0 and "stopped" in out and "Traceback" not in err


# ---- the page in a real browser ---------------------------------------------------------


def _browser(profile: Path):
    """Headless Chromium from the distribution, driven by its chromedriver."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = str(CHROMIUM)
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 f"--user-data-dir={profile}", "--autoplay-policy=no-user-gesture-required",
                 "--window-size=1280,900"):  # fmt: skip
        opts.add_argument(flag)
    return webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=opts)


def _wait(driver, what, timeout: float = 30.0):
    """``what(driver)`` once truthy; on a timeout, fail saying what the page showed."""
    from selenium.common.exceptions import TimeoutException
    from selenium.webdriver.support.ui import WebDriverWait

    try:
        return WebDriverWait(driver, timeout, poll_frequency=0.05).until(what)
    except TimeoutException:
        page = {"shown": _shown(driver), "video": _video(driver), "toast": _text(driver, "toast"),
                "progress": _text(driver, "progress")}  # fmt: skip
        raise AssertionError(f"timed out after {timeout} s; the page: {page}") from None


def _shown(driver) -> str:
    return driver.execute_script("return document.body.dataset.key || ''")


def _text(driver, element_id: str) -> str:
    return driver.execute_script(f"return document.getElementById('{element_id}').textContent")


def _press(driver, key: str, then_shown: str | None = None) -> None:
    """Press ``key`` on the page; wait until it shows ``then_shown`` ('' : nothing left)."""
    from selenium.webdriver.common.action_chains import ActionChains

    ActionChains(driver).send_keys(key).perform()
    if then_shown is not None:
        _wait(driver, lambda d: _shown(d) == then_shown)


def _video(driver) -> dict:
    return driver.execute_script(
        "const v = document.getElementById('video');"
        "return {ready: v.readyState, duration: v.duration, time: v.currentTime, paused: v.paused,"
        " error: v.error && v.error.code, width: v.videoWidth}"
    )


def _screening_cli(*args: str) -> str:
    """``yume-data screening ARGS`` (export / import), as a person runs it."""
    from typer.testing import CliRunner

    from jobs.screening import app

    result = CliRunner().invoke(app, list(args))
    assert result.exit_code == 0, result.output
    return result.output


def _fill_csv(path: Path, decisions: dict[str, tuple[str, str]]) -> list[str]:
    """Fill an exported CSV's decision and note cells as a person would; its keys."""
    with path.open(newline="", encoding="utf-8-sig") as f:
        rows = list(csv.DictReader(f))
    for row in rows:
        row["decision"], row["note"] = decisions[row["key"]]
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return [r["key"] for r in rows]


def _published(root: DataRoot) -> dict[str, dict]:
    """key -> the screening field of each sample in shards/event."""
    out = {}
    for tar in sorted(root.shards("event").glob("*.tar")):
        for key, members in iter_shard(tar, exts={"json"}):
            out[key] = json.loads(members["json"])["screening"]
    return out


@pytest.mark.skipif(not (CHROMIUM.exists() and CHROMEDRIVER.exists()),
                    reason="needs /usr/bin/chromium and /usr/bin/chromedriver (apt install chromium chromium-driver)")  # fmt: skip
def test_page_in_a_browser(tmp_path):
    """One screener keeps, rejects, undoes and annotates; a reload resumes; a CSV batch and a
    second screener work beside the page, and nobody gets a video another one holds."""
    pytest.importorskip("selenium", reason="selenium not installed (pip install selenium)")
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import Select

    root, keys = build_root(tmp_path / "root", n=8)
    note = '<b>too dark</b> & "flicker" <img src=x onerror=alert(1)>'
    sheet_loaded = "const i = document.getElementById('sheet'); return i.complete && i.naturalWidth"
    ann_seen, bob_seen = [], []
    with serving(root, "ann") as server_a, serving(root, "bob") as server_b:
        a, b = _browser(tmp_path / "profile-a"), None
        try:
            a.get(server_a.url)
            _wait(a, lambda d: _shown(d) == keys[0])
            # the video really plays: decoded frames, a duration, time moving on
            _wait(a, lambda d: _video(d)["ready"] >= 2 and _video(d)["time"] > 0.1)
            v0 = _video(a)
            assert v0["error"] is None and v0["duration"] == pytest.approx(2.0, abs=0.1)
            assert v0["width"] == 64 and not v0["paused"]
            _wait(a, lambda d: _video(d)["time"] != v0["time"], timeout=5)
            assert _wait(a, lambda d: d.execute_script(sheet_loaded)) == 4 * 192
            # keep, reject, undo (the rejected video comes back undecided), a note, unsure
            _press(a, "k", keys[1])
            _press(a, "r", keys[2])
            _press(a, "z", keys[1])
            assert _text(a, "verdict") == "undecided"
            _press(a, "n")
            _wait(a, lambda d: d.switch_to.active_element.get_attribute("id") == "note-input")
            _press(a, note + Keys.ENTER)
            _wait(a, lambda d: _text(d, "note") == note)
            _press(a, "u", keys[2])
            got = [(r["key"], r["decision"], r["note"], r["screener"], r["source"])
                   for r in read_decisions(root)]  # fmt: skip
            assert got == [(keys[0], "keep", None, "ann", "web"), (keys[1], "reject", None, "ann", "web"),
                           (keys[1], CLEARED, None, "ann", "web"), (keys[1], "unsure", note, "ann", "web")]  # fmt: skip
            # a reload resumes at the first undecided video, with the progress kept
            a.refresh()
            _wait(a, lambda d: _shown(d) == keys[2])
            assert _text(a, "progress").startswith("2 / 8 decided")
            _press(a, Keys.ARROW_RIGHT, keys[3])  # skip ahead and back: the lease moves along
            _press(a, Keys.ARROW_LEFT, keys[2])
            assert set(active_claims(root)) == {keys[2]}
            # the note is shown as text: no element made from it
            Select(a.find_element("id", "decision")).select_by_value("unsure")
            _wait(a, lambda d: _shown(d) == keys[1])
            assert _text(a, "note") == note and _text(a, "verdict") == "unsure"
            assert a.execute_script("return document.querySelectorAll('#note *, img[src=x]').length") == 0  # fmt: skip
            Select(a.find_element("id", "decision")).select_by_value("undecided")
            _wait(a, lambda d: _shown(d) == keys[2] and d.execute_script(sheet_loaded))
            _wait(a, lambda d: _video(d)["time"] > 0.5)
            shot = Path(os.environ.get("YUME_SCREENSHOT", tmp_path / "screening.png"))
            a.save_screenshot(str(shot))
            shutil.copyfile(shot, "/tmp/h3_screenshot.png")
            assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
            # a CSV batch meanwhile: neither the decided videos nor the one open in the page
            batch = tmp_path / "carol.csv"
            _screening_cli("export", "--root", str(root.path), "--screener", "carol",
                           "--batch-size", "2", "--out", str(batch))  # fmt: skip
            assert (
                _fill_csv(batch, {keys[3]: ("keep", "fine"), keys[4]: ("Reject ", "")}) == keys[3:5]
            )
            # a second screener at once: never a video the first one or the batch holds
            b = _browser(tmp_path / "profile-b")
            b.get(server_b.url)
            _wait(b, lambda d: _shown(d) == keys[5])
            held = {k: c["screener"] for k, c in active_claims(root).items()}
            assert held == {keys[2]: "ann", keys[3]: "carol", keys[4]: "carol", keys[5]: "bob"}
            for driver, seen, other in ((a, ann_seen, b), (b, bob_seen, a)) * 2:
                seen.append(_shown(driver))
                assert seen[-1] != _shown(other)
                _press(driver, "k")
                _wait(driver, lambda d, k=seen[-1]: _shown(d) != k)
            _wait(a, lambda d: _shown(d) == "")
            _wait(b, lambda d: _shown(d) == "")
            # the batch comes back while the pages are open: they show it (and shards/event)
            _screening_cli("import", str(batch), "--root", str(root.path))
            for d in (a, b):
                _wait(d, lambda d: _text(d, "progress").startswith("8 / 8 decided · keep 6 · reject 1"))  # fmt: skip
        finally:
            a.quit()
            if b is not None:
                b.quit()
    assert ann_seen == [keys[2], keys[6]] and bob_seen == [keys[5], keys[7]]
    latest = latest_decisions(root)
    by = {k: (latest[k]["decision"], latest[k]["screener"], latest[k]["source"]) for k in keys}
    assert by == {
        keys[0]: ("keep", "ann", "web"), keys[1]: ("unsure", "ann", "web"),
        keys[2]: ("keep", "ann", "web"), keys[3]: ("keep", "carol", "csv:carol.csv"),
        keys[4]: ("reject", "carol", "csv:carol.csv"), keys[5]: ("keep", "bob", "web"),
        keys[6]: ("keep", "ann", "web"), keys[7]: ("keep", "bob", "web"),
    }  # fmt: skip
    assert active_claims(root) == {}
    assert write_event_shards(root)["rebuilt"] is False  # the import published these already
    assert _published(root) == {
        k: {"decision": "accepted", "reviewer": by[k][1], "note": "fine" if k == keys[3] else None}
        for k in keys if by[k][0] == "keep"
    }  # fmt: skip
