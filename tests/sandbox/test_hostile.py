"""The hostile library: entries dated 0 or negative, entries with unsafe names."""

from __future__ import annotations

import hashlib
import http.client
from email.utils import parsedate_to_datetime
from urllib.parse import quote

import pytest

from privateshare.sandbox import Sandbox, SandboxSettings
from privateshare.sandbox.hostile import NONPOSITIVE_DATES, UNSAFE_NAMES, harden
from privateshare.sandbox.library import generate_library

from .conftest import RawClient, decrypt


def final_list(c: RawClient) -> tuple[list[dict], dict, str]:
    tokens, session = c.onboard()
    body = c.file_list(session["key"], tokens.access).json()
    assert body["status"]["state"] == "completed"
    return body["fileList"], session, tokens.access


def test_nonpositive_dates_are_listed_and_served(make_sandbox) -> None:
    sb = make_sandbox(files=20, nonpositive_dates=5)
    c = RawClient(sb)
    entries, session, access = final_list(c)
    bad = {e["name"]: e["updatedDate"] for e in entries if e["updatedDate"] <= 0}
    assert len(bad) == 5 and len(entries) == 20
    assert set(bad.values()) == set(NONPOSITIVE_DATES)
    for name in bad:
        r = c.file(session["key"], name, access)
        assert r.status_code == 200
        assert parsedate_to_datetime(r.headers["Last-Modified"]).timestamp() <= 0
        plain = decrypt(r.content, c.key, c.metadata(r).get("compression"))
        assert hashlib.sha256(plain).hexdigest() == sb.ground_truth()[name]
    # Reproducible: the same seed dates the same files.
    again = make_sandbox(files=20, nonpositive_dates=5)
    assert {f.name for f in again.library.files if f.latest.updated_date <= 0} == set(bad)


def test_nonpositive_dates_beyond_the_library_date_every_file(make_sandbox) -> None:
    sb = make_sandbox(files=3, nonpositive_dates=10)
    assert all(v.updated_date <= 0 for f in sb.library.files for v in f.versions)


def test_unsafe_names_are_listed_and_served_as_one_segment(make_sandbox) -> None:
    sb = make_sandbox(files=12, unsafe_names=True)
    c = RawClient(sb)
    entries, session, access = final_list(c)
    listed = [e["name"] for e in entries]
    assert set(UNSAFE_NAMES) <= set(listed) and len(listed) == 12 + len(UNSAFE_NAMES)
    truth = sb.ground_truth()
    assert set(UNSAFE_NAMES) <= set(truth)
    bearer = {"Authorization": "Bearer " + c.sign({"access_token": access})}
    for name in UNSAFE_NAMES:
        if not name:
            continue  # an empty name cannot be requested at all
        # http.client sends the path as given: no dot-segment normalisation on the way.
        conn = http.client.HTTPConnection("127.0.0.1", sb.port, timeout=30)
        path = f"/v1.7/permission-access/query/{session['key']}/{quote(name, safe='')}"
        conn.request("GET", path, headers=bearer)
        response = conn.getresponse()
        body = response.read()
        conn.close()
        assert response.status == 200, (name, body[:200])
        meta = response.getheader("x-metadata")
        assert meta is not None
        compression = sb.library.file(name).latest.compression
        assert hashlib.sha256(decrypt(body, c.key, compression)).hexdigest() == truth[name]
        bearer = {"Authorization": "Bearer " + c.sign({"access_token": access})}


def test_hostile_settings_are_checked() -> None:
    with pytest.raises(ValueError, match="nonpositive_dates"):
        SandboxSettings(nonpositive_dates=-1)
    with pytest.raises(ValueError, match="files must be at least 1"):
        SandboxSettings(files=0, unsafe_names=True)
    only_large = generate_library(files=0, large_files=1, large_file_size=1024)
    with pytest.raises(ValueError, match="unsafe_names needs at least one"):
        harden(only_large, SandboxSettings(unsafe_names=True))


def test_no_hostile_entries_by_default(sandbox: Sandbox) -> None:
    assert all(f.latest.updated_date > 0 for f in sandbox.library.files)
    assert not set(UNSAFE_NAMES) & set(sandbox.ground_truth())
