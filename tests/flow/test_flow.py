"""The flow against the sandbox over real HTTP; every file checked against ground truth.

Tests that take ``api`` run on both protocol profiles (v1.7 and v1.5); the ones
that do not exercise v1.7-only calls, or flow logic no profile changes.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from privateshare import AuthorizationRequired, ServerError, ValidationError, hookimpl
from privateshare.client import UnsupportedCall
from privateshare.flow import ConsentDenied, Flow
from privateshare.sandbox import Sandbox

from .conftest import consent, delivered, framework_for


def test_ongoing_consent_then_pull_delivers_every_file(
    sandbox: Sandbox, tmp_path: Path, api: str
) -> None:
    fw = framework_for(sandbox, tmp_path, api=api)
    flow = Flow(fw)
    token, session = consent(flow, "alice")
    assert fw.hooks.token_load("alice") == token  # ongoing: the token is kept
    summary = flow.pull("alice", token=token, session=session)
    assert summary.final_state == "completed"
    assert not summary.files_failed, summary.files_failed
    assert delivered(tmp_path, "alice") == sandbox.ground_truth()
    assert summary.files_delivered == len(sandbox.ground_truth())
    assert summary.bytes_delivered > 0


def test_saved_token_triggers_a_new_session_and_skips_what_is_delivered(
    sandbox: Sandbox, tmp_path: Path, api: str
) -> None:
    flow = Flow(framework_for(sandbox, tmp_path, api=api))
    consent(flow, "bob")
    first = flow.pull("bob")  # trigger with the saved token
    assert first.files_delivered == len(sandbox.ground_truth())
    triggers = sandbox.stats()["triggers"]
    second = flow.pull("bob")
    assert sandbox.stats()["triggers"] == triggers + 1
    assert second.files_delivered == 0
    assert second.files_skipped == len(sandbox.ground_truth())
    assert delivered(tmp_path, "bob") == sandbox.ground_truth()


def test_files_appear_and_update_while_running(
    start_sandbox: Callable[..., Sandbox], tmp_path: Path, api: str
) -> None:
    sandbox = start_sandbox(pending_polls=1, running_polls=3, updated_fraction=0.5)
    flow = Flow(framework_for(sandbox, tmp_path, api=api))
    seen: list[str] = []

    class Observer:
        @hookimpl
        def privateshare_status_changed(self, user_id: str, status: object) -> None:
            seen.append(status.state)  # type: ignore[attr-defined]

    flow.fw.pm.register(Observer())
    token, session = consent(flow, "carol")
    summary = flow.pull("carol", token=token, session=session)
    assert seen[-1] == "completed" and "running" in seen
    updated = sum(len(f.versions) > 1 for f in sandbox.library.files)
    assert updated > 0
    assert summary.files_delivered == len(sandbox.library.files) + updated
    assert delivered(tmp_path, "carol") == sandbox.ground_truth()


def test_one_off_consent_reads_once_and_keeps_no_token(
    sandbox: Sandbox, tmp_path: Path, api: str
) -> None:
    fw = framework_for(sandbox, tmp_path, contract="oneoff", api=api)
    flow = Flow(fw)
    token, session = consent(flow, "dave", once=True)
    assert fw.hooks.token_load("dave") is None
    summary = flow.pull("dave", token=token, session=session, save_token=False)
    assert delivered(tmp_path, "dave") == sandbox.ground_truth()
    assert summary.final_state == "completed"
    if api == "v1.5":
        # No token at all: the session key alone read the data (protocol.md#files).
        assert token is None and sandbox.stats()["code_exchanges"] == 0
        # A one-off contract cannot pre-authorize ongoing access.
        with pytest.raises(ServerError) as info:
            flow.client.authorize()
    else:
        # A one-off contract refuses a new session with the token.
        assert token is not None
        with pytest.raises(ServerError) as info:
            flow.client.trigger(token)
    assert info.value.code == "InsufficientScope"


def test_refresh_mid_run_happens_once_with_many_concurrent_downloads(
    start_sandbox: Callable[..., Sandbox], tmp_path: Path
) -> None:
    # v1.7 only: v1.5 reads with the session key alone, so no token runs out mid-run
    # (its refresh happens at trigger time: test_flow_v15.py).
    # The first access token runs out after 40 uses, mid-way through ~60 downloads made
    # 16 at a time: many downloads hit the 401 together, and exactly one refresh follows.
    sandbox = start_sandbox(files=60, access_token_max_uses=40)
    fw = framework_for(sandbox, tmp_path, pull={"concurrency": 16, "poll_interval": 0.05})
    flow = Flow(fw)
    refreshed: list[str] = []

    class Observer:
        @hookimpl
        def privateshare_token_refreshed(self, user_id: str) -> None:
            refreshed.append(user_id)

    fw.pm.register(Observer())
    token, session = consent(flow, "erin")
    summary = flow.pull("erin", token=token, session=session)
    assert not summary.files_failed, summary.files_failed[:3]
    assert delivered(tmp_path, "erin") == sandbox.ground_truth()
    stats = sandbox.stats()
    assert stats["errors"].get("InvalidToken", 0) > 1  # several downloads saw the 401
    assert (stats["refresh"], stats["refresh_failed"]) == (1, 0)
    assert refreshed == ["erin"]
    saved = fw.hooks.token_load("erin")
    assert saved is not None and saved != token  # the refreshed token was saved


def test_expired_refresh_token_requires_authorization(
    start_sandbox: Callable[..., Sandbox], tmp_path: Path, api: str
) -> None:
    sandbox = start_sandbox(access_token_lifetime=1, refresh_token_lifetime=1)
    flow = Flow(framework_for(sandbox, tmp_path, api=api))
    consent(flow, "frank")
    time.sleep(2.1)
    with pytest.raises(AuthorizationRequired) as info:
        flow.pull("frank")
    assert "privateshare authorize --user frank" in str(info.value)


def test_partial_library_reports_the_account_with_a_reauthorize_url(
    start_sandbox: Callable[..., Sandbox], tmp_path: Path, api: str
) -> None:
    sandbox = start_sandbox(partial=True)
    flow = Flow(framework_for(sandbox, tmp_path, api=api))
    token, session = consent(flow, "gina")
    summary = flow.pull("gina", token=token, session=session)
    assert summary.final_state == "partial"
    account = sandbox.library.partial_account_id
    assert account is not None
    assert summary.accounts[account].state == "partial"
    assert not summary.ok
    if api == "v1.5":
        # v1.5 reports the state only (protocol.md#files) and has no reauthorization call.
        assert summary.accounts[account].error is None
        assert summary.reauthorize_urls == {}
        return
    assert summary.accounts[account].error is not None
    assert summary.accounts[account].error.code == "ServiceAuthorizationError"
    assert summary.reauthorize_urls[account].startswith(sandbox.onboard_url)
    assert not summary.ok


def test_transient_faults_are_retried_with_fresh_signatures(
    start_sandbox: Callable[..., Sandbox], tmp_path: Path, api: str
) -> None:
    sandbox = start_sandbox(files=40, error_rate=0.2, reset_rate=0.05, truncate_rate=0.15)
    fw = framework_for(
        sandbox,
        tmp_path,
        api=api,
        pull={"file_attempts": 6, "poll_interval": 0.05},
        transport={"type": "requests", "backoff": 0.01, "retries": 5},
    )
    flow = Flow(fw)
    token, session = consent(flow, "hank")
    summary = flow.pull("hank", token=token, session=session)
    faults = sandbox.stats()["faults"]
    assert sum(faults.values()) > 0, "the fault knobs did not fire"
    assert not summary.files_failed, summary.files_failed[:3]
    assert delivered(tmp_path, "hank") == sandbox.ground_truth()


def test_corrupt_files_fail_alone_and_are_retried_next_run(
    start_sandbox: Callable[..., Sandbox], tmp_path: Path, api: str
) -> None:
    # v1.7 files carry no MAC (protocol.md#file-format): a flipped byte is caught only where
    # padding or a checksum notices. Of the formats only gzip has one (CRC-32), so we
    # demand detection for gzip files; brotli and plain files can be silently wrong.
    # v1.5 files carry a SHA-512 of the payload (protocol.md#file-format): every corrupt file is
    # caught.
    sandbox = start_sandbox(files=30, corrupt_rate=0.3, bad_metadata_rate=0.1)
    flow = Flow(framework_for(sandbox, tmp_path, api=api))
    failed: list[str] = []

    class Observer:
        @hookimpl
        def privateshare_file_failed(self, file_name: str, error: Exception) -> None:
            failed.append(file_name)

    flow.fw.pm.register(Observer())
    consent(flow, "ivy")
    first = flow.pull("ivy")
    assert first.files_failed and len(failed) == len(first.files_failed)
    truth = sandbox.ground_truth()
    got = delivered(tmp_path, "ivy")
    if api == "v1.5":
        assert "hash" in {f.check for f in first.files_failed}
        assert all(truth[name] == digest for name, digest in got.items())
        compressed = set(truth)  # checked below: every file, not only gzip ones
    else:
        assert "decompression" in {f.check for f in first.files_failed}
        compressed = {f.name for f in sandbox.library.files if f.latest.compression == "gzip"}
    # A garbled x-metadata header is retried like a cut body: it fails no file.
    assert sandbox.stats()["faults"].get("bad_metadata")
    assert all(f.check is not None for f in first.files_failed), first.files_failed
    assert all(truth[name] == got[name] for name in compressed & set(got))
    assert not {f.name for f in first.files_failed} & set(got)  # nothing half-written
    # Faults are decided per attempt: a rerun fetches only the files that failed.
    for _ in range(8):
        if set(delivered(tmp_path, "ivy")) == set(truth):
            break
        again = flow.pull("ivy")
        assert again.files_skipped >= len(got)
    got = delivered(tmp_path, "ivy")
    assert set(got) == set(truth)
    assert all(truth[name] == got[name] for name in compressed)


def test_killed_run_resumes_without_duplicates_or_holes(
    start_sandbox: Callable[..., Sandbox], tmp_path: Path
) -> None:
    sandbox = start_sandbox(files=80, latency=0.02)
    fw = framework_for(sandbox, tmp_path, pull={"concurrency": 4, "poll_interval": 0.05})
    flow = Flow(fw)
    consent(flow, "jack")
    config = tmp_path / "kill.toml"
    config.write_text(_toml_of(fw))
    proc = subprocess.Popen(
        [sys.executable, "-m", "privateshare", "pull", "--config", str(config), "--user", "jack"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    deadline = time.time() + 30
    while time.time() < deadline and len(delivered(tmp_path, "jack")) < 10:
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    partial = delivered(tmp_path, "jack")
    truth = sandbox.ground_truth()
    assert 0 < len(partial) < len(truth)
    assert all(truth[name] == digest for name, digest in partial.items())
    summary = flow.pull("jack")
    assert delivered(tmp_path, "jack") == truth
    assert summary.files_delivered + summary.files_skipped == len(truth)
    leftovers = [p.name for p in (tmp_path / "data" / "jack").iterdir() if p.name.startswith(".")]
    assert leftovers == []


def test_state_mismatch_and_cancel_are_refused(sandbox: Sandbox, tmp_path: Path, api: str) -> None:
    flow = Flow(framework_for(sandbox, tmp_path, api=api))
    pending = flow.start_consent("kim")
    ok = {"result": "SUCCESS"} if api == "v1.5" else {"success": "true"}
    with pytest.raises(ValidationError) as info:
        flow.finish_consent(pending, {**ok, "code": "x", "state": "forged"})
    assert "state does not match" in str(info.value)
    # What the consent page sends back on Cancel, per profile (protocol.md#consent).
    cancel = (
        {"result": "CANCEL"} if api == "v1.5" else {"success": "false", "errorCode": "USER_CANCEL"}
    )
    with pytest.raises(ConsentDenied) as denied:
        flow.finish_consent(pending, {**cancel, "state": pending.state})
    assert denied.value.error_code == ("CANCEL" if api == "v1.5" else "USER_CANCEL")
    assert flow.fw.hooks.token_load("kim") is None


def test_server_errors_are_mapped(sandbox: Sandbox, tmp_path: Path, api: str) -> None:
    fw = framework_for(sandbox, tmp_path, api=api)
    flow = Flow(fw)
    with pytest.raises(ServerError) as info:
        flow.client.authorize(redirect_uri="http://evil.example/callback")
    assert info.value.code == "InvalidRedirectUri"
    assert info.value.status_code == 404
    assert info.value.reference != "Unknown reference"
    wrong = framework_for(sandbox, tmp_path / "w", api=api, digime={"contract_id": "nope"})
    with pytest.raises(ServerError) as info:
        Flow(wrong).client.authorize()
    # v1.5 names the contract at session establishment (protocol.md#errors), v1.7 the JWT client_id.
    assert info.value.code == ("InvalidContractId" if api == "v1.5" else "InvalidClient")


def test_foreign_jku_is_rejected(sandbox: Sandbox, tmp_path: Path, api: str) -> None:
    # Same server, but configured as "localhost": the tokens' jku names 127.0.0.1,
    # another origin as far as we are concerned, so we refuse to fetch keys there.
    base = (sandbox.base_url_v15 if api == "v1.5" else sandbox.base_url).replace(
        "127.0.0.1", "localhost"
    )
    fw = framework_for(sandbox, tmp_path, api=api, digime={"base_url": base})
    with pytest.raises(ValidationError) as info:
        Flow(fw).client.authorize()
    assert "not on the API origin" in str(info.value)


def test_accounts_and_delete_user(sandbox: Sandbox, tmp_path: Path, api: str) -> None:
    flow = Flow(framework_for(sandbox, tmp_path, api=api))
    consent(flow, "lee")
    accounts = flow.accounts("lee")  # v1.5: accounts.json of a session prepared with the token
    assert {a.id for a in accounts} == {a["id"] for a in sandbox.library.accounts}
    if api == "v1.5":
        with pytest.raises(UnsupportedCall) as info:
            flow.delete_user("lee")
        assert "DELETE user does not exist in API v1.5" in str(info.value)
        assert flow.fw.hooks.token_load("lee") is not None  # nothing forgotten half-way
        return
    assert flow.delete_user("lee") is True
    assert flow.fw.hooks.token_load("lee") is None
    assert flow.delete_user("lee") is False


def test_pull_without_token_says_what_to_do(sandbox: Sandbox, tmp_path: Path, api: str) -> None:
    flow = Flow(framework_for(sandbox, tmp_path, api=api))
    with pytest.raises(AuthorizationRequired) as info:
        flow.pull("nobody")
    assert "privateshare authorize --user nobody" in str(info.value)


def _toml_of(fw: object) -> str:
    """The framework's config as TOML text (for a subprocess)."""
    config = fw.config  # type: ignore[attr-defined]
    d = config.digime
    lines = [
        "[digime]",
        f'application_id = "{d.application_id}"',
        f'contract_id = "{d.contract_id}"',
        f'base_url = "{d.base_url}"',
        f'onboard_url = "{d.onboard_url}"',
    ]
    for spec in config.plugin_specs():
        lines.append(f"[{spec.name}]")
        lines.append(f'type = "{spec.type}"')
        for key, value in spec.options.items():
            if key == "path" and spec.family == "keys":
                value = str(config.base_dir / value)
            lines.append(f"{key} = {json.dumps(value)}")
    lines += ["[pull]", "concurrency = 4", "poll_interval = 0.05"]
    return textwrap.dedent("\n".join(lines)) + "\n"


def test_file_metadata_sample_datasets_and_reauthorize(sandbox: Sandbox, tmp_path: Path) -> None:
    # v1.7 only: v1.5 has none of these calls (test_flow_v15.py checks the clear error).
    flow = Flow(framework_for(sandbox, tmp_path))
    token, session = consent(flow, "mia")
    listing = flow.client.file_list(session.key, token)
    entry = listing.file_list[0]
    meta = flow.client.file_metadata(session.key, entry.name, token)
    expected = sandbox.library.file(entry.name).latest.x_metadata
    assert meta.metadata == expected["metadata"]
    assert meta.compression == expected.get("compression")
    datasets = flow.client.sample_datasets(1)
    assert datasets and all({"name", "description"} <= set(v) for v in datasets.values())
    start = flow.client.reauthorize(token)
    assert start.url.startswith(sandbox.onboard_url + "user-reauth?code=")
    assert len(start.code_verifier) == 43


def test_file_names_that_need_escaping_in_a_url(
    privateshare_sandbox_keys: Path, tmp_path: Path, api: str
) -> None:
    # Legal names for a file sink, but '?', '#', '%' and ' ' mean something in a URL: sent
    # raw (as the Node SDK does) they would ask for another resource.
    import dataclasses

    from privateshare.sandbox import SandboxSettings
    from privateshare.sandbox.library import generate_library

    library = generate_library(1, files=3, updated_fraction=0)
    odd = dataclasses.replace(library.files[0], name="posts 2024?#%.json")
    library = dataclasses.replace(library, files=(odd, *library.files[1:]))
    with Sandbox(
        SandboxSettings.instant(),
        state_dir=tmp_path / "sb",
        library=library,
        key_cache=privateshare_sandbox_keys,
    ) as sandbox:
        flow = Flow(framework_for(sandbox, tmp_path, api=api))
        token, session = consent(flow, "olga")
        summary = flow.pull("olga", token=token, session=session)
        assert not summary.files_failed, summary.files_failed
        assert delivered(tmp_path, "olga") == sandbox.ground_truth()
        assert "posts 2024?#%.json" in delivered(tmp_path, "olga")
