"""The sandbox's registrations: application id, contracts and keys, kept in a state directory.

The first start creates an application id, one ongoing and one one-off contract
(each with an RSA-2048 key pair) and the sandbox's own token-signing key; later
starts load them, so a start takes milliseconds and client configs stay valid.
It also writes a ready-to-use ``privateshare.toml`` per contract, and one per
contract for the API v1.5 profile (``privateshare-v15.toml``).
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from filelock import FileLock

STATE_FILE = "sandbox.json"
SERVER_KEY_FILE = "sandbox-server.pem"
ONGOING = "ongoing"
ONEOFF = "oneoff"
CONFIG_FILES = {ONGOING: "privateshare.toml", ONEOFF: "privateshare-oneoff.toml"}
CONFIG_FILES_V15 = {ONGOING: "privateshare-v15.toml", ONEOFF: "privateshare-v15-oneoff.toml"}


@dataclass(frozen=True)
class Contract:
    """One registered contract: its id, kind, public key and redirect allow-list."""

    name: str
    contract_id: str
    kind: str  # "ongoing" or "oneoff"
    public_key: rsa.RSAPublicKey
    redirect_uris: tuple[str, ...]
    key_path: Path | None  # the client's private key file, when the sandbox wrote one

    @property
    def ongoing(self) -> bool:
        """Whether tokens may be issued, refreshed and reused for new sessions."""
        return self.kind == ONGOING


@dataclass(frozen=True)
class Registry:
    """Everything the sandbox has registered, keyed the way requests name it."""

    application_id: str
    contracts: dict[str, Contract]  # by client_id "<appId>_<contractId>"
    server_key: rsa.RSAPrivateKey
    server_kid: str
    state_dir: Path

    def contract(self, name: str) -> Contract:
        """A contract by its name (``"ongoing"`` or ``"oneoff"``)."""
        for contract in self.contracts.values():
            if contract.name == name:
                return contract
        raise KeyError(
            f"no contract named {name!r}; have {[c.name for c in self.contracts.values()]}"
        )

    def client_id(self, contract: Contract) -> str:
        """The ``client_id`` claim for a contract."""
        return f"{self.application_id}_{contract.contract_id}"


def generate_key() -> rsa.RSAPrivateKey:
    """A fresh RSA-2048 key (the only size digi.me's file format allows)."""
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def pkcs1_private_pem(key: rsa.RSAPrivateKey) -> bytes:
    """``BEGIN RSA PRIVATE KEY`` PEM, the format digi.me documents for contract keys."""
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    )


def _write_private(path: Path, data: bytes) -> None:
    """Write a secret file with mode 0600, atomically."""
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)


# Digests of key files already checked in this process: OpenSSL's RSA consistency check costs
# ~40 ms a key, and tests start many sandboxes on one key cache (three keys each).
_CHECKED: set[bytes] = set()


def _load_private(path: Path) -> rsa.RSAPrivateKey:
    data = path.read_bytes()
    digest = hashlib.sha256(data).digest()
    key = serialization.load_pem_private_key(
        data, password=None, unsafe_skip_rsa_key_validation=digest in _CHECKED
    )
    if len(_CHECKED) < 1024:
        _CHECKED.add(digest)
    if not isinstance(key, rsa.RSAPrivateKey) or key.key_size != 2048:
        raise ValueError(f"{path} is not an RSA-2048 private key; delete it to regenerate")
    return key


def kid_for(key: rsa.RSAPublicKey) -> str:
    """A stable key id: a digest of the public key."""
    der = key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.PKCS1)
    return "sandbox-" + hashlib.sha256(der).hexdigest()[:16]


KEY_FILES = (f"{ONGOING}.pem", f"{ONEOFF}.pem", SERVER_KEY_FILE)


def _share_keys(source: Path, target: Path) -> None:
    """Copy key files ``source`` has and ``target`` lacks (mode 0600)."""
    for name in KEY_FILES:
        if (source / name).exists() and not (target / name).exists():
            _write_private(target / name, (source / name).read_bytes())


def load_or_create(
    state_dir: Path, redirect_uris: tuple[str, ...], key_cache: Path | None = None
) -> Registry:
    """Load the registrations from ``state_dir``, creating what is missing.

    ``key_cache`` is a directory of previously generated keys to reuse (and to
    fill): tests start many sandboxes and RSA key generation is the slow part.
    """
    state_dir.mkdir(parents=True, exist_ok=True)
    if key_cache is not None:
        key_cache.mkdir(parents=True, exist_ok=True)
        with FileLock(str(key_cache / ".sandbox.lock")):
            _share_keys(key_cache, state_dir)
    with FileLock(str(state_dir / ".sandbox.lock")):
        state_path = state_dir / STATE_FILE
        if state_path.exists():
            try:
                state = json.loads(state_path.read_text())
                application_id = state["application_id"]
                contract_ids = {c["name"]: c["contract_id"] for c in state["contracts"]}
            except (ValueError, KeyError, TypeError) as exc:
                raise ValueError(
                    f"{state_path} is not a sandbox state file ({exc}); "
                    "delete the directory to start afresh"
                ) from exc
        else:
            application_id = "sandbox-app-" + secrets.token_hex(6)
            contract_ids = {}
        for name in (ONGOING, ONEOFF):
            contract_ids.setdefault(name, f"sandbox-{name}-" + secrets.token_hex(6))

        keys: dict[str, rsa.RSAPrivateKey] = {}
        for name in (ONGOING, ONEOFF):
            path = state_dir / f"{name}.pem"
            if path.exists():
                keys[name] = _load_private(path)
            else:
                keys[name] = generate_key()
                _write_private(path, pkcs1_private_pem(keys[name]))
        server_path = state_dir / SERVER_KEY_FILE
        if server_path.exists():
            server_key = _load_private(server_path)
        else:
            server_key = generate_key()
            _write_private(server_path, pkcs1_private_pem(server_key))

        state = {
            "application_id": application_id,
            "contracts": [
                {"name": name, "contract_id": contract_ids[name], "kind": name}
                for name in (ONGOING, ONEOFF)
            ],
        }
        tmp = state_path.with_name(STATE_FILE + ".tmp")
        tmp.write_text(json.dumps(state, indent=2) + "\n")
        os.replace(tmp, state_path)
    if key_cache is not None:
        with FileLock(str(key_cache / ".sandbox.lock")):
            _share_keys(state_dir, key_cache)

    contracts = {}
    for name in (ONGOING, ONEOFF):
        contract = Contract(
            name=name,
            contract_id=contract_ids[name],
            kind=name,
            public_key=keys[name].public_key(),
            redirect_uris=tuple(redirect_uris),
            key_path=state_dir / f"{name}.pem",
        )
        contracts[f"{application_id}_{contract.contract_id}"] = contract
    return Registry(
        application_id=application_id,
        contracts=contracts,
        server_key=server_key,
        server_kid=kid_for(server_key.public_key()),
        state_dir=state_dir,
    )


def _toml_string(value: str) -> str:
    return json.dumps(value)  # a JSON string is a valid TOML basic string


def client_config(
    registry: Registry,
    contract: Contract,
    base_url: str,
    onboard_url: str,
    *,
    api: str = "v1.7",
) -> str:
    """The text of a ready-to-use ``privateshare.toml`` for one contract and API profile.

    For v1.5, ``onboard_url`` is the sandbox's stand-in for the digi.me app, which
    opens ``digime://consent-access`` links over HTTP (the real service has none).
    """
    redirect = contract.redirect_uris[0]
    v15 = api == "v1.5"
    onboard_comment = (
        "   # v1.5: the sandbox's stand-in for the digi.me app (opens digime:// links)"
        if v15
        else ""
    )
    suffix = "-v15" if v15 else ""
    return (
        "# Written by `privateshare sandbox`; rewritten on every start.\n"
        f"# Contract: {contract.name} ({contract.kind}), API {api}\n"
        "[digime]\n"
        + (f"api = {_toml_string(api)}\n" if v15 else "")
        + f"application_id = {_toml_string(registry.application_id)}\n"
        f"contract_id = {_toml_string(contract.contract_id)}\n"
        f"base_url = {_toml_string(base_url)}\n"
        f"onboard_url = {_toml_string(onboard_url)}{onboard_comment}\n"
        f"redirect_uri = {_toml_string(redirect)}\n"
        "\n"
        "[keys]\n"
        'type = "file"\n'
        f"path = {_toml_string(contract.name + '.pem')}"
        "     # relative to this file's directory; PKCS#1 PEM, mode 0600\n"
        "\n"
        "[tokens]\n"
        'type = "file"\n'
        f"path = {_toml_string('tokens' + suffix)}\n"
        "\n"
        "[sinks.local]\n"
        'type = "file"\n'
        f"root = {_toml_string('data' + suffix)}\n"
    )


def config_key(name: str, api: str = "v1.7") -> str:
    """The key of a written config: ``ongoing``, ``oneoff``, ``ongoing-v1.5``, ``oneoff-v1.5``."""
    return name if api == "v1.7" else f"{name}-{api}"


def write_client_configs(
    registry: Registry,
    base_url: str,
    onboard_url: str,
    *,
    v15_base_url: str | None = None,
    app_url: str | None = None,
) -> dict[str, Path]:
    """Write one TOML per contract (and per API profile) into the state directory.

    Returns their paths by :func:`config_key`.
    """
    jobs = [(CONFIG_FILES, "v1.7", base_url, onboard_url)]
    if v15_base_url is not None and app_url is not None:
        jobs.append((CONFIG_FILES_V15, "v1.5", v15_base_url, app_url))
    paths = {}
    for files, api, base, onboard in jobs:
        for contract in registry.contracts.values():
            path = registry.state_dir / files[contract.name]
            tmp = path.with_name(path.name + ".tmp")
            tmp.write_text(client_config(registry, contract, base, onboard, api=api))
            os.replace(tmp, path)
            paths[config_key(contract.name, api)] = path
    return paths
