"""The ``lmdeploy`` captioner (production): ``lmdeploy:/weights/InternVL3-78B``.

lmdeploy cannot live in the core environment (it caps torch below the project's pin and
needs CUDA; REFERENCE.md section 0), so this backend never imports it. Each replica (one
per captioner actor, on the actor's GPUs through the inherited ``CUDA_VISIBLE_DEVICES``)
launches ``lmdeploy serve api_server`` from a configured command or interpreter with
``model.backends.launcher.ServerLauncher`` (health check, restart when it dies) and talks
to it with the ``openai`` backend: frames as base64 data URLs (lmdeploy blocks loopback
http URLs), one tile per frame (``max_dynamic_patch: 1``).
"""

from __future__ import annotations

import shlex

from model.backends.captioner_openai import OpenAICaptioner
from model.backends.launcher import ServerLauncher
from model.backends.protocols import CORE
from model.backends.registry import register
from model.backends.spec import BackendSpec

# {python} runs lmdeploy's own interpreter; {model}, {host} and {port} are filled in.
DEFAULT_COMMAND = (
    "{python} -m lmdeploy serve api_server {model} --server-name {host} --server-port {port} "
    "--backend turbomind --session-len 16384 --vision-max-batch-size 8 --trust-remote-code"
)


def server_command(model: str, command: str = "", python: str = "python") -> str:
    """The launch command: ``command`` (or the default) with ``{python}`` and ``{model}``
    filled in; ``{host}`` and ``{port}`` are left to the launcher."""
    text = command or DEFAULT_COMMAND
    return text.replace("{python}", shlex.quote(python)).replace("{model}", shlex.quote(model))


@register("captioner", "lmdeploy")
class LmdeployCaptioner(OpenAICaptioner):
    """An ``openai`` captioner against a launched lmdeploy api_server replica."""

    environment = CORE  # this class runs in core; the server runs in the lmdeploy env

    @classmethod
    def from_spec(
        cls,
        spec: BackendSpec,
        server_command_template: str = "",
        python: str = "python",
        startup_timeout: float = 1800.0,
        server_log: str | None = None,
        **kwargs,
    ) -> LmdeployCaptioner:
        launcher = ServerLauncher(
            server_command(spec.path, server_command_template, python),
            health_paths=("/v1/models",),
            startup_timeout=startup_timeout,
            log=server_log,
        ).start()
        self = cls(launcher.base_url, on_transport_error=launcher.ensure, **kwargs)
        self.launcher = launcher
        self.family = "lmdeploy"
        return self

    def close(self) -> None:
        super().close()
        self.launcher.stop()
