"""Log files of `startable up`: one per service, rotated by size, kept safe."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from startable.cli._logfiles import LogFiles
from startable.cluster import ClusterFileError, OutputLine, parse_cluster


def line(text: str, replica: int | None = None) -> OutputLine:
    return OutputLine("stdout", text, 1796400000.25, replica)


def test_each_service_has_its_file_with_a_time_and_stream_on_every_line(tmp_path: Path) -> None:
    files = LogFiles(str(tmp_path / "logs"), 10_000, 2)
    files.write("web", line("hello"))
    files.write("web", line("from #3", replica=3))
    files.write("db", OutputLine("stderr", "oops \x1b[2J", 1796400000.25))
    files.close()
    assert (tmp_path / "logs" / "web.log").read_text().splitlines() == [
        "2026-12-04T16:00:00.250+00:00 stdout hello",
        "2026-12-04T16:00:00.250+00:00 stdout #3 from #3",
    ]
    # A control character is shown, never written raw (a terminal reading it would obey it).
    assert (tmp_path / "logs" / "db.log").read_text() == (
        "2026-12-04T16:00:00.250+00:00 stderr oops \\x1b[2J\n"
    )
    assert stat.S_IMODE(os.stat(tmp_path / "logs").st_mode) == 0o700
    assert stat.S_IMODE(os.stat(tmp_path / "logs" / "web.log").st_mode) == 0o600


def test_a_full_file_is_rotated_and_only_keep_are_kept(tmp_path: Path) -> None:
    files = LogFiles(str(tmp_path), 100, 2)
    for number in range(20):  # each line is 50 bytes: two fit in a file
        files.write("web", line(f"line {number:02d}".ljust(11)))
    files.close()
    names = sorted(path.name for path in tmp_path.iterdir())
    assert names == ["web.log", "web.log.1", "web.log.2"]
    for path in tmp_path.iterdir():
        assert path.stat().st_size <= 100
    assert "line 19" in (tmp_path / "web.log").read_text()
    assert "line 17" in (tmp_path / "web.log.1").read_text()
    assert "line 15" in (tmp_path / "web.log.2").read_text()


def test_with_keep_0_the_file_starts_afresh(tmp_path: Path) -> None:
    files = LogFiles(str(tmp_path), 60, 0)
    for number in range(5):
        files.write("web", line(f"line {number}"))
    files.close()
    assert [path.name for path in tmp_path.iterdir()] == ["web.log"]
    assert "line 4" in (tmp_path / "web.log").read_text()


def test_a_line_longer_than_max_size_is_written_whole_in_a_file_of_its_own(
    tmp_path: Path,
) -> None:
    files = LogFiles(str(tmp_path), 50, 3)
    files.write("web", line("short"))
    files.write("web", line("x" * 200))
    files.close()
    assert "x" * 200 in (tmp_path / "web.log").read_text()
    assert "short" in (tmp_path / "web.log.1").read_text()


def test_a_link_in_place_of_a_log_file_is_not_followed_and_the_line_is_counted_lost(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    target = tmp_path / "precious"
    target.write_text("keep me\n")
    (tmp_path / "web.log").symlink_to(target)
    files = LogFiles(str(tmp_path), 1000, 1)
    files.write("web", line("attack"))
    files.write("web", line("again"))
    files.write("db", line("unaffected"))
    files.close()
    assert target.read_text() == "keep me\n"
    assert files.lost == {"web": 2}
    assert "could not be written" in caplog.text
    assert "unaffected" in (tmp_path / "db.log").read_text()


def test_the_cluster_file_names_the_directory_size_and_count(tmp_path: Path) -> None:
    text = '[cluster.logs]\ndirectory = "var/log"\nmax_size = "2MiB"\nkeep = 7\n'
    text += '[services.kv]\ncommand = "sleep 60"\n'
    cluster = parse_cluster(text, directory=str(tmp_path), check_environment=False)
    assert cluster.log_directory == str(tmp_path / "var" / "log")
    assert (cluster.log_max_size, cluster.log_keep) == (2 * 2**20, 7)
    defaults = parse_cluster(
        '[cluster.logs]\ndirectory = "l"\n[services.kv]\ncommand = "sleep 60"\n',
        check_environment=False,
    )
    assert (defaults.log_max_size, defaults.log_keep) == (10 * 2**20, 5)


@pytest.mark.parametrize(
    ("logs", "key", "fragment"),
    [
        ("keep = 1", "cluster.logs", "missing required key 'directory'"),
        ('directory = "l"\nmax_size = "huge"', "cluster.logs.max_size", "expected a size"),
        ('directory = "l"\nmax_size = 0', "cluster.logs.max_size", "must be positive"),
        ('directory = "l"\nkeep = -1', "cluster.logs.keep", "must be zero or more"),
        ('directory = "l"\nkeep = 5000', "cluster.logs.keep", "1000 files at most"),
        ('directory = "l"\nrotate = 1', "cluster.logs", "unknown key 'rotate'"),
    ],
)
def test_bad_log_settings_are_refused(logs: str, key: str, fragment: str) -> None:
    text = f'[cluster.logs]\n{logs}\n[services.kv]\ncommand = "sleep 60"\n'
    with pytest.raises(ClusterFileError) as caught:
        parse_cluster(text, check_environment=False)
    assert caught.value.key == key
    assert fragment in caught.value.problem
