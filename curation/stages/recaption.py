"""The recaption stage: event captions by a vision-language model (InternVL3) per caption
window of every clip sample, and a captioned copy of the shard sets that carries them.

One item per (sample, caption window, prompt version), keyed
``<dataset>/<sample>/w<window>/<version>``: resuming skips exactly the captions done, and a
new prompt version adds items beside the earlier ones (which stay in the manifest). Windows
come from the index (frames, fps) at discovery; a window with fewer than ``min_frames``
frames is a ``too_few_frames`` reject without decoding anything. An item's input names the
sample, not its shard (``<shards folder>/<sample>#w<window>``), and its version is the
window and the index's sha256 of the mp4: a clips rerun that repacks shards redoes nothing,
a re-encoded clip is captioned again (with each recorded prompt version), and a sample gone
from the index drops its captions. A damaged clip is rejected as in encode-latents (whose
shard-reading code this stage shares): ``missing_shard``, ``unreadable_shard``,
``missing_sample``, ``missing_member``, ``sha256_mismatch`` (the mp4 differs from the
index), ``bad_sample_json`` (its json, which the captioned copy carries, does not parse or
misses a field: checked before any model time), ``empty_clip`` and ``undecodable_clip``.

In a worker (an actor holding the captioner backend): each shard of the batch is read
once, each clip decoded once, at tile size, and only at the frames its windows show
(``frames_per_window`` segment midpoints per window); frames are encoded for the backend
(JPEG data URLs for a server, normalised tiles in process). That CPU preparation runs in a
thread pool of the actor while the backend generates for earlier windows, so the model
never waits on decoding (the runner runs one stage per job, so the prep/model split of a
two-stage Ray Data pipeline is done inside the actor). Each answer is validated
(``curation.recaption.validate_caption``); a failure, or a backend error, is retried once
with the next seed, else the item is rejected with the reason.

``finalize`` writes ``shards/<dataset>-<output_suffix>``: every sample with at least one
caption of the current prompt version, its json carrying ``captions.event_windows`` (and
``captions.event``, the first window's), other members copied byte for byte, through the
one shard writer. Source shards are never touched. When samples already written would now
read differently (a new prompt version, a retried window, a member changed or gone in the
source), the captioned dataset is rebuilt beside the old one and swapped in; otherwise new
samples are appended.
"""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import time
from collections import Counter, defaultdict
from collections.abc import Iterator
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa

from curation.config import option
from curation.dataroot import check_name
from curation.provenance import code_version
from curation.recaption import (
    DEFAULT_PROMPT_VERSION,
    PROMPTS,
    Limits,
    Window,
    build_prompt,
    caption_windows,
    choose_frames,
    validate_caption,
)
from curation.shards import iter_shard, read_index, write_shards
from curation.stages.base import Outcome, Reject, Resources, Result, Stage, unexpected
from curation.stages.encode_latents import check_members, check_mp4, sample_meta, shard_samples
from curation.stages.parts import read_status
from schemas.recaption import RECAPTION_SCHEMA

TINY_MIN_CHARS = 8  # tiny-random's length floor: its random bytes decode to fewer chars


@dataclass(frozen=True)
class RecaptionConfig:
    """Which shard sets, which captioner and prompt, how frames are chosen and answers checked."""

    datasets: list[str] = option(
        factory=lambda: ["sekai-real"], help="Shard sets (shards/<name>) to recaption."
    )
    captioner: str = option(
        "tiny-random",
        "Captioner backend: lmdeploy:/weights/InternVL3-78B, openai:http://host:port, "
        "transformers:/weights/InternVL3-8B-hf or tiny-random.",
    )
    prompt_version: str = option(
        DEFAULT_PROMPT_VERSION,
        f"Instruction version ({', '.join(PROMPTS)}); part of each caption's key, so a new "
        "version adds captions beside the earlier ones.",
        output=False,
    )
    frames_per_window: int = option(8, "Frames shown per caption window (segment midpoints).")
    window_seconds: float = option(
        0.0, "One caption per this many seconds of clip (0: whole clip)."
    )
    min_frames: int = option(4, "Windows with fewer frames are rejected (too_few_frames).")
    frame_size: int = option(448, "Frames are resized to one square tile of this size.")
    temperature: float = option(0.1, "Sampling temperature (near-greedy).")
    top_p: float = option(0.9, "Nucleus sampling top_p.")
    max_tokens: int = option(256, "Most tokens per caption; an answer cut there is rejected.")
    seed: int = option(0, "Base seed; each window's seed is derived from it and its key.")
    min_chars: int = option(40, "Shortest caption accepted, in characters.")
    max_chars: int = option(1200, "Longest caption accepted, in characters.")
    output_suffix: str = option("captioned", "Captioned shards go to shards/<dataset>-<suffix>.")
    max_in_flight: int = option(32, "Requests in flight per actor (server backends).", output=False)
    timeout: float = option(120.0, "Seconds per request before it is retried.", output=False)
    request_retries: int = option(4, "Retries of a request on 429/5xx/timeouts.", output=False)
    prepare_threads: int = option(2, "Decode/encode threads per actor.", output=False)
    server_command: str = option(
        "",
        "lmdeploy: the api_server command ({python} {model} {host} {port} filled in; "
        "default: model.backends.captioner_lmdeploy.DEFAULT_COMMAND).",
        output=False,
    )
    lmdeploy_python: str = option(
        "python", "lmdeploy: the interpreter of lmdeploy's own environment.", output=False
    )
    gpus: float = option(0.0, "GPUs per captioner actor (lmdeploy: its server's).", output=False)
    batch: int = option(64, "Windows per actor call (bounds the requests in flight).", output=False)
    timings: bool = option(True, "Record seconds per caption (off: null).", output=False)
    max_samples: int = option(1000, "Samples per captioned shard at most.", output=False)

    def __post_init__(self) -> None:
        for name in self.datasets:
            check_name(name)
        check_name(self.output_suffix)
        if self.prompt_version not in PROMPTS:
            raise ValueError(f"prompt_version must be one of {', '.join(PROMPTS)}")
        if min(self.frames_per_window, self.min_frames, self.frame_size, self.max_tokens) < 1:
            raise ValueError("frames_per_window, min_frames, frame_size, max_tokens >= 1")
        if self.window_seconds < 0 or self.min_chars > self.max_chars:
            raise ValueError("window_seconds >= 0 and min_chars <= max_chars")


def window_seed(seed: int, sample: str, window: int, version: str) -> int:
    text = f"{seed}/{sample}/{window}/{version}"
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:4], "little")


def decode_at(mp4: bytes, indices: list[int], size: int) -> dict[int, np.ndarray]:
    """Decode only ``indices`` of an in-memory mp4, each scaled to ``size`` x ``size`` (one
    InternVL tile: the whole frame, not tiled). Raises Reject for an undecodable clip or
    one shorter than asked."""
    import cv2
    import decord

    try:
        vr = decord.VideoReader(io.BytesIO(mp4), ctx=decord.cpu(0), num_threads=1)
        n = len(vr)
    except Exception as e:  # decord raises its own error types for every bad stream
        raise Reject("undecodable_clip", f"{type(e).__name__}: {str(e)[:200]}") from e
    if not indices:
        return {}
    if max(indices) >= n:
        raise Reject("too_few_frames", f"the mp4 has {n} frames, window needs {max(indices) + 1}")
    want = sorted(set(indices))
    try:
        try:
            scaled = decord.VideoReader(
                io.BytesIO(mp4), ctx=decord.cpu(0), width=size, height=size, num_threads=1
            )
            frames = scaled.get_batch(want).asnumpy()
        except decord.DECORDError:  # decord's row-alignment bug at some widths
            full = vr.get_batch(want).asnumpy()
            frames = np.stack([cv2.resize(f, (size, size), interpolation=cv2.INTER_AREA)
                               for f in full])  # fmt: skip
    except Reject:
        raise
    except Exception as e:
        raise Reject("undecodable_clip", f"{type(e).__name__}: {str(e)[:200]}") from e
    return dict(zip(want, frames, strict=True))


class RecaptionStage(Stage[RecaptionConfig]):
    """Event captions (what happens, what moves, what changes) for image-to-video training.

    Reads shards/<dataset>/ under --root; one caption per window of each clip (the whole
    clip, or --window-seconds); writes manifests/recaption.parquet (every caption with its
    window, model, backend, prompt version, sampling, seed, tokens and seconds), its rejects,
    reports/recaption.json and shards/<dataset>-captioned/ (the samples with
    captions.event_windows). Resumes per (sample, window, prompt version).
    """

    name = "recaption"
    config_cls = RecaptionConfig
    tables = {"recaption": RECAPTION_SCHEMA}
    sort_by = {"recaption": ["key"]}
    # a caption is made from its window of the clip's mp4; a sample the index no longer
    # holds drops its captions
    version_fields = ("window", "clip")
    drops_missing = True

    @property
    def resources(self) -> Resources:  # type: ignore[override]
        return Resources(cpus=1, gpus=self.config.gpus, actor=True, batch_size=self.config.batch)

    def output_name(self, dataset: str) -> str:
        return f"{dataset}-{self.config.output_suffix}"

    def owned_outputs(self) -> list[Path]:
        return [self.root.shards(self.output_name(d)) for d in self.config.datasets]

    def describe_inputs(self) -> str:
        return ", ".join(str(self.root.shards(d)) for d in self.config.datasets)

    def provenance_extra(self) -> dict:
        return {"captioner": self.config.captioner, "prompt_version": self.config.prompt_version}

    # -- discovery ----------------------------------------------------------------------------
    def _recorded(self) -> set[str]:
        """Keys of earlier prompt versions this root holds a status for (not dropped)."""
        status = read_status(self.root.parts(self.name)).select(["key", "status"]).to_pylist()
        current = f"/{self.config.prompt_version}"
        return {r["key"] for r in status
                if r["status"] != "dropped" and not r["key"].endswith(current)}  # fmt: skip

    def discover(self) -> Iterator[dict]:
        """Every window of every indexed sample for the current prompt version, and for each
        earlier version whose caption of it is recorded: those are kept, redone when their
        clip changed, or dropped with it, never added for samples they never captioned."""
        cfg = self.config
        recorded = self._recorded()
        versions = sorted({k.rsplit("/", 1)[1] for k in recorded} | {cfg.prompt_version})
        columns = ["key", "shard", "frames", "fps", "members", "sha256"]
        for dataset in cfg.datasets:
            folder = self.root.shards(dataset)
            if not folder.is_dir():
                raise FileNotFoundError(f"no shards in {folder}: run `yume-data clips` first")
            rows = read_index(folder).select(columns).to_pylist()
            for r in sorted(rows, key=lambda r: (r["shard"], r["key"])):
                mp4 = dict(zip(r["members"], r["sha256"], strict=True)).get("mp4")
                for w in caption_windows(r["frames"], r["fps"], cfg.window_seconds):
                    for version in versions:
                        key = f"{dataset}/{r['key']}/w{w.index}/{version}"
                        if version != cfg.prompt_version and key not in recorded:
                            continue
                        item = {
                            "key": key,
                            "input": f"{folder / r['key']}#w{w.index}",
                            "dataset": dataset,
                            "shard": str(folder / r["shard"]),
                            "sample": r["key"],
                            "window": [w.index, w.start, w.end],
                            "prompt_version": version,
                            "clip": {"mp4": mp4},
                        }
                        if w.frames < cfg.min_frames:
                            item["reject"] = (
                                "too_few_frames",
                                f"window {w.start}..{w.end} has {w.frames} frames, "
                                f"want at least {cfg.min_frames}",
                            )
                        yield item

    # -- work ---------------------------------------------------------------------------------
    def setup(self) -> None:
        from model.backends import load, resolve

        cfg = self.config
        spec = resolve("captioner", cfg.captioner)
        kwargs: dict = {}
        if not spec.tiny_random:
            kwargs |= {"temperature": cfg.temperature, "top_p": cfg.top_p,
                       "max_tokens": cfg.max_tokens}  # fmt: skip
        if spec.family in ("openai", "lmdeploy"):
            kwargs |= {"max_in_flight": cfg.max_in_flight, "timeout": cfg.timeout,
                       "retries": cfg.request_retries}  # fmt: skip
        if spec.family == "lmdeploy":
            kwargs |= {"server_command_template": cfg.server_command,
                       "python": cfg.lmdeploy_python}  # fmt: skip
        if spec.tiny_random:
            kwargs["seed"] = cfg.seed
        self.backend = load("captioner", spec, **kwargs)
        tiny = bool(self.backend.tiny_random)
        self.limits = Limits(
            min_chars=TINY_MIN_CHARS if tiny else cfg.min_chars,
            max_chars=cfg.max_chars,
            check_language=not tiny,  # random bytes have no language
            check_truncation=not tiny,  # it has no learned stop; it always runs to the cap
        )
        self.prep = ThreadPoolExecutor(cfg.prepare_threads, thread_name_prefix="recaption-prep")

    def _prepare(self, mp4: bytes, items: list[dict]) -> list[tuple]:
        """Decode one clip once for all its windows; per item (item, payload, shown, s)."""
        t0 = time.perf_counter()
        cfg = self.config
        shown = {it["key"]: choose_frames(Window(*it["window"]), cfg.frames_per_window)
                 for it in items}  # fmt: skip
        frames = decode_at(mp4, [f for s in shown.values() for f in s], cfg.frame_size)
        decoded = time.perf_counter() - t0
        out = []
        for it in items:
            t1 = time.perf_counter()
            payload = self.backend.prepare(np.stack([frames[f] for f in shown[it["key"]]]))
            each = decoded / len(items) + time.perf_counter() - t1
            out.append((it, payload, shown[it["key"]], each))
        return out

    def process(self, batch: list[dict]) -> Result:
        outcomes: dict[str, Outcome] = {}
        rows: list[dict] = []
        by_shard: dict[str, dict[str, list[dict]]] = defaultdict(lambda: defaultdict(list))
        for it in batch:
            if it["prompt_version"] in PROMPTS:
                by_shard[it["shard"]][it["sample"]].append(it)
            else:  # an earlier version redone (its clip changed) whose prompt is gone
                detail = f"prompt version {it['prompt_version']!r} is not one of {list(PROMPTS)}"
                outcomes[it["key"]] = Outcome.rejected(it, "unknown_prompt_version", detail)
        preps = {}
        for shard, samples in by_shard.items():
            try:
                for key, members in shard_samples(shard, samples, exts=("mp4", "json")):
                    items = samples.pop(key)
                    try:
                        check_members(shard, key, members, items[0]["clip"])
                        if "json" not in members:
                            detail = f"{key}.json is not in {Path(shard).name}"
                            raise Reject("missing_member", detail)
                        sample_meta(key, members["json"])
                        check_mp4(key, members["mp4"])
                    except Reject as e:
                        for it in items:
                            outcomes[it["key"]] = Outcome.rejected(it, e.reason, e.detail)
                        continue
                    preps[self.prep.submit(self._prepare, members["mp4"], items)] = items
            except Reject as e:  # the shard is gone or broke off: its samples not yet read
                for items in samples.values():
                    for it in items:
                        outcomes[it["key"]] = Outcome.rejected(it, e.reason, e.detail)
                samples.clear()
            for items in samples.values():
                for it in items:
                    detail = f"{it['sample']} is in the index but not in {shard}"
                    outcomes[it["key"]] = Outcome.rejected(it, "missing_sample", detail)
        # generation starts as soon as a clip is prepared; later clips decode meanwhile
        gens, pending = {}, set(preps)
        while pending:
            done, pending = wait(pending, return_when=FIRST_COMPLETED)
            for fut in done:
                try:
                    prepared = fut.result()
                except Reject as e:
                    for it in preps[fut]:
                        outcomes[it["key"]] = Outcome.rejected(it, e.reason, e.detail)
                    continue
                except Exception as e:
                    for it in preps[fut]:
                        outcomes[it["key"]] = unexpected(it, e)
                    continue
                for it, payload, shown, prep_s in prepared:
                    gens[it["key"]] = self._start(it, payload, shown, prep_s, attempt=1)
        retry = {}
        for key, job in gens.items():
            failure = self._finish(job, rows, outcomes)
            if failure is not None:  # once more, with the next seed
                retry[key] = (self._start(*job["args"], attempt=2), failure)
        for job, first in retry.values():
            failure = self._finish(job, rows, outcomes)
            if failure is not None:
                reason, detail = failure
                it = job["args"][0]
                outcomes[it["key"]] = Outcome.rejected(
                    it, reason, f"{detail} (first try: {first[0]}: {first[1]})"
                )
        return Result([outcomes[it["key"]] for it in batch], {"recaption": rows})

    def _start(self, it, payload, shown, prep_s, attempt: int) -> dict:
        sample, window, version = it["sample"], it["window"][0], it["prompt_version"]
        seed = window_seed(self.config.seed, sample, window, version) + attempt - 1
        prompt = build_prompt(len(shown), version)
        future = self.backend.submit(payload, prompt, seed)
        return {"args": (it, payload, shown, prep_s), "future": future, "seed": seed,
                "attempt": attempt}  # fmt: skip

    def _finish(self, job: dict, rows: list[dict], outcomes: dict) -> tuple | None:
        """Record a done caption; return (reason, detail) when it failed."""
        it, _, shown, prep_s = job["args"]
        try:
            res = job["future"].result()
        except Exception as e:
            reason = getattr(e, "reason", None) or "backend_error"
            detail = getattr(e, "detail", None) or f"{type(e).__name__}: {str(e)[:300]}"
            return reason, detail
        reason, detail = validate_caption(res.text, res.finish_reason, self.limits)
        if reason is not None:
            return reason, f"{detail}; answer {res.text[:80]!r}"
        b, settings, timed = self.backend, self.backend.settings, self.config.timings
        index, start, end = it["window"]
        rows.append(
            {
                "key": it["key"],
                "dataset": it["dataset"],
                "sample_key": it["sample"],
                "window": index,
                "frame_start": start,
                "frame_end": end,
                "frames_shown": shown,
                "prompt_version": it["prompt_version"],
                "model": b.model_id,
                "backend": b.family,
                "tiny_random": bool(b.tiny_random),
                "temperature": settings["temperature"],
                "top_p": settings["top_p"],
                "max_tokens": settings["max_tokens"],
                "seed": job["seed"],
                "caption": res.text.strip(),
                "finish_reason": res.finish_reason,
                "prompt_tokens": res.prompt_tokens,
                "output_tokens": res.output_tokens,
                "attempts": job["attempt"],
                "transport_retries": res.retries,
                "seconds": round(res.seconds, 4) if timed else None,
                "prepare_seconds": round(prep_s, 4) if timed else None,
            }
        )
        outcomes[it["key"]] = Outcome.done(it)
        return None

    # -- the captioned shards -----------------------------------------------------------------
    def finalize(self, tables: dict[str, pa.Table]) -> dict:
        cfg = self.config
        rows = tables["recaption"].to_pylist()
        versions = dict(sorted(Counter(r["prompt_version"] for r in rows).items()))
        current = [r for r in rows if r["prompt_version"] == cfg.prompt_version]
        tiny = any(r["tiny_random"] for r in current)
        datasets = {}
        for dataset in cfg.datasets:
            mine = defaultdict(list)
            for r in current:
                if r["dataset"] == dataset:
                    mine[r["sample_key"]].append(r)
            datasets[dataset] = self._write_captioned(dataset, mine)
        notes = []
        if tiny:
            notes.append(
                "tiny-random captioner: the captions are random text for tests, not training "
                "data; their language and truncation checks were skipped and their length "
                f"floor is {TINY_MIN_CHARS} chars"
            )
        older = sorted(set(versions) - {cfg.prompt_version})
        if older:
            notes.append(
                f"captions of prompt versions {', '.join(older)} stay in the manifest; the "
                f"captioned shards carry {cfg.prompt_version}"
            )
        seconds = [r["seconds"] for r in current if r["seconds"] is not None]
        prep = [r["prepare_seconds"] for r in current if r["prepare_seconds"] is not None]
        return {
            "prompt_version_carried": cfg.prompt_version,
            "prompt_versions_recorded": versions,
            "captioner": cfg.captioner,
            "models": sorted({r["model"] for r in current}),
            "tiny_random": tiny,
            "retried_captions": sum(r["attempts"] > 1 for r in current),
            "transport_retries": sum(r["transport_retries"] for r in current),
            "mean_caption_s": round(float(np.mean(seconds)), 4) if seconds else None,
            "mean_prepare_s": round(float(np.mean(prep)), 4) if prep else None,
            "datasets": datasets,
            "notes": notes,
        }

    def _event_windows(self, rows: list[dict]) -> list[dict]:
        return [
            {"start": r["frame_start"], "end": r["frame_end"], "text": r["caption"],
             "prompt_version": r["prompt_version"], "model": r["model"],
             "backend": r["backend"], "tiny_random": r["tiny_random"]}
            for r in sorted(rows, key=lambda r: r["window"])
        ]  # fmt: skip

    def _captioned_json(self, meta: dict, rows: list[dict]) -> bytes:
        windows = self._event_windows(rows)
        meta = json.loads(json.dumps(meta))
        meta["captions"]["event"] = windows[0]["text"]
        meta["captions"]["event_windows"] = windows
        prov = meta["provenance"]
        prov["tiny_random"] = bool(prov["tiny_random"] or any(w["tiny_random"] for w in windows))
        prov["recaption"] = {
            "stage": self.name,
            "code_version": self.code_version_text,
            "config_hash": self.config_hash,
            "prompt_version": self.config.prompt_version,
            "model": windows[0]["model"],
            "backend": windows[0]["backend"],
        }
        return json.dumps(meta, sort_keys=True).encode()

    @property
    def code_version_text(self) -> str:
        if not hasattr(self, "_code_version"):
            self._code_version = code_version()
        return self._code_version

    def _write_captioned(self, dataset: str, mine: dict[str, list[dict]]) -> dict:
        src = self.root.shards(dataset)
        name = self.output_name(dataset)
        out = self.root.shards(name)
        index = read_index(src).select(["key", "shard", "members", "sha256"]).to_pylist()
        shards = sorted({r["shard"] for r in index if r["key"] in mine})
        wanted: dict[str, bytes] = {}  # key -> the captioned json
        for shard in shards:
            for key, members in iter_shard(src / shard, exts=("json",)):
                if key in mine:
                    wanted[key] = self._captioned_json(json.loads(members["json"]), mine[key])
        # the digests a captioned copy would hold now (the source's members, the new json): a
        # sample written with other bytes (a re-encoded mp4, an edited json) is stale
        source = {r["key"]: dict(zip(r["members"], r["sha256"], strict=True)) for r in index}
        digests = {k: source[k] | {"json": hashlib.sha256(v).hexdigest()}
                   for k, v in wanted.items()}  # fmt: skip
        have = {}
        if out.is_dir():
            have = {r["key"]: dict(zip(r["members"], r["sha256"], strict=True))
                    for r in read_index(out).to_pylist()}  # fmt: skip
        stale = sorted(k for k, d in have.items() if digests.get(k) != d)
        target = out
        if stale:  # rebuild beside the old dataset, then swap it in
            target = out.with_name(f".{name}.rebuild")
            shutil.rmtree(target, ignore_errors=True)

        def samples() -> Iterator[tuple[str, dict[str, bytes]]]:
            for shard in shards:
                for key, members in iter_shard(src / shard):
                    if key in wanted and (stale or key not in have):
                        yield key, {**members, "json": wanted[key]}

        packed = None
        if wanted or stale:
            packed = write_shards(
                samples(), target, name, max_samples=self.config.max_samples,
                rejects_path=self.root.rejects(f"shards-{name}"),
            )  # fmt: skip
        if stale:
            trash = out.with_name(f".{name}.old")
            shutil.rmtree(trash, ignore_errors=True)
            out.rename(trash)
            target.rename(out)
            shutil.rmtree(trash, ignore_errors=True)
        windows = Counter(len(v) for v in mine.values())
        return {
            "shards_dir": str(out),
            "samples": len(wanted),
            "left_out_uncaptioned": len({r["key"] for r in index}) - len(wanted),
            "windows_per_sample": {str(k): n for k, n in sorted(windows.items())},
            "rebuilt": bool(stale),
            "shards_written": len(packed["shards_written"]) if packed else 0,
            "rejected": packed["rejected"] if packed else 0,
        }
