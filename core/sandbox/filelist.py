"""The file-list state machine: ``pending`` -> ``running`` -> ``completed``/``partial``.

A session's list polls are numbered from its consent. The first
``pending_polls`` answer ``pending`` (no list); the next ``running_polls``
answer ``running`` with files appearing and files that have two versions
listed at their first version; every later poll answers the final list, with
each file at its last version. With both counts 0 the first poll is final.
"""

from __future__ import annotations

import math
from typing import Any

from .library import FileVersion, Library, LibraryFile

#: The mapped-metadata keys that are copied into file-list entries.
_LIST_KEYS = ("serviceGroup", "serviceName", "objectType", "objectCount", "schema")


def final_stage(pending_polls: int, running_polls: int) -> int:
    """The stage number of the final list."""
    return pending_polls + running_polls


def _selected(library: Library, account_filter: frozenset[str] | None) -> list[LibraryFile]:
    if account_filter is None:
        return list(library.files)
    return [f for f in library.files if f.account_id in account_filter]


def visible(
    library: Library,
    stage: int | None,
    pending_polls: int,
    running_polls: int,
    account_filter: frozenset[str] | None = None,
) -> dict[str, FileVersion]:
    """The files (and which version of each) a poll at ``stage`` shows."""
    if stage is None or stage < pending_polls:
        return {}
    files = _selected(library, account_filter)
    if stage >= final_stage(pending_polls, running_polls):
        return {f.name: f.versions[-1] for f in files}
    running = stage - pending_polls
    singles = [f for f in files if len(f.versions) == 1]
    shown_singles = math.ceil(len(singles) * (running + 1) / (running_polls + 1))
    shown = {f.name for f in singles[:shown_singles]}
    result: dict[str, FileVersion] = {}
    for f in files:
        if len(f.versions) > 1:
            result[f.name] = f.versions[0]
        elif f.name in shown:
            result[f.name] = f.versions[-1]
    return result


def list_entry(name: str, version: FileVersion) -> dict[str, Any]:
    """One ``fileList`` entry: name, updatedDate and the mapped-metadata summary."""
    entry: dict[str, Any] = {"name": name, "updatedDate": version.updated_date}
    metadata = version.x_metadata.get("metadata")
    if isinstance(metadata, dict):
        for key in _LIST_KEYS:
            if key in metadata:
                entry[key] = metadata[key]
    return entry


def partial_error() -> dict[str, Any]:
    """The per-account error of an account that needs reauthorization."""
    return {
        "code": "ServiceAuthorizationError",
        "statusCode": 511,
        "message": "The service authorization has expired; the user must reauthorize the account",
        "reauth": True,
    }


def status_body(
    library: Library,
    stage: int,
    pending_polls: int,
    running_polls: int,
    *,
    account_filter: frozenset[str] | None = None,
    needs_reauth: frozenset[str] = frozenset(),
) -> dict[str, Any]:
    """The whole ``GET permission-access/query/{sessionKey}`` body for a stage.

    Accounts in ``needs_reauth`` end ``partial`` with ``ServiceAuthorizationError``.
    """
    if stage < pending_polls:
        return {"status": {"state": "pending"}}
    accounts = [
        str(a["id"])
        for a in library.accounts
        if account_filter is None or str(a["id"]) in account_filter
    ]
    final = stage >= final_stage(pending_polls, running_polls)
    details: dict[str, Any] = {}
    state = "completed" if final else "running"
    for account_id in accounts:
        if not final:
            details[account_id] = {"state": "running"}
        elif account_id in needs_reauth:
            details[account_id] = {"state": "partial", "error": partial_error()}
            state = "partial"
        else:
            details[account_id] = {"state": "completed"}
    files = visible(library, stage, pending_polls, running_polls, account_filter)
    return {
        "status": {"state": state, "details": details},
        "fileList": [list_entry(name, version) for name, version in files.items()],
    }


def v15_body(body: dict[str, Any]) -> dict[str, Any]:
    """The same answer as API v1.5 gives it (protocol.md#files): entries ``{name, updatedDate}``
    only,
    and each account's ``{state}`` without an error object."""
    status = dict(body["status"])
    if "details" in status:
        status["details"] = {a: {"state": d["state"]} for a, d in status["details"].items()}
    result: dict[str, Any] = {"status": status}
    if "fileList" in body:
        result["fileList"] = [
            {"name": e["name"], "updatedDate": e["updatedDate"]} for e in body["fileList"]
        ]
    return result
