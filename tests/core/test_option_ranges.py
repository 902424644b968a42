"""Out-of-range and malformed option values: a located config error, found by `config check`.

Every case goes through the config path a user takes (``inspect_config`` for the core
tables, ``check_config`` for the plugin tables, which decodes each plugin's ``Options``
without starting it) and checks the whole message: where, key, expected, found, fix.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from privateshare.cli import main
from privateshare.config import inspect_config
from privateshare.hooks.loading import check_config

PEM = (
    "-----BEGIN PRIVATE KEY-----\nMIIEvQIBADANBgkqhkiG9w0BAQEFAASCBKcwggSjAgEAAoIBAQC7VJTUt9Us8cKj"
    "\nMzEfYyjiWA4R4/M2bS1GB4t7NXp98C3SC6dVMvDuictGeurT8jNbvJZHtCSuYEvu\n"
    "-----END PRIVATE KEY-----\n"
)


def problems(tmp_path: Path, **tables: Any) -> list[str]:
    raw: dict[str, Any] = {
        "digime": {"application_id": "app", "contract_id": "c1"},
        "keys": {"type": "file", "path": "contract.pem"},
        "sinks": {"local": {"type": "file", "root": "data"}},
    }
    for name, table in tables.items():
        if name.startswith("sinks_"):
            raw["sinks"] = {name.removeprefix("sinks_"): table}
        elif name in raw and "type" not in table:
            raw[name] = {**raw[name], **table}
        else:
            raw[name] = table
    config, found = inspect_config(raw, "test.toml", tmp_path)
    return found + check_config(config)


def the_problem(tmp_path: Path, **tables: Any) -> str:
    found = problems(tmp_path, **tables)
    assert len(found) == 1, found
    return found[0]


# --- the core tables ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "value", "expected"),
    [
        ("concurrency", 0, "[pull] concurrency: expected an integer >= 1, found 0; change it, "
         "or remove the key for the default 8"),
        ("concurrency", -4, "[pull] concurrency: expected an integer >= 1, found -4;"),
        ("concurrency", 100_000, "expected an integer <= 1024, found 100000;"),
        ("user_concurrency", 0, "[pull] user_concurrency: expected an integer >= 1, found 0; "),
        ("poll_interval", -1, "[pull] poll_interval: expected a number > 0, found -1; change "
         "it, or remove the key for the default 3"),
        ("poll_interval", 0.0, "[pull] poll_interval: expected a number > 0, found 0.0;"),
        ("max_pending", math.nan, "[pull] max_pending: expected a number > 0, found nan;"),
        ("max_unchanged", -300.0, "[pull] max_unchanged: expected a number > 0, found -300.0;"),
        ("timeout", 0, "[pull] timeout: expected a number > 0, found 0; change it, or remove "
         "the key for the default 1800"),
        ("timeout", math.inf, "[pull] timeout: expected a number <= 2592000, found inf;"),
        ("file_attempts", 0, "[pull] file_attempts: expected an integer >= 1, found 0;"),
        ("file_attempts", -1, "[pull] file_attempts: expected an integer >= 1, found -1;"),
    ],
)  # fmt: skip
def test_pull_values_out_of_range(tmp_path: Path, key: str, value: Any, expected: str) -> None:
    assert expected in the_problem(tmp_path, pull={key: value})


@pytest.mark.parametrize(
    ("key", "url", "wrong"),
    [
        ("base_url", "ftp://api.digi.me/v1.7/", "its scheme is 'ftp'"),
        ("base_url", "api.digi.me/v1.7/", "it has no scheme"),
        ("base_url", "https:///v1.7/", "it has no host"),
        ("base_url", "https://api.digi.me/v1.7/#top", "it has the fragment '#top'"),
        ("onboard_url", "https://api.digi.me:99999/apps/", "it does not parse: Port out of range"),
        ("onboard_url", "https://api.digi.me:port/apps/", "it does not parse: Port could not"),
        ("onboard_url", "https://api.digi.me/apps saas/", "it contains whitespace or a control"),
        ("redirect_uri", "127.0.0.1:8765/callback", "it has no scheme"),
        ("redirect_uri", "http://127.0.0.1:8765/callback#", "it has the fragment '#'"),
    ],
)
def test_malformed_urls_say_what_is_wrong(tmp_path: Path, key: str, url: str, wrong: str) -> None:
    problem = the_problem(tmp_path, digime={key: url})
    assert problem.startswith(
        f"[digime] {key}: expected an http:// or https:// URL with a host and no #fragment, "
        f"found {url!r} ({wrong}"
    ), problem
    assert "; change it, or remove the key for the default " in problem


def test_a_password_in_a_url_is_not_repeated(tmp_path: Path) -> None:
    problem = the_problem(tmp_path, digime={"base_url": "https://me:hunter2@api/v1.7/#x"})
    assert "hunter2" not in problem and "'https://me:***@api/v1.7/#x'" in problem


def test_every_problem_of_the_core_tables_at_once(tmp_path: Path) -> None:
    found = problems(
        tmp_path,
        digime={"contract_id": "", "base_url": "ftp://x/", "redirect_uri": "http://h/#f"},
        pull={"concurrency": 0, "timeout": -1},
    )
    assert [p.split(":")[0] for p in found] == [
        "[digime] contract_id",
        "[digime] base_url",
        "[digime] redirect_uri",
        "[pull] concurrency",
        "[pull] timeout",
    ]
    assert found[0] == "[digime] contract_id: expected a non-empty string, found ''; change it"


def test_config_check_finds_them_and_load_refuses_them(tmp_path: Path) -> None:
    path = tmp_path / "privateshare.toml"
    path.write_text(
        '[digime]\napplication_id = "a"\ncontract_id = "c"\nbase_url = "https://h/#x"\n'
        '[keys]\ntype = "file"\npath = "k.pem"\n'
        '[sinks.local]\ntype = "file"\nroot = "data"\n'
        "[pull]\npoll_interval = -1\n"
        '[sinks.db]\ntype = "sql"\nurl = "sqlite:///x.db"\ntimeout = 0\n'
    )
    result = CliRunner().invoke(main, ["config", "check", str(path)])
    assert result.exit_code == 2, result.output
    assert f"{path}: 3 problems:" in result.output
    assert "[digime] base_url: expected an http:// or https:// URL" in result.output
    assert "[pull] poll_interval: expected a number > 0, found -1;" in result.output
    assert "[sinks.db] timeout: expected a number > 0, found 0;" in result.output
    assert "Traceback" not in result.output


# --- the built-in plugins' options -----------------------------------------------------------


PLUGIN_CASES = [
    # (table, options, the expected problem)
    ("keys", {"type": "file", "path": ""},
     "[keys] path: expected a non-empty string, found ''; change it"),
    ("keys", {"type": "file", "path": PEM},
     "[keys] path: expected a path, found a string of 184 characters (not shown) (it looks "
     "like a file's content pasted in place of its path); change it"),
    ("keys", {"type": "env-key", "variable": PEM},
     "[keys] variable: expected a string matching ^[A-Za-z_][A-Za-z0-9_]*$, found a string of "
     "184 characters (not shown) (the NAME of an environment variable, not the key); change "
     'it, or remove the key for the default "PRIVATESHARE_PRIVATE_KEY"'),
    ("keys", {"type": "kms", "path": "k.kms", "timeout": -1},
     "[keys] timeout: expected a number > 0, found -1; change it, or remove the key for the "
     "default 60"),
    ("keys", {"type": "kms", "path": "k.kms", "max_attempts": 0},
     "[keys] max_attempts: expected an integer >= 1, found 0;"),
    ("keys", {"type": "kms", "path": "k.kms", "endpoint_url": "localhost:4566"},
     "[keys] endpoint_url: expected an http:// or https:// URL with a host and no #fragment, "
     "found 'localhost:4566' (its scheme is 'localhost'); change it"),
    ("keys", {"type": "kms", "s3_uri": "bucket/key"},
     "[keys] s3_uri: expected a string matching ^s3://(?P<bucket>[^/]+)/(?P<key>.+)$, found "
     "'bucket/key' (s3://bucket/key); change it"),
    ("keys", {"type": "kms", "path": "a", "variable": "B"},
     "[keys]: needs exactly one of path, variable or s3_uri (where the blob from 'privateshare "
     "keys wrap' is kept); found path and variable"),
    ("keys", {"type": "kms", "path": "a", "access_key_id": {"env": "X"}},
     "[keys] access_key_id and secret_access_key: only one is given; give both"),
    ("keys", {"type": "pkcs11", "token_label": "", "pin": {"env": "PIN"}},
     "[keys] token_label: expected a non-empty string, found ''; change it"),
    ("keys", {"type": "pkcs11", "token_label": "t", "module": "", "pin": {"env": "PIN"}},
     "[keys] module: expected a non-empty string, found ''; change it, or remove the key for "
     'the default "/usr/lib/softhsm/libsofthsm2.so"'),
    ("decryption", {"type": "digime", "max_decompressed_bytes": 0},
     "[decryption] max_decompressed_bytes: expected an integer >= 1, found 0; change it, or "
     "remove the key for the default 4294967296"),
    ("decryption", {"type": "digime", "chunk_size": 8},
     "[decryption] chunk_size: expected an integer >= 16, found 8;"),
    ("decryption", {"type": "digime", "max_ratio": 0},
     "[decryption] max_ratio: expected an integer >= 1, found 0; change it, or remove the key "
     "for the default 100"),
    ("decryption", {"type": "digime", "ratio_floor": -1},
     "[decryption] ratio_floor: expected an integer >= 0, found -1;"),
    ("sinks_local", {"type": "file", "root": ""},
     "[sinks.local] root: expected a non-empty string, found ''; change it"),
    ("sinks_lake", {"type": "s3", "bucket": "b", "part_size": 1 << 20},
     "[sinks.lake] part_size: expected an integer >= 5242880, found 1048576 (S3 parts are 5 MiB "
     "to 5 GiB); change it, or remove the key for the default 8388608"),
    ("sinks_lake", {"type": "s3", "bucket": "s3://b/prefix"},
     "[sinks.lake] bucket: expected a string matching ^[^/:\\s]+$, found 's3://b/prefix' (a "
     "bucket name, without '/' or 's3://'; put key prefixes in prefix); change it"),
    ("sinks_lake", {"type": "s3", "bucket": "b", "prefix": "a/../b"},
     "[sinks.lake] prefix: expected a key prefix, found 'a/../b' (it has a '..' segment, which "
     "could point outside the sink's root); change it"),
    ("sinks_lake", {"type": "s3", "bucket": "b", "sse_kms_key_id": "k"},
     '[sinks.lake] sse_kms_key_id: it needs server_side_encryption = "aws:kms"'),
    ("sinks_lake", {"type": "s3", "bucket": "b", "timeout": 0},
     "[sinks.lake] timeout: expected a number > 0, found 0;"),
    ("sinks_db", {"type": "sql", "url": "sqlite:///x.db", "timeout": -5},
     "[sinks.db] timeout: expected a number > 0, found -5; change it, or remove the key for the "
     "default 30"),
    ("sinks_db", {"type": "sql", "url": "sqlite:///x.db", "pool_size": 0},
     "[sinks.db] pool_size: expected an integer >= 1, found 0;"),
    ("sinks_db", {"type": "sql", "url": "sqlite:///x.db", "objects_max_bytes": -1},
     "[sinks.db] objects_max_bytes: expected an integer >= 0, found -1;"),
    ("sinks_db", {"type": "sql", "url": "sqlite:///x.db", "table_prefix": "bad-prefix"},
     "[sinks.db] table_prefix: expected a string matching ^[A-Za-z_][A-Za-z0-9_]{0,39}$, found "
     "'bad-prefix' (a plain SQL name: letters, digits and _, at most 40, no leading digit); "
     'change it, or remove the key for the default "privateshare_"'),
    ("sinks_db", {"type": "sql", "url": "oracle://scott@db/orcl"},
     "[sinks.db] url: expected the SQLAlchemy URL of a SQLite, PostgreSQL or MariaDB/MySQL "
     "database, found 'oracle://scott@db/orcl' (the database 'oracle' is not supported;"),
    ("sinks_db", {"type": "sql", "url": "sqlite://"},
     "[sinks.db] url: expected the SQLAlchemy URL of a SQLite, PostgreSQL or MariaDB/MySQL "
     "database, found 'sqlite://' (an in-memory SQLite database would lose everything"),
]  # fmt: skip


@pytest.mark.parametrize(("table", "options", "expected"), PLUGIN_CASES)
def test_plugin_options_out_of_range(
    tmp_path: Path, table: str, options: dict[str, Any], expected: str
) -> None:
    problem = the_problem(tmp_path, **{table: options})
    assert problem.startswith(expected), problem
    assert "MIIEvQIBADANBgkqhkiG9w0BAQEFAASC" not in problem


def test_a_password_in_a_database_url_is_not_repeated(tmp_path: Path) -> None:
    problem = the_problem(tmp_path, sinks_db={"type": "sql", "url": "postgres ql://u:pw99@h/db"})
    assert "pw99" not in problem and "'postgres ql://u:***@h/db'" in problem
