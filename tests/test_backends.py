"""model.backends: spec parsing, the lazy registry, tiny-random marking, protocol conformance."""

from __future__ import annotations

import ast
import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import model.backends as backends
from model.backends import (
    BackendSpec,
    BackendSpecError,
    CaptionerBackend,
    TextEncoderBackend,
    VAEBackend,
    backend_label,
    load,
    parse_spec,
    register,
    registry,
    resolve,
)
from model.text import TextEncoder, encoder_id
from model.vae import VideoVAE

ROOT = Path(__file__).resolve().parents[1]


# ---- spec parsing ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "family", "path"),
    [
        ("tiny-random", "tiny-random", ""),
        ("/weights/Wan2.2-TI2V-5B-Diffusers", None, "/weights/Wan2.2-TI2V-5B-Diffusers"),
        ("./weights/x", None, "./weights/x"),
        ("../w", None, "../w"),
        ("~/w/x", None, "~/w/x"),
        ("weights", None, "weights"),  # a bare relative folder, as VideoVAE.load always took
        ("weights/a:b", None, "weights/a:b"),  # a colon inside a relative path
        ("/w/a:b", None, "/w/a:b"),
        ("./tiny-random", None, "./tiny-random"),  # a folder, not the tiny backend
        ("lmdeploy:/weights/InternVL3-78B", "lmdeploy", "/weights/InternVL3-78B"),
        (
            "diffusers:/weights/Wan2.1-T2V-14B-Diffusers",
            "diffusers",
            "/weights/Wan2.1-T2V-14B-Diffusers",
        ),
        ("transformers:/w/x", "transformers", "/w/x"),
        ("vbench:/path", "vbench", "/path"),
        ("sentence_transformers:./m", "sentence_transformers", "./m"),
        ("openai:http://127.0.0.1:23333", "openai", "http://127.0.0.1:23333"),
        ("openai:http://host:8000/v1", "openai", "http://host:8000/v1"),
    ],
)
def test_parse_good_specs(text: str, family: str | None, path: str) -> None:
    spec = parse_spec(text)
    assert (spec.family, spec.path, spec.text) == (family, path, text)
    assert spec.tiny_random is (text == "tiny-random")
    assert parse_spec(str(spec)) == spec  # str() round-trips
    assert parse_spec(spec) is spec


def test_spec_is_frozen_and_compares_by_meaning() -> None:
    spec = parse_spec("diffusers:/w/x")
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.family = "transformers"  # type: ignore[misc]
    assert spec == BackendSpec("diffusers", "/w/x")
    assert hash(spec) == hash(BackendSpec("diffusers", "/w/x"))
    assert parse_spec("/w/x").with_family("diffusers") == spec


def test_openai_base_url_always_ends_in_v1() -> None:
    assert parse_spec("openai:http://127.0.0.1:23333").base_url == "http://127.0.0.1:23333/v1"
    assert parse_spec("openai:http://h:1/v1").base_url == "http://h:1/v1"
    assert parse_spec("openai:https://h/v1/").base_url == "https://h/v1"
    assert parse_spec("openai:http://h:1").is_server
    with pytest.raises(BackendSpecError, match="not an openai"):
        _ = parse_spec("/w/x").base_url


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("", "empty"),
        ("   ", "empty"),
        (" tiny-random", "whitespace"),
        ("tiny-random\n", "whitespace"),
        ("tiny", "did you mean 'tiny-random'"),
        ("tiny_random", "did you mean 'tiny-random'"),
        ("Tiny-Random", "did you mean 'tiny-random'"),
        ("tiny-random:/w", "tiny-random takes no path"),
        ("http://127.0.0.1:23333", "write openai:http://127.0.0.1:23333"),
        ("Diffusers:/w", "not a family name"),
        ("lm deploy:/w", "not a family name"),
        ("lmdeploy:", "nothing after 'lmdeploy:'"),
        ("openai:", "nothing after"),
        ("openai:/v1", "http:// or https://"),
        ("openai:ftp://h:1", "http:// or https://"),
        ("openai:http://:8000", "no host"),
        ("openai:http://h:port/v1", "malformed port"),
        ("openai:http://h:1/v1?key=x", "no query"),
    ],
)
def test_parse_malformed_specs_fail_in_one_line(text: str, why: str) -> None:
    with pytest.raises(BackendSpecError, match="bad backend spec") as err:
        parse_spec(text)
    message = str(err.value)
    assert why in message and "\n" not in message.replace(repr(text), "")
    assert isinstance(err.value, ValueError)


def test_a_pathlib_path_is_a_local_path() -> None:
    assert parse_spec(Path("/w/x")) == BackendSpec(None, "/w/x")
    assert resolve("vae", Path("w")) == BackendSpec("diffusers", "w")


def test_non_string_spec_is_rejected() -> None:
    with pytest.raises(BackendSpecError, match="must be a string"):
        parse_spec(None)  # type: ignore[arg-type]


def test_resolve_fills_the_family_of_a_bare_path_per_kind() -> None:
    assert resolve("vae", "/w/Wan2.2") == BackendSpec("diffusers", "/w/Wan2.2")
    assert resolve("text_encoder", "weights") == BackendSpec("diffusers", "weights")
    assert resolve("captioner", "lmdeploy:/w") == BackendSpec("lmdeploy", "/w")
    with pytest.raises(BackendSpecError, match="ambiguous for a captioner"):
        resolve("captioner", "/weights/InternVL3-78B")
    with pytest.raises(ValueError, match="unknown backend kind 'captionr'"):
        resolve("captionr", "tiny-random")


# ---- the registry and the two existing wrappers ------------------------------------------------


def test_load_tiny_random_vae_through_the_registry() -> None:
    vae = load("vae", "tiny-random")
    assert isinstance(vae, VideoVAE) and isinstance(vae, VAEBackend)
    assert backend_label(vae) == {
        "backend": "tiny-random",
        "model_id": "tiny-random-vae-s0",
        "tiny_random": True,
    }
    direct = VideoVAE.load("tiny-random")
    for a, b in zip(vae.model.parameters(), direct.model.parameters(), strict=True):
        assert torch.equal(a, b)
    assert load("vae", "tiny-random", seed=1).model_id == "tiny-random-vae-s1"


def test_load_tiny_random_text_encoder_through_the_registry() -> None:
    enc = load("text_encoder", "tiny-random", seed=2, event_len=16, action_len=8)
    assert isinstance(enc, TextEncoder) and isinstance(enc, TextEncoderBackend)
    assert (enc.event_len, enc.action_len, enc.dim) == (16, 8, 32)
    assert backend_label(enc) == {
        "backend": "tiny-random",
        "model_id": "tiny-random-umt5-s2",
        "tiny_random": True,
    }
    assert enc.model_id == encoder_id("tiny-random", seed=2)
    assert torch.equal(
        enc.encode_actions(["Person moves forward (W)."]),
        TextEncoder.load("tiny-random", seed=2, event_len=16, action_len=8).encode_actions(
            ["Person moves forward (W)."]
        ),
    )


def test_local_vae_folder_loads_as_the_diffusers_family(tmp_path: Path) -> None:
    VideoVAE.tiny(seed=3).model.save_pretrained(tmp_path / "vae")
    for spec in (str(tmp_path), f"diffusers:{tmp_path}"):
        vae = load("vae", spec)
        assert backend_label(vae) == {
            "backend": "diffusers",
            "model_id": str(tmp_path),
            "tiny_random": False,
        }
        assert isinstance(vae, VAEBackend) and VideoVAE.load(spec).model_id == str(tmp_path)


def test_wrappers_reject_other_families_and_unknown_families_are_named() -> None:
    with pytest.raises(
        ValueError, match="no vae backend 'lmdeploy'; families: diffusers, tiny-random"
    ):
        load("vae", "lmdeploy:/w")
    with pytest.raises(ValueError, match="VideoVAE loads tiny-random or a diffusers folder"):
        VideoVAE.load("openai:http://h:1")
    with pytest.raises(ValueError, match="TextEncoder loads tiny-random or a diffusers folder"):
        TextEncoder.load("transformers:/w")
    with pytest.raises(ValueError, match="no scorer backend 'lmdeploy'"):
        load("scorer", "lmdeploy:/w")
    with pytest.raises(BackendSpecError):
        VideoVAE.load("tiny")


def test_encoder_id_accepts_specs() -> None:
    assert encoder_id("/w/x") == encoder_id("diffusers:/w/x") == "/w/x"
    assert encoder_id("weights") == "weights"
    assert encoder_id("tiny-random", seed=4) == "tiny-random-umt5-s4"


def test_existing_wrappers_conform_to_their_protocols() -> None:
    vae, enc = VideoVAE.tiny(), TextEncoder.tiny()
    assert VideoVAE.environment == TextEncoder.environment == backends.CORE
    assert backends.missing_members("vae", vae) == []
    assert backends.missing_members("text_encoder", enc) == []
    assert isinstance(vae, backends.Backend) and isinstance(enc, backends.Backend)
    assert not isinstance(vae, TextEncoderBackend)  # no encode_events / encode_actions
    assert not isinstance(enc, CaptionerBackend)
    assert (vae.family, enc.family, vae.tiny_random, enc.tiny_random) == (
        "tiny-random",
        "tiny-random",
        True,
        True,
    )
    assert (
        backends.families("vae")
        == backends.families("text_encoder")
        == (
            "diffusers",
            "tiny-random",
        )
    )


# ---- registering a new backend ---------------------------------------------------------------


@pytest.fixture
def scratch_registry(monkeypatch):
    """A copy of the registry tables, so test registrations do not leak."""
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))
    monkeypatch.setattr(registry, "BACKEND_MODULES", dict(registry.BACKEND_MODULES))
    return registry


def _fake_captioner(**overrides):
    body = {
        "environment": "lmdeploy",
        "family": "fake-vlm",
        "tiny_random": False,
        "from_spec": classmethod(lambda cls, spec, **kw: cls(spec, **kw)),
        "__init__": lambda self, spec, suffix="": setattr(self, "model_id", spec.path + suffix),
        "caption": lambda self, frames, prompt: f"{len(frames)} frames: {prompt}",
    }
    body.update(overrides)
    return type("FakeCaptioner", (), {k: v for k, v in body.items() if v is not None})


def test_register_and_load_a_new_kind_of_backend(scratch_registry) -> None:
    cls = register("captioner", "fake-vlm")(_fake_captioner())
    cap = load("captioner", "fake-vlm:/w/InternVL3", suffix="-x")
    assert isinstance(cap, cls) and isinstance(cap, CaptionerBackend)
    assert cap.caption([0, 1], "what happens?") == "2 frames: what happens?"
    assert backend_label(cap) == {
        "backend": "fake-vlm",
        "model_id": "/w/InternVL3-x",
        "tiny_random": False,
    }
    assert "fake-vlm" in backends.families("captioner")


def test_register_checks_what_a_class_can_show(scratch_registry) -> None:
    with pytest.raises(TypeError, match="must declare environment"):
        register("captioner", "a")(_fake_captioner(environment=None))
    with pytest.raises(TypeError, match="from_spec"):
        register("captioner", "b")(_fake_captioner(from_spec=None))
    with pytest.raises(TypeError, match="lacks captioner methods: caption"):
        register("captioner", "c")(_fake_captioner(caption=None))
    with pytest.raises(ValueError, match="not a family name"):
        register("captioner", "Bad Name")
    with pytest.raises(ValueError, match="unknown backend kind"):
        register("captioners", "d")
    register("captioner", "e")(_fake_captioner())
    with pytest.raises(ValueError, match="already"):
        register("captioner", "e")(type("Other", (_fake_captioner(),), {}))


def test_load_checks_instance_members(scratch_registry) -> None:
    register("captioner", "no-id")(_fake_captioner(__init__=lambda self, spec: None))
    with pytest.raises(TypeError, match="lacks model_id"):
        load("captioner", "no-id:/w")


def test_a_backend_module_that_cannot_import_says_so(scratch_registry) -> None:
    scratch_registry.BACKEND_MODULES[("captioner", "ghost")] = "model.backends._no_such_module"
    with pytest.raises(ImportError, match=r"captioner backend 'ghost' \(model.backends._no_such"):
        load("captioner", "ghost:/w")


# ---- import hygiene ----------------------------------------------------------------------------


def test_import_model_backends_is_light() -> None:
    code = (
        "import sys, model.backends as b; b.parse_spec('openai:http://h:1'); b.resolve('vae', '/w');"
        "b.families('vae');"
        "heavy = ('torch', 'numpy', 'diffusers', 'transformers', 'lmdeploy', 'sentence_transformers',"
        " 'vbench', 'model.vae', 'model.text');"
        "print(','.join(m for m in heavy if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == ""


def test_nothing_under_model_imports_curation() -> None:
    offenders = []
    for path in sorted((ROOT / "model").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = (
                [a.name for a in node.names]
                if isinstance(node, ast.Import)
                else [node.module or ""]
                if isinstance(node, ast.ImportFrom)
                else []
            )
            offenders += [f"{path.name}: {n}" for n in names if n.split(".")[0] == "curation"]
    assert offenders == []


def test_action_text_lives_in_schemas_and_curation_re_exports_it() -> None:
    import curation.actions
    import schemas.actions

    assert curation.actions.action_text is schemas.actions.action_text
    assert curation.actions.PHRASES is schemas.actions.PHRASES
    assert (
        schemas.actions.action_text("W", "·")
        == "Person moves forward (W). Camera remains still (·)."
    )


def test_local_hash_and_atomic_write_match_the_manifest_helpers(tmp_path: Path) -> None:
    from model import text

    # the value curation.manifest.config_hash gives: existing action caches keep their keys
    config = {"encoder": {"model_id": "x", "n": [1, 2]}, "style": "yume", "p": Path("/a")}
    assert text._config_hash(config) == "4320a0209089"
    target = tmp_path / "sub" / "cache.safetensors"
    text._atomic_write_bytes(target, b"old")
    text._atomic_write_bytes(target, b"new")
    assert target.read_bytes() == b"new" and sorted(p.name for p in target.parent.iterdir()) == [
        "cache.safetensors"
    ]
