"""Tokens through the whole flow, on every built-in token store, against the sandbox.

- A process killed after the token server answered but before the answer was
  verified loses nothing: the answer was saved first, and the next run promotes it
  (refresh and code exchange, both protocol profiles).
- Tokens that live a few seconds, or expire after a few uses, deliver every file
  with a bounded number of refreshes.
"""

from __future__ import annotations

import json
import logging
import os
import pickle
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import msgspec
import pytest
import requests

from privateshare.errors import AuthorizationRequired, DigimeError
from privateshare.flow import Flow, TokenKeeper
from privateshare.framework import PrivateShare, load
from privateshare.models import Token, UserAccessToken
from privateshare.sandbox import Sandbox
from privateshare.testing.sandboxed import consent, sandbox_config, sha256_tree

from .conftest import make_sql_db

STORES = ("file", "sqlite", "postgresql")


@pytest.fixture(params=STORES)
def tokens_table(request: pytest.FixtureRequest, tmp_path: Path) -> dict[str, Any]:
    """The ``[tokens]`` table of each built-in store: file, sql on SQLite, sql on PostgreSQL."""
    if request.param == "file":
        return {"type": "file", "path": str(tmp_path / "tokens")}
    db = make_sql_db(request, request.param, tmp_path / "db")
    (tmp_path / "db").mkdir(exist_ok=True)
    return {"type": "sql", **db.options()}


@pytest.fixture(params=["v1.7", "v1.5"])
def api(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def setup(
    sandbox: Sandbox, root: Path, tokens: dict[str, Any], api: str = "v1.7", **tables: Any
) -> tuple[dict[str, Any], Path, PrivateShare]:
    raw = sandbox_config(sandbox, root, api=api, **tables)
    raw["tokens"] = tokens
    base = sandbox.config_path("ongoing", api).parent
    (root / "config.json").write_text(json.dumps(raw))
    return raw, base, load(raw, base_dir=base)


def jwks_requests(sandbox: Sandbox) -> int:
    requests_ = sandbox.stats()["requests"]
    return int(requests_.get("jwks", 0) + requests_.get("v1.5/jwks", 0))


def kill_when(proc: subprocess.Popen[str], ready: Callable[[], bool]) -> None:
    """SIGKILL ``proc`` as soon as ``ready()``; it must not finish on its own first."""
    deadline = time.monotonic() + 60  # a hang guard
    while not ready():
        if proc.poll() is not None:
            _, err = proc.communicate()
            pytest.fail(f"the process ended before the window (exit {proc.returncode}): {err}")
        assert time.monotonic() < deadline, "the process never reached the window"
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(30)


def spawn(script: str, root: Path, base: Path, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", script, str(root / "config.json"), str(base), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


_PULL = textwrap.dedent(
    """
    import json, sys
    from pathlib import Path
    from privateshare import load
    from privateshare.flow import Flow

    config, base, user = sys.argv[1:4]
    Flow(load(json.loads(Path(config).read_text()), base_dir=base)).pull(user)
    """
)

_FINISH_CONSENT = textwrap.dedent(
    """
    import json, pickle, sys
    from pathlib import Path
    from privateshare import load
    from privateshare.flow import Flow

    config, base, pending = sys.argv[1:4]
    consent, callback = pickle.loads(Path(pending).read_bytes())
    fw = load(json.loads(Path(config).read_text()), base_dir=base)
    Flow(fw).finish_consent(consent, callback)
    """
)


# --- a kill between the token server's answer and its verification ---------------------


def test_a_refresh_answer_survives_a_kill_before_verification(
    privateshare_sandbox: Callable[..., Sandbox],
    tmp_path: Path,
    tokens_table: dict[str, Any],
    api: str,
) -> None:
    # The parent's consent fetches the JWKS once; the child's is the 2nd, held unanswered.
    sandbox = privateshare_sandbox(files=12, hold_jwks=2)
    _, base, fw = setup(sandbox, tmp_path, tokens_table, api)
    flow = Flow(fw)
    token, _ = consent(flow, "zoe")
    assert token is not None
    # The saved token has expired: the child's first act is a refresh.
    expired = Token(token.access_token.value, int(time.time()) - 60)
    fw.hooks.token_save("zoe", msgspec.structs.replace(token, access_token=expired))

    child = spawn(_PULL, tmp_path, base, "zoe")
    kill_when(child, lambda: sandbox.stats()["refresh"] == 1 and jwks_requests(sandbox) == 2)

    # The server rotated the refresh token; the store kept its answer beside the old token.
    live = sandbox.app.store.refresh
    kept = fw.hooks.token_load("zoe")
    assert kept is not None and kept.staged is not None
    assert kept.refresh_token.value == token.refresh_token.value not in live

    summary = flow.pull("zoe")  # no new consent
    assert summary.final_state == "completed" and not summary.files_failed
    assert sha256_tree(tmp_path / "data" / "zoe") == sandbox.ground_truth()
    promoted = fw.hooks.token_load("zoe")
    assert promoted is not None and promoted.staged is None
    assert promoted.refresh_token.value in live  # the rotated one, from the killed run
    # ... and it is the one that refreshes next.
    fresh = TokenKeeper(flow, "zoe", promoted, save=True).refresh(stale=promoted)
    assert fresh.refresh_token.value != promoted.refresh_token.value
    stats = sandbox.stats()
    assert (stats["refresh"], stats["refresh_failed"], stats["code_exchanges"]) == (2, 0, 1)
    fw.close()


def test_a_code_exchange_answer_survives_a_kill_before_verification(
    privateshare_sandbox: Callable[..., Sandbox],
    tmp_path: Path,
    tokens_table: dict[str, Any],
    api: str,
) -> None:
    sandbox = privateshare_sandbox(files=12, hold_jwks=2)
    _, base, fw = setup(sandbox, tmp_path, tokens_table, api)
    flow = Flow(fw)
    pending = flow.start_consent("yan")  # the parent's JWKS fetch, the 1st
    location = requests.get(pending.url, allow_redirects=False, timeout=30).headers["Location"]
    callback = dict(parse_qsl(urlsplit(location).query))
    (tmp_path / "pending.pickle").write_bytes(pickle.dumps((pending, callback)))

    child = spawn(_FINISH_CONSENT, tmp_path, base, str(tmp_path / "pending.pickle"))
    kill_when(child, lambda: sandbox.stats()["code_exchanges"] == 1 and jwks_requests(sandbox) == 2)

    kept = fw.hooks.token_load("yan")
    assert kept is not None and kept.staged is not None
    assert fw.hooks.token_users() == ["yan"]

    summary = flow.pull("yan")
    assert summary.final_state == "completed" and not summary.files_failed
    assert sha256_tree(tmp_path / "data" / "yan") == sandbox.ground_truth()
    promoted = fw.hooks.token_load("yan")
    assert promoted is not None and promoted.staged is None
    assert promoted.refresh_token.value in sandbox.app.store.refresh
    assert sandbox.stats()["code_exchanges"] == 1  # the user did not consent again
    fw.close()


# --- staged answers: promoted on every load, kept when unverifiable, dropped when forged ----


class Crash(Exception):
    """Stands for a process dying between the token server's answer and its verification."""


def stage_a_refresh(fw: PrivateShare, flow: Flow, user: str) -> UserAccessToken:
    """Refresh at the server, keep the answer as the flow does, and stop right there."""
    token = fw.hooks.token_load(user)
    assert token is not None

    def crash(answer: str) -> None:
        fw.hooks.token_save(user, msgspec.structs.replace(token, staged=answer))
        raise Crash

    with pytest.raises(Crash):
        flow.client.refresh(token, on_answer=crash)
    return token


def test_every_load_promotes_a_staged_answer(
    privateshare_sandbox: Callable[..., Sandbox], tmp_path: Path, tokens_table: dict[str, Any]
) -> None:
    sandbox = privateshare_sandbox(files=4)
    _, _, fw = setup(sandbox, tmp_path, tokens_table)
    flow = Flow(fw)
    live = sandbox.app.store.refresh
    consent(flow, "ann")

    # accounts
    old = stage_a_refresh(fw, flow, "ann")
    assert old.refresh_token.value not in live
    assert [a.id for a in flow.accounts("ann")]
    assert fw.hooks.token_load("ann").staged is None  # type: ignore[union-attr]
    assert fw.hooks.token_load("ann").refresh_token.value in live  # type: ignore[union-attr]

    # the refresh of a run, under the token lock: the staged answer is adopted, not repeated
    old = stage_a_refresh(fw, flow, "ann")
    refreshes = sandbox.stats()["refresh"]
    fresh = TokenKeeper(flow, "ann", old, save=True).refresh(stale=old)
    assert fresh.refresh_token.value in live and fresh != old
    assert sandbox.stats()["refresh"] == refreshes
    assert fw.hooks.token_load("ann") == fresh

    # pull --all-users
    stage_a_refresh(fw, flow, "ann")
    (summary,) = flow.pull_all()
    assert summary.final_state == "completed" and not summary.files_failed

    # delete-user: deleted at digi.me with the promoted token, not merely forgotten here
    stage_a_refresh(fw, flow, "ann")
    assert flow.delete_user("ann") is True
    assert sandbox.stats()["requests"].get("user") == 1
    assert sandbox.stats()["errors"].get("InvalidToken", 0) == 0
    assert fw.hooks.token_load("ann") is None
    assert sandbox.stats()["refresh_failed"] == 0
    fw.close()


def test_an_answer_that_cannot_be_verified_yet_stays_staged(
    privateshare_sandbox: Callable[..., Sandbox], tmp_path: Path, tokens_table: dict[str, Any]
) -> None:
    # A second framework's JWKS fetch (the 2nd of the sandbox) gets no answer: it times out.
    sandbox = privateshare_sandbox(files=4, hold_jwks=2)
    raw, base, fw = setup(sandbox, tmp_path, tokens_table)
    flow = Flow(fw)
    consent(flow, "bea")
    stage_a_refresh(fw, flow, "bea")
    kept = fw.hooks.token_load("bea")
    assert kept is not None and kept.staged is not None

    impatient = {
        **raw,
        "transport": {**raw["transport"], "read_timeout": 1.0, "retries": 0},
        "pull": {**raw.get("pull", {}), "file_attempts": 1},  # the JWKS fetch is not retried
    }
    other = load(impatient, base_dir=base)
    with pytest.raises(DigimeError) as info:
        Flow(other).pull("bea")
    message = str(info.value)
    assert "user 'bea'" in message and "saved but could not be verified yet" in message
    assert "nothing is lost" in message and kept.staged not in message
    assert fw.hooks.token_load("bea") == kept  # still staged
    other.close()

    summary = flow.pull("bea")  # the JWKS answers again: promoted, pulled
    assert summary.final_state == "completed" and not summary.files_failed
    assert fw.hooks.token_load("bea").staged is None  # type: ignore[union-attr]
    assert sandbox.stats()["refresh_failed"] == 0
    fw.close()


def forged_answer(sandbox: Sandbox) -> str:
    """A token answer with the sandbox's jku and kid, signed by another key."""
    from cryptography.hazmat.primitives.asymmetric import rsa

    from privateshare.sandbox.jwts import ServerSigner

    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    signer = ServerSigner(other, sandbox.registry.server_kid, sandbox.jwks_url)
    return signer.sign(
        {
            "access_token": {"value": "forged-access", "expires_on": 2_000_000_000},
            "refresh_token": {"value": "forged-refresh", "expires_on": 2_000_000_000},
        }
    )


def test_a_forged_staged_answer_is_discarded_and_says_what_to_do(
    privateshare_sandbox: Callable[..., Sandbox], tmp_path: Path, tokens_table: dict[str, Any]
) -> None:
    sandbox = privateshare_sandbox(files=4)
    _, _, fw = setup(sandbox, tmp_path, tokens_table)
    flow = Flow(fw)
    token, _ = consent(flow, "cid")
    assert token is not None
    forged = forged_answer(sandbox)

    # A refresh answer: the token it would have replaced is kept.
    fw.hooks.token_save("cid", msgspec.structs.replace(token, staged=forged))
    with pytest.raises(AuthorizationRequired) as info:
        flow.pull("cid")
    message = str(info.value)
    assert "user 'cid'" in message and "failed verification" in message
    assert "discarded" in message and "privateshare authorize --user cid" in message
    assert forged not in message
    assert fw.hooks.token_load("cid") == token
    # That token still works here (the sandbox never rotated it).
    assert flow.pull("cid").final_state == "completed"

    # A code exchange's answer alone: nothing usable remains, and pulls say so.
    fw.hooks.token_save("dee", UserAccessToken(Token(""), Token(""), staged=forged))
    with pytest.raises(AuthorizationRequired, match="failed verification"):
        flow.pull("dee")
    with pytest.raises(AuthorizationRequired, match="has no saved token"):
        flow.pull("dee")
    fw.close()


# --- short-lived tokens ---------------------------------------------------------------------


def token_requests(stats: dict[str, Any]) -> int:
    """Requests that carried the access token (v1.7: trigger, file list, files)."""
    return sum(stats["requests"].get(name, 0) for name in ("trigger", "query", "file"))


@pytest.mark.parametrize("lifetime", ["uses", "seconds"])
def test_short_lived_tokens_deliver_every_file_with_bounded_refreshes(
    privateshare_sandbox: Callable[..., Sandbox],
    tmp_path: Path,
    tokens_table: dict[str, Any],
    lifetime: str,
) -> None:
    # Tokens that expire after 3 uses, or after 3 seconds (2 to 3: expiries are whole
    # seconds) in a pull that lasts several lifetimes: 96 files, 8 at a time (~33 tokens used
    # up; or 12 rounds of 0.15-0.25 s answers, ~4 s as 300 files at 0.05-0.1 s took, for a
    # third of the CPU).
    settings: dict[str, Any] = {"access_token_max_uses": 3}
    if lifetime == "seconds":
        settings = {"access_token_lifetime": 3, "latency": 0.15, "latency_jitter": 0.1}
    sandbox = privateshare_sandbox(files=96, **settings)
    _, _, fw = setup(sandbox, tmp_path, tokens_table, pull={"concurrency": 8})
    flow = Flow(fw)
    consent(flow, "eve")
    started = time.monotonic()
    summary = flow.pull("eve")
    elapsed = time.monotonic() - started
    assert not summary.files_failed, summary.files_failed[:3]
    assert summary.final_state == "completed" and not summary.error
    assert sha256_tree(tmp_path / "data" / "eve") == sandbox.ground_truth()
    stats = sandbox.stats()
    refreshes, rejected = stats["refresh"], stats["errors"].get("InvalidToken", 0)
    accepted = token_requests(stats) - rejected
    assert stats["refresh_failed"] == 0
    if lifetime == "uses":
        # Each token serves at most 3 requests, and the caller that refreshed uses it first.
        assert accepted / 3 - 1 <= refreshes <= accepted
    else:
        # A token is replaced once half its lifetime (at least 1 s) has passed, not per call.
        assert 1 <= refreshes <= elapsed + 2
    fw.close()


# --- pull --all-users: one user's trouble is theirs alone -----------------------------------


def damage(fw: PrivateShare, user: str, kind: str) -> None:
    """Overwrite a user's record with bytes that are not a sealed record, in any store."""
    store = fw.plugins["tokens"]
    store._write(store._digest(store._open(), user), kind, f"user {user!r}", b"PSTOK\x02damaged")


def test_pull_all_users_isolates_each_users_failure(
    privateshare_sandbox: Callable[..., Sandbox],
    tmp_path: Path,
    tokens_table: dict[str, Any],
    caplog: pytest.LogCaptureFixture,
) -> None:
    sandbox = privateshare_sandbox(files=4)
    _, _, fw = setup(sandbox, tmp_path, tokens_table)
    flow = Flow(fw)
    tokens = {user: consent(flow, user)[0] for user in ("amy", "bob", "cat", "dan")}
    damage(fw, "bob", "checkpoint")
    cat = tokens["cat"]
    assert cat is not None
    fw.hooks.token_save("cat", msgspec.structs.replace(cat, staged=forged_answer(sandbox)))
    damage(fw, "dan", "token")  # unreadable: whose it is cannot be known

    with caplog.at_level(logging.WARNING):
        summaries = {s.user_id: s for s in flow.pull_all()}
    assert sorted(summaries) == ["amy", "bob", "cat"]
    assert summaries["amy"].ok
    assert sha256_tree(tmp_path / "data" / "amy") == sandbox.ground_truth()
    for user, reason in (
        ("bob", "the checkpoint record of user 'bob'"),
        ("cat", "failed verification"),
    ):
        summary = summaries[user]
        assert summary.final_state == "failed" and not summary.ok
        (failure,) = summary.files_failed
        assert reason in failure.reason, failure.reason
    left_out = [r.getMessage() for r in caplog.records if "left out of the users" in r.getMessage()]
    assert len(left_out) == 1 and "not a privateshare record" in left_out[0]
    fw.close()
