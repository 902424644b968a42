"""A real PKCS#11 token for tests: SoftHSM2 in a temporary directory.

Load it with ``pytest_plugins = ["privateshare.testing.softhsm"]`` in a test module.

``softhsm`` (session) writes a SoftHSM2 config under a temp directory, points
``SOFTHSM2_CONF`` at it and initialises the tokens with ``softhsm2-util``. All
tokens are made up front: SoftHSM2 reads its token list once per process, at
``C_Initialize``, so a token created later is not seen by this process (keys
imported later into an existing token are). When SoftHSM2 is not installed the
tests are skipped with the fix, except under CI (``CI`` set), where they fail:
CI installs it (``.ci/run``).
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest

__all__ = ["SOFTHSM_MODULE", "SoftHsm", "find_softhsm", "softhsm", "start_softhsm"]

SOFTHSM_MODULE = "/usr/lib/softhsm/libsofthsm2.so"
_MODULE_PLACES = (
    SOFTHSM_MODULE,
    "/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so",
    "/usr/lib/aarch64-linux-gnu/softhsm/libsofthsm2.so",
    "/usr/local/lib/softhsm/libsofthsm2.so",
    "/opt/homebrew/lib/softhsm/libsofthsm2.so",
)
#: Tokens every test session gets.
DEFAULT_TOKENS = ("privateshare-test", "privateshare-spare")


def find_softhsm() -> tuple[str, str] | None:
    """(softhsm2-util, module path), or ``None`` when SoftHSM2 is not installed."""
    util = shutil.which("softhsm2-util")
    module = next((p for p in _MODULE_PLACES if Path(p).is_file()), None)
    if util is None or module is None:
        return None
    return util, module


@dataclass
class SoftHsm:
    """SoftHSM2 set up in ``directory``: its module, config, tokens and their PINs."""

    directory: Path
    module: str
    util: str
    tokens: tuple[str, ...]
    pin: str = field(repr=False)
    so_pin: str = field(repr=False)

    @property
    def conf(self) -> Path:
        return self.directory / "softhsm2.conf"

    def env(self) -> dict[str, str]:
        """Environment for a subprocess that uses these tokens (PIN in PRIVATESHARE_HSM_PIN)."""
        return {**os.environ, "SOFTHSM2_CONF": str(self.conf), "PRIVATESHARE_HSM_PIN": self.pin}

    def import_key(self, pem: Path, key_label: str, token: str | None = None) -> str:
        """Import ``pem`` with ``privateshare keys import-pkcs11`` in a subprocess; its output."""
        result = subprocess.run(
            [
                sys.executable,
                "-c",
                "from privateshare.cli import main; main()",
                "keys",
                "import-pkcs11",
                "--module",
                self.module,
                "--token-label",
                token or self.tokens[0],
                "--key-label",
                key_label,
                "--in",
                str(pem),
                "--pin-env",
                "PRIVATESHARE_HSM_PIN",
            ],
            env=self.env(),
            capture_output=True,
            text=True,
            timeout=60,
        )
        if result.returncode != 0:
            raise RuntimeError(f"import-pkcs11 failed: {result.stderr.strip()}")
        return result.stdout


def start_softhsm(directory: Path, tokens: Sequence[str] = DEFAULT_TOKENS) -> SoftHsm:
    """Configure SoftHSM2 in ``directory``, set ``SOFTHSM2_CONF``, initialise ``tokens``."""
    found = find_softhsm()
    if found is None:
        raise RuntimeError("SoftHSM2 is not installed")
    util, module = found
    (directory / "tokens").mkdir(parents=True, exist_ok=True)
    hsm = SoftHsm(
        directory,
        module,
        util,
        tuple(tokens),
        pin=secrets.token_hex(6),
        so_pin=secrets.token_hex(6),
    )
    hsm.conf.write_text(
        f"directories.tokendir = {directory / 'tokens'}\n"
        "objectstore.backend = file\n"
        "log.level = ERROR\n"
        "slots.removable = false\n"
    )
    os.environ["SOFTHSM2_CONF"] = str(hsm.conf)
    for label in tokens:
        subprocess.run(
            [
                util,
                "--init-token",
                "--free",
                "--label",
                label,
                "--pin",
                hsm.pin,
                "--so-pin",
                hsm.so_pin,
            ],
            check=True,
            capture_output=True,
            env=hsm.env(),
            timeout=60,
        )
    return hsm


@pytest.fixture(scope="session")
def softhsm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SoftHsm]:
    """SoftHSM2 with fresh tokens for this session; skipped (locally) when not installed."""
    if find_softhsm() is None:
        message = (
            "SoftHSM2 is not installed (softhsm2-util and libsofthsm2.so); install it with "
            "'apt-get install softhsm2' (Debian/Ubuntu) or 'brew install softhsm'"
        )
        if os.environ.get("CI"):
            pytest.fail(f"{message}: CI must run the PKCS#11 tests", pytrace=False)
        pytest.skip(message)
    previous = os.environ.get("SOFTHSM2_CONF")
    hsm = start_softhsm(tmp_path_factory.mktemp("softhsm"))
    try:
        yield hsm
    finally:
        if previous is None:
            os.environ.pop("SOFTHSM2_CONF", None)
        else:
            os.environ["SOFTHSM2_CONF"] = previous
