"""``privateshare.models``: what the domain objects decide on their own, and what they hide."""

from __future__ import annotations

import json

import msgspec
import pytest

from privateshare.models import (
    MAX_FAILURES_LISTED,
    DataFile,
    FileFailure,
    FileList,
    FileMetadata,
    RevokeUrl,
    RunSummary,
    Session,
    SourceQuery,
    SourcesPage,
    Token,
    UserAccessToken,
)


def test_a_token_expires_with_leeway_and_an_unknown_expiry_never_does() -> None:
    token = Token("v", expiry=1000)
    assert not token.expired(now=900)
    assert token.expired(now=980)  # within the 30 s leeway
    assert not token.expired(now=980, leeway=0)
    assert token.expired(now=1000, leeway=0)
    assert not Token("v").expired(now=10**12)


def test_no_secret_appears_in_a_repr() -> None:
    access, refresh = Token("ACCESS-SECRET", 5), Token("REFRESH-SECRET", 6)
    texts = [
        repr(access),
        str(refresh),
        repr(UserAccessToken(access, refresh, user_id="amy", staged="STAGED-JWT")),
        repr(Session("SESSION-KEY", 7)),
        repr(RevokeUrl("https://api/revoke?code=ONE-TIME")),
    ]
    joined = "\n".join(texts)
    for secret in ("ACCESS-SECRET", "REFRESH-SECRET", "STAGED-JWT", "SESSION-KEY", "ONE-TIME"):
        assert secret not in joined
    assert "user_id='amy'" in texts[2] and "staged=<redacted>" in texts[2]
    assert "staged=None" in repr(UserAccessToken(access, refresh))


def test_raw_data_has_a_mimetype_and_mapped_data_is_json() -> None:
    raw = DataFile("amy", "photo.jpg", 1, FileMetadata({"mimetype": "image/jpeg"}))
    mapped = DataFile("amy", "18_1_1_1_1_D201801_1.json", 1)
    assert (raw.kind, raw.metadata.mimetype) == ("raw", "image/jpeg")
    assert (mapped.kind, mapped.metadata.mimetype) == ("mapped", "application/json")


def test_a_summary_is_ok_only_when_completed_without_failures_or_error() -> None:
    assert RunSummary("r", "amy", final_state="completed").ok
    assert not RunSummary("r", "amy", final_state="partial").ok
    assert not RunSummary("r", "amy", final_state="completed", error="stopped").ok
    failed = RunSummary("r", "amy", final_state="completed")
    failed.add_failure(FileFailure("a.json", "hash check failed"))
    assert not failed.ok


def test_failures_are_all_counted_but_only_the_first_are_listed() -> None:
    summary = RunSummary("r", "amy")
    for i in range(MAX_FAILURES_LISTED + 5):
        summary.add_failure(FileFailure(f"f{i}.json", "bad"))
    assert summary.files_failed_total == MAX_FAILURES_LISTED + 5
    assert len(summary.files_failed) == MAX_FAILURES_LISTED
    assert summary.files_failed[0].name == "f0.json"


def test_failures_for_one_reason_are_counted_and_listed_like_single_ones() -> None:
    summary = RunSummary("r", "amy")
    summary.add_failure(FileFailure("first.json", "bad"))
    summary.add_failures([f"f{i}.json" for i in range(MAX_FAILURES_LISTED + 5)], "late")
    summary.add_failures(["more.json"], "late")
    assert summary.files_failed_total == MAX_FAILURES_LISTED + 7
    assert len(summary.files_failed) == MAX_FAILURES_LISTED
    assert summary.files_failed[:2] == [
        FileFailure("first.json", "bad"),
        FileFailure("f0.json", "late"),
    ]
    assert summary.files_failed[-1].name == f"f{MAX_FAILURES_LISTED - 2}.json"


def test_a_sources_page_knows_whether_it_is_the_last() -> None:
    def page(count: int, offset: int, total: int) -> SourcesPage:
        data = [{"id": i, "name": f"s{i}"} for i in range(count)]
        raw = {"data": data, "limit": 10, "offset": offset, "total": total}
        return msgspec.convert(raw, SourcesPage, strict=False)

    assert not page(10, 0, 25).last
    assert page(5, 20, 25).last
    assert page(0, 30, 25).last


def test_a_source_query_sends_only_what_was_asked_and_the_sdk_defaults() -> None:
    assert SourceQuery().body() == {
        "query": {"filter": {"type": {"id": [1]}, "publishedStatus": ["approved"]}}
    }
    body = SourceQuery(
        search="bank uk",
        names=("Barclays",),
        country=(1,),
        platform=(2, 3),
        ids=(7,),
        include=("platform",),
        limit=20,
        offset=40,
        sort="desc",
    ).body()
    assert body == {
        "query": {
            "filter": {
                "type": {"id": [1]},
                "publishedStatus": ["approved"],
                "id": [7],
                "country": {"id": [1]},
                "platform": {"id": [2, 3]},
            },
            "search": {"name": ["Barclays"]},
            "queryString": "bank uk",
            "include": ["platform"],
        },
        "limit": 20,
        "offset": 40,
        "sort": {"name": "desc"},
    }


def test_file_list_codec() -> None:
    listing = msgspec.json.decode(
        json.dumps(
            {
                "status": {
                    "state": "partial",
                    "details": {
                        "acc1": {
                            "state": "partial",
                            "error": {
                                "code": "ServiceAuthorizationError",
                                "statusCode": 511,
                                "reauth": True,
                            },
                        },
                        "acc2": {"state": "completed"},
                    },
                },
                "fileList": [
                    {
                        "name": "f1.json",
                        "updatedDate": 1568716294874,
                        "schema": {"standard": "digime", "version": "1.0.0"},
                    }
                ],
            }
        ),
        type=FileList,
    )
    assert listing.status.details["acc1"].error.status_code == 511
    assert listing.file_list[0].updated_date == 1568716294874
    assert msgspec.json.decode(b'{"status":{"state":"pending"}}', type=FileList).file_list is None
    with pytest.raises(msgspec.ValidationError):
        msgspec.json.decode(b'{"status":{"state":"exploded"}}', type=FileList)
    with pytest.raises(msgspec.ValidationError):
        msgspec.json.decode(b'{"fileList":[]}', type=FileList)
