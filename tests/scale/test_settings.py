"""The [scale] table: decoded and checked like every other table, secrets by reference."""

from __future__ import annotations

import json

import click
import pytest
from click.testing import CliRunner

from privateshare.cli import main
from privateshare.config import load_config
from privateshare.errors import ConfigError
from privateshare.scale import check
from privateshare.scale.commands import COMMANDS, privateshare_register_commands
from privateshare.scale.settings import parse_every
from privateshare.testing.sandboxed import dump_toml

BASE = {
    "digime": {"application_id": "app", "contract_id": "contract"},
    "keys": {"type": "file", "path": "contract.pem"},
    "sinks": {"local": {"type": "file", "root": "data"}},
}


def config_with(scale, **tables):
    return {**BASE, **tables, "scale": scale}


def problems_of(raw, tmp_path):
    with pytest.raises(ConfigError) as caught:
        load_config(raw, tmp_path)
    return caught.value.problems


def test_defaults_and_a_password_by_reference(tmp_path, monkeypatch):
    monkeypatch.setenv("BROKER_PW", "s3cr/et:@")
    config = load_config(
        config_with(
            {
                "broker": "amqp://ps@rabbit.example:5672/vhost",
                "broker_password": {"env": "BROKER_PW"},
                "every": "15m",
            }
        ),
        tmp_path,
    )
    scale = config.scale
    assert scale.queue == "privateshare"
    assert scale.every_seconds == 900
    assert scale.many_machines  # the broker is on another machine
    assert scale.broker_url() == "amqp://ps:s3cr%2Fet%3A%40@rabbit.example:5672/vhost"
    assert "s3cr" not in repr(scale) and "s3cr" not in repr(config)
    assert load_config(BASE, tmp_path).scale is None


@pytest.mark.parametrize(
    ("scale", "expected"),
    [
        ({"broker": "http://x"}, "[scale] broker: expected a broker URL"),
        ({"broker": "redis://:hunter2@h:6379/0"}, "broker_password = { env"),
        (
            {"broker": "redis://h", "every": "soon"},
            '[scale] every: expected a duration such as "15m"',
        ),
        ({"broker": "redis://h", "every": "0s"}, "a schedule runs every 1 s to 30 days"),
        ({"broker": "redis://h", "queue": "a b"}, "[scale] queue: expected a string matching"),
        (
            {"broker": "redis://h", "soft_time_limit": 60, "time_limit": 30},
            "time_limit (30) must be longer",
        ),
        ({"broker": "redis://h", "brokr": "x"}, "did you mean 'broker'"),
        (
            {"broker": "redis://h", "broker_password": "plain"},
            "must not be written in the config file",
        ),
        ({"broker": "redis://h", "machines": "all"}, "expected one of 'auto', 'one', 'many'"),
        ({}, "[scale] broker: required but missing"),
    ],
)
def test_bad_tables_say_what_and_how_to_fix(tmp_path, scale, expected):
    problems = problems_of(config_with(scale), tmp_path)
    assert any(expected in p for p in problems), problems
    assert not any("hunter2" in p for p in problems)


def test_every_forms():
    assert parse_every("30s") == 30
    assert parse_every("1.5h") == 5400
    assert parse_every("2d") == 172800
    assert parse_every("90") == 90


def test_many_machines_need_shared_tokens_and_sinks(tmp_path):
    remote = {"broker": "redis://redis.internal:6379/0"}
    problems = check(load_config(config_with(remote), tmp_path))
    assert any(
        "[tokens] type = 'file' cannot be shared by workers on several machines" in p
        and "the broker redis://redis.internal:6379/0 is on another machine" in p
        and "refresh tokens would rotate apart" in p
        for p in problems
    ), problems
    assert any("[sinks.local] type = 'file' writes to the disk" in p for p in problems)

    sqlite_tokens = {"type": "sql", "url": "sqlite:///tokens.db"}
    problems = check(load_config(config_with(remote, tokens=sqlite_tokens), tmp_path))
    assert any("[tokens] url is a SQLite file" in p for p in problems)

    shared = config_with(
        {**remote, "shared_filesystem": True},
        tokens={"type": "sql", "url": "postgresql://ps@db.internal/privateshare"},
        sinks={
            "local": {"type": "file", "root": "/mnt/shared/data"},
            "lake": {"type": "s3", "bucket": "b"},
        },
    )
    assert check(load_config(shared, tmp_path)) == []
    # One machine (a local broker, or said so): the file stores are fine.
    assert check(load_config(config_with({"broker": "redis://127.0.0.1:6379/0"}), tmp_path)) == []
    one = config_with({**remote, "machines": "one"})
    assert check(load_config(one, tmp_path)) == []


def test_config_check_refuses_a_file_token_store_with_a_remote_broker(tmp_path):
    path = tmp_path / "privateshare.toml"
    (tmp_path / "contract.pem").write_text("unused")
    path.write_text(dump_toml(config_with({"broker": "amqp://ps@rabbit.internal//"})))
    result = CliRunner().invoke(main, ["config", "check", str(path)])
    assert result.exit_code == 2
    assert "cannot be shared by workers on several machines" in result.output
    assert "the broker amqp://ps@rabbit.internal// is on another machine" in result.output


def test_commands_without_a_scale_table_say_how_to_add_it(tmp_path):
    path = tmp_path / "privateshare.toml"
    path.write_text(dump_toml(BASE))
    for args in (["enqueue", "--all-users"], ["worker"], ["beat"]):
        result = CliRunner().invoke(main, [*args, "-c", str(path)])
        assert result.exit_code == 2, result.output
        assert "[scale] is missing; add it" in result.output


def test_beat_without_a_schedule_is_a_usage_error(tmp_path):
    path = tmp_path / "privateshare.toml"
    path.write_text(dump_toml(config_with({"broker": "redis://127.0.0.1:6379/0"})))
    result = CliRunner().invoke(main, ["beat", "-c", str(path)])
    assert result.exit_code == 2
    assert "[scale] every is not set" in result.output


def test_the_commands_hook_adds_every_command():
    group = click.Group("privateshare")
    privateshare_register_commands(group)
    assert sorted(group.commands) == sorted(c.name for c in COMMANDS)
    assert sorted(group.commands) == ["beat", "enqueue", "scale-status", "worker"]


def test_config_schema_has_the_scale_table():
    result = CliRunner().invoke(main, ["config", "schema"])
    schema = json.loads(result.output)
    ref = schema["properties"]["scale"]["$ref"].removeprefix("#/$defs/")
    assert {"broker", "queue", "every"} <= set(schema["$defs"][ref]["properties"])


def test_register_adds_our_tasks_to_your_app_with_their_guarantees(tmp_path):
    from celery import Celery

    from privateshare.scale import register
    from privateshare.scale.app import ENQUEUE_TASK, PULL_TASK

    path = tmp_path / "privateshare.toml"
    scale = {"broker": "redis://127.0.0.1:6379/0", "queue": "pulls", "soft_time_limit": 600}
    path.write_text(dump_toml(config_with({**scale, "time_limit": 660})))
    yours = Celery("yours", broker="memory://", set_as_current=False)
    yours.conf.task_default_queue = "yours"
    yours.conf.task_routes = {"mine.*": {"queue": "mine"}}
    tasks = register(yours, path)
    pull = yours.tasks[PULL_TASK]
    assert tasks[PULL_TASK].name == PULL_TASK and ENQUEUE_TASK in yours.tasks
    assert pull.acks_late and pull.reject_on_worker_lost
    assert (pull.soft_time_limit, pull.time_limit) == (600, 660)
    router = yours.amqp.router
    assert router.route({}, PULL_TASK)["queue"].name == "pulls"
    assert router.route({}, ENQUEUE_TASK)["queue"].name == "pulls"
    assert router.route({}, "mine.task")["queue"].name == "mine", "your routes are kept"
    assert yours.conf.task_default_queue == "yours", "your settings are left alone"
    assert yours.conf.broker_url == "memory://"
    # Another config's app in the same process keeps its own task, for its own config.
    other = tmp_path / "other.toml"
    other.write_text(dump_toml(config_with({"broker": "redis://127.0.0.1:6379/0"})))
    second = Celery("second", broker="memory://", set_as_current=False)
    register(second, other)
    assert second.tasks[PULL_TASK] is not yours.tasks[PULL_TASK]
    assert second.tasks[PULL_TASK].__wrapped__ is not yours.tasks[PULL_TASK].__wrapped__
