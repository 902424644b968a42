"""Run the real flow against a real sandbox over HTTP, for tests of plugins and backends.

The fixtures ``privateshare_sandbox`` (a factory: ``start(**settings)``) and
``privateshare_sandbox_keys`` live in :mod:`privateshare.testing.plugin`; these are
the helpers they and your tests use.
"""

from __future__ import annotations

import hashlib
import tomllib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import requests

from ..flow import Flow
from ..framework import PrivateShare, load
from ..models import Session, UserAccessToken
from ..sandbox import Sandbox, SandboxSettings


def sandbox_starter(keys: Path, workdir: Path) -> Iterator[Callable[..., Sandbox]]:
    """Yield ``start(**settings)``; every sandbox started is stopped afterwards.

    ``keys`` is a key cache shared by the test session, so RSA keys are made once.
    """
    running: list[Sandbox] = []

    def start(**settings: Any) -> Sandbox:
        state = workdir / f"sandbox-{len(running)}"
        sandbox = Sandbox(SandboxSettings.instant(**settings), state_dir=state, key_cache=keys)
        running.append(sandbox.start())
        return sandbox

    try:
        yield start
    finally:
        for sandbox in running:
            sandbox.stop()


def sandbox_config(
    sandbox: Sandbox,
    root: Path,
    contract: str = "ongoing",
    *,
    api: str = "v1.7",
    **tables: Any,
) -> dict[str, Any]:
    """The sandbox's generated config, with tokens and a file sink under ``root``.

    ``api`` picks the protocol profile (``"v1.7"`` or ``"v1.5"``): the sandbox
    serves both. Each keyword replaces a table, or is merged into it when both
    are tables; ``sinks={...}`` replaces the sinks entirely.
    """
    path = sandbox.config_path(contract, api)
    raw = tomllib.loads(path.read_text(encoding="utf-8"))
    raw["tokens"] = {"type": "file", "path": str(root / "tokens")}
    raw["sinks"] = {"local": {"type": "file", "root": str(root / "data")}}
    raw["pull"] = {"poll_interval": 0.05, "retry_backoff": 0.01}
    raw["transport"] = {"type": "requests", "backoff": 0.01}
    for name, value in tables.items():
        if name != "sinks" and isinstance(value, dict) and isinstance(raw.get(name), dict):
            raw[name] = {**raw[name], **value}
        else:
            raw[name] = value
    return raw


def sandbox_framework(
    sandbox: Sandbox,
    root: Path,
    contract: str = "ongoing",
    *,
    api: str = "v1.7",
    **tables: Any,
) -> PrivateShare:
    """A framework wired to ``sandbox`` (see :func:`sandbox_config`)."""
    raw = sandbox_config(sandbox, root, contract, api=api, **tables)
    return load(raw, base_dir=sandbox.config_path(contract, api).parent)


def consent(
    flow: Flow, user_id: str, *, once: bool = False
) -> tuple[UserAccessToken | None, Session]:
    """Give consent through the sandbox's auto-consent page, as a browser would.

    On API v1.5 that is the guest page (one-off) or the sandbox's stand-in for the
    digi.me app (ongoing); a v1.5 one-off consent gives no token (None).
    """
    pending = flow.start_consent(user_id, once=once)
    return flow.finish_consent(pending, consent_as_browser(pending.url))


def consent_as_browser(url: str) -> dict[str, str]:
    """Open a consent URL of the auto-consenting sandbox; the callback's query parameters."""
    response = requests.get(url, allow_redirects=False, timeout=30)
    location = response.headers.get("Location")
    if response.status_code not in (301, 302, 303, 307) or not location:
        raise RuntimeError(
            f"the sandbox consent page did not redirect (HTTP {response.status_code}); "
            "start the sandbox with auto_consent=True"
        )
    return dict(parse_qsl(urlsplit(location).query, keep_blank_values=True))


def sha256_tree(folder: Path) -> dict[str, str]:
    """name -> SHA-256 of each data file a file sink holds in ``folder`` (one user)."""
    if not folder.exists():
        return {}
    return {
        p.name: hashlib.sha256(p.read_bytes()).hexdigest()
        for p in folder.iterdir()
        if p.is_file() and not p.name.startswith(".") and not p.name.endswith(".metadata.json")
    }


def dump_toml(raw: dict[str, Any]) -> str:
    """TOML text for a config dict (tables of scalars, strings, lists; nested tables)."""
    import json

    lines: list[str] = []

    def is_reference(value: Any) -> bool:
        return isinstance(value, dict) and bool(value) and set(value) <= {"env", "file"}

    def table(path: str, values: dict[str, Any]) -> None:
        inline = {k: v for k, v in values.items() if not isinstance(v, dict) or is_reference(v)}
        nested = {k: v for k, v in values.items() if k not in inline}
        if inline or not nested:
            lines.append(f"[{path}]")
            for key, value in inline.items():
                text = f"{{ {_inline(value)} }}" if is_reference(value) else json.dumps(value)
                lines.append(f"{key} = {text}")
            lines.append("")
        for key, value in nested.items():
            table(f"{path}.{key}", value)

    for name, value in raw.items():
        table(name, value)
    return "\n".join(lines)


def _inline(value: dict[str, Any]) -> str:
    import json

    return ", ".join(f"{k} = {json.dumps(v)}" for k, v in value.items())


def standalone_config(
    sandbox: Sandbox,
    root: Path,
    contract: str = "ongoing",
    *,
    api: str = "v1.7",
    **tables: Any,
) -> dict[str, Any]:
    """:func:`sandbox_config` with the key path absolute, so any ``base_dir`` works."""
    raw = sandbox_config(sandbox, root, contract, api=api, **tables)
    keys = raw.get("keys", {})
    if keys.get("type") == "file":
        keys["path"] = str(sandbox.config_path(contract, api).parent / keys["path"])
    return raw


def write_sandbox_config(
    sandbox: Sandbox,
    root: Path,
    contract: str = "ongoing",
    *,
    api: str = "v1.7",
    **tables: Any,
) -> Path:
    """Write :func:`standalone_config` as ``root/privateshare.toml`` for CLI runs."""
    raw = standalone_config(sandbox, root, contract, api=api, **tables)
    path = root / "privateshare.toml"
    root.mkdir(parents=True, exist_ok=True)
    path.write_text(dump_toml(raw), encoding="utf-8")
    return path
