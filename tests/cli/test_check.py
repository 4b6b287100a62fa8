"""`startable check` and `startable graph`: a cluster file resolved, nothing started."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest

from startable.cli import main

SHOP = Path(__file__).resolve().parents[2] / "examples" / "shop" / "shop.toml"


def write(directory: Path, text: str) -> str:
    (directory / "m.py").write_text("A = B = Db = Web = Jobs = object\n")
    path = directory / "cluster.toml"
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return str(path)


def test_check_prints_the_resolved_cluster_and_its_order(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["check", str(SHOP)]) == 0
    out = capsys.readouterr().out
    assert f"cluster shop ({SHOP})" in out
    assert "start order" in out
    assert "  1. kv\n  2. cache\n  3. api\n  4. worker\n" in out
    assert "worker  entry worker:Worker; needs api; restart on-failure (10 in 60s" in out
    assert out.endswith("ok: 4 services, nothing started\n")


def test_services_that_need_the_same_step_start_together(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write(
        tmp_path,
        """
        [services.db]
        entry = "m:Db"
        [services.web]
        entry = "m:Web"
        depends_on = ["db"]
        replicas = 4
        listen = ["127.0.0.1:0"]
        [services.jobs]
        entry = "m:Jobs"
        depends_on = ["db"]
        """,
    )
    assert main(["check", "--json", path]) == 0
    document = json.loads(capsys.readouterr().out)
    assert document["order"] == [["db"], ["web", "jobs"]]
    web = document["services"][1]
    assert web["replicas"] == 4 and web["pool"] is True and web["listen"] == ["127.0.0.1:0"]
    assert main(["graph", path]) == 0
    assert capsys.readouterr().out == "step 1\n  db\nstep 2\n  web -> db\n  jobs -> db\n"
    assert main(["graph", "--mermaid", path]) == 0
    mermaid = capsys.readouterr().out
    assert mermaid.startswith("flowchart BT\n") and "    web --> db\n" in mermaid


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("x = ", "invalid TOML"),
        ("[services.a]\nentry = 'm:A'\ndepends_on = ['b']\n", "'b', which does not exist"),
        (
            "[services.a]\nentry = 'm:A'\ndepends_on = ['b']\n"
            "[services.b]\nentry = 'm:B'\ndepends_on = ['a']\n",
            "cycle",
        ),
        ("[services.a]\nentry = 'm:A'\nreplicas = -1\n", "replicas"),
    ],
)
def test_a_file_that_cannot_be_used_exits_2_naming_the_problem(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str, problem: str
) -> None:
    path = write(tmp_path, text)
    for command in ("check", "graph"):
        assert main([command, path]) == 2
        captured = capsys.readouterr()
        assert captured.out == ""
        assert captured.err.startswith(f"startable: error: {path}")
        assert problem in captured.err


def test_a_missing_file_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check", str(tmp_path / "nope.toml")]) == 2
    assert "nope.toml" in capsys.readouterr().err


def test_the_operator_commands_are_the_control_sockets() -> None:
    from startable.cli import OPERATOR_COMMANDS
    from startable.cli._control import COMMANDS

    assert OPERATOR_COMMANDS == COMMANDS


def test_a_short_key_in_the_environment_is_refused_before_anything_starts(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write(tmp_path, '[cluster]\nredis = "embedded"\n[services.a]\nentry = "m:A"\n')
    monkeypatch.setenv("STARTABLE_CLUSTER_KEY", "short")
    for command in ("check", "up"):
        assert main([command, path]) == 2
        err = capsys.readouterr().err
        assert "$STARTABLE_CLUSTER_KEY has 5 bytes; a cluster key has 32 or more" in err
        assert "Traceback" not in err


def test_up_without_a_file_asks_for_the_file_alone(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["up"])
    assert exited.value.code == 2
    assert capsys.readouterr().err.endswith("the following arguments are required: FILE\n")
