"""Cluster files: what a valid file becomes, and every way one is refused."""

from __future__ import annotations

import os
import pickle
import re
import sys
import textwrap
from pathlib import Path

import pytest

from startable.cluster import (
    ClusterFile,
    ClusterFileError,
    DependencyCycleError,
    Permissions,
    RestartPolicy,
    ServiceDefinitionError,
    ServiceSpec,
    load_cluster,
    parse_cluster,
)

ROOT = Path(__file__).resolve().parents[2]
KV = '[services.kv]\nentry = "kv:Store"\n'


def write(directory: Path, text: str, name: str = "shop.toml", *, modules: bool = True) -> Path:
    """The cluster file `name`; with `modules`, a module next to it for each entry it names."""
    path = directory / name
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    for module in re.findall(r'entry = "(\w+):', text) if modules else ():
        (directory / f"{module}.py").touch()
    return path


def refused(directory: Path, text: str, *, modules: bool = True) -> ClusterFileError:
    path = write(directory, text, modules=modules)
    with pytest.raises(ClusterFileError) as info:
        load_cluster(path)
    error = info.value
    assert error.path == str(path)
    prefix = f"{path}: {error.key}: " if error.key else f"{path}: "
    assert str(error) == prefix + error.problem
    return error


def test_a_full_file_becomes_specs(tmp_path: Path) -> None:
    for directory in ("static", "var/kv", "www", "../shared/data", ".venv/bin"):
        (tmp_path / directory).mkdir(parents=True, exist_ok=True)
    (tmp_path / ".venv/bin/python").symlink_to(sys.executable)
    path = write(
        tmp_path,
        """\
        [cluster]
        name = "shop"
        stop_timeout = 12.5

        [services.kv]
        entry = "kv:KeyValueStore"
        env = { LEVEL = "debug" }
        python = ".venv/bin/python"

        [services.kv.restart]
        mode = "always"
        intensity = 3
        period = 30
        backoff = 0.5
        max_backoff = 4

        [services.kv.permissions]
        read = ["static", "/etc/hosts", "../shared/./data"]
        write = ["var/kv"]
        network = true
        subprocesses = false
        memory = "256MiB"
        cpu_time = 60
        open_files = 128

        [services.kv.timeouts]
        ready = 5
        close = 2.5
        term = 1

        [services.web]
        entry = "App"
        code = "class App: pass"
        depends_on = ["kv"]
        may_create_services = true
        cwd = "www"
        env = { PYTHONPATH = "/opt/lib" }
        python = "python3"
        """,
        name="cluster.toml",
    )
    directory = str(tmp_path)
    cluster = load_cluster(path)
    kv = ServiceSpec(
        name="kv",
        entry="kv:KeyValueStore",
        env={"LEVEL": "debug", "PYTHONPATH": directory},
        cwd=directory,
        restart=RestartPolicy(mode="always", intensity=3, period=30, backoff=0.5, max_backoff=4),
        permissions=Permissions(
            read=[f"{directory}/static", "/etc/hosts", f"{tmp_path.parent}/shared/data"],
            write=[f"{directory}/var/kv"],
            network=True,
            memory=256 * 1024 * 1024,
            cpu_time=60,
            open_files=128,
        ),
        container_options={
            "python": f"{directory}/.venv/bin/python",
            "ready_timeout": 5.0,
            "close_timeout": 2.5,
            "term_timeout": 1.0,
        },
    )
    web = ServiceSpec(
        name="web",
        entry="App",
        code="class App: pass",
        depends_on=["kv"],
        may_create_services=True,
        cwd=f"{directory}/www",
        env={"PYTHONPATH": f"{directory}{os.pathsep}/opt/lib"},
        container_options={"python": "python3"},
    )
    assert cluster == ClusterFile(
        name="shop", path=str(path), directory=directory, services=(kv, web), stop_timeout=12.5
    )


def test_defaults_come_from_the_file_name_and_its_directory(tmp_path: Path) -> None:
    cluster = load_cluster(write(tmp_path, KV, name="my-shop.cluster.toml"))
    assert cluster.name == "my-shop.cluster"
    assert cluster.stop_timeout == 30.0
    assert cluster.services == (
        ServiceSpec(
            name="kv", entry="kv:Store", env={"PYTHONPATH": str(tmp_path)}, cwd=str(tmp_path)
        ),
    )


def test_the_file_order_is_kept(tmp_path: Path) -> None:
    text = """\
    [services.web]
    entry = "web:App"
    depends_on = ["kv"]
    [services.kv]
    entry = "kv:Store"
    [services.admin]
    entry = "admin:App"
    """
    cluster = load_cluster(write(tmp_path, text))
    assert [spec.name for spec in cluster.services] == ["web", "kv", "admin"]


def test_parse_cluster_resolves_against_the_current_directory_by_default(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "kv.py").touch()
    (tmp_path / "sub").mkdir()
    cluster = parse_cluster(KV + 'cwd = "sub"\n')
    assert (cluster.name, cluster.path, cluster.directory) == (
        "<cluster>",
        "<cluster>",
        os.getcwd(),
    )
    assert cluster.services[0].cwd == os.path.join(os.getcwd(), "sub")
    elsewhere = parse_cluster(
        KV, path="conf/shop.toml", directory="/srv/shop", check_environment=False
    )
    assert (elsewhere.name, elsewhere.directory) == ("shop", "/srv/shop")
    assert elsewhere.services[0].env == {"PYTHONPATH": "/srv/shop"}


@pytest.mark.parametrize(
    ("line", "field", "expected"),
    [
        ('cwd = "sub/../dir"', "cwd", "{d}/dir"),
        ('cwd = "/srv"', "cwd", "/srv"),
        ('python = "bin/python"', "python", "{d}/bin/python"),
        ('python = "/usr/bin/python3"', "python", "/usr/bin/python3"),
        ('python = "python3.11"', "python", "python3.11"),
        ('[services.kv.permissions]\nread = ["."]', "read", "{d}"),
        ('[services.kv.permissions]\nwrite = ["/tmp/./x/"]', "write", "/tmp/x"),
    ],
)
def test_relative_paths_are_relative_to_the_file_and_absolute_ones_kept(
    tmp_path: Path, line: str, field: str, expected: str
) -> None:
    text = KV + line
    (spec,) = parse_cluster(text, directory=str(tmp_path), check_environment=False).services
    if field in ("read", "write"):
        assert spec.permissions is not None
        assert getattr(spec.permissions, field) == (expected.format(d=tmp_path),)
    else:
        found = spec.cwd if field == "cwd" else spec.container_options.python
        assert found == expected.format(d=tmp_path)


@pytest.mark.parametrize(
    ("memory", "size"),
    [
        ("4096", 4096),
        ('"4096"', 4096),
        ('"100B"', 100),
        ('"512KiB"', 512 * 1024),
        ('"256MiB"', 256 * 1024**2),
        ('"1.5 GiB"', 3 * 1024**3 // 2),
        ('"100MB"', 100 * 1000**2),
        ('"2TB"', 2 * 1000**4),
    ],
)
def test_memory_is_bytes_or_a_size_with_a_unit(memory: str, size: int) -> None:
    text = f"{KV}[services.kv.permissions]\nmemory = {memory}\n"
    (spec,) = parse_cluster(text, check_environment=False).services
    assert spec.permissions == Permissions(memory=size)


def test_the_reference_example_is_valid() -> None:
    page = (ROOT / "docs" / "reference-cluster-file.md").read_text(encoding="utf-8")
    example = re.search(r"```toml\n(.*?)```", page, re.DOTALL)
    assert example is not None
    cluster = parse_cluster(
        example[1], path="shop.toml", directory="/srv/shop", check_environment=False
    )
    assert cluster.name == "shop"
    assert {spec.name for spec in cluster.services} >= {"kv", "web"}


# -- refusals --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "key", "fragment"),
    [
        pytest.param(
            "[clusters]\n" + KV,
            None,
            "unknown key 'clusters' (did you mean 'cluster'?)",
            id="top-level",
        ),
        pytest.param(
            "[cluster]\nstop_timout = 3\n" + KV,
            "cluster",
            "unknown key 'stop_timout' (did you mean 'stop_timeout'?)",
            id="cluster",
        ),
        pytest.param(
            KV + 'dependson = ["db"]',
            "services.kv",
            "unknown key 'dependson' (did you mean 'depends_on'?)",
            id="service",
        ),
        pytest.param(
            KV + "colour = 1",
            "services.kv",
            "unknown key 'colour' (known keys: entry, code, depends_on,",
            id="service-no-close-key",
        ),
        pytest.param(
            KV + "[services.kv.restart]\nintensty = 3",
            "services.kv.restart",
            "unknown key 'intensty' (did you mean 'intensity'?)",
            id="restart",
        ),
        pytest.param(
            KV + "[services.kv.permissions]\nnetwork = true\nsubprocess = true",
            "services.kv.permissions",
            "unknown key 'subprocess' (did you mean 'subprocesses'?)",
            id="permissions",
        ),
        pytest.param(
            KV + "[services.kv.timeouts]\nstop = 3",
            "services.kv.timeouts",
            "unknown key 'stop' (known keys: ready, close, term)",
            id="timeouts",
        ),
    ],
)
def test_unknown_keys_are_refused_with_a_suggestion(
    tmp_path: Path, text: str, key: str | None, fragment: str
) -> None:
    error = refused(tmp_path, text)
    assert (error.key, error.service) == (key, "kv" if key and "kv" in key else None)
    assert fragment in error.problem


@pytest.mark.parametrize(
    ("text", "key", "fragment"),
    [
        (
            "[cluster]\nname = 3\n" + KV,
            "cluster.name",
            "expected a non-empty string, found the integer 3",
        ),
        (
            '[cluster]\nname = ""\n' + KV,
            "cluster.name",
            "expected a non-empty string, found an empty one",
        ),
        (
            '[cluster]\nstop_timeout = "30"\n' + KV,
            "cluster.stop_timeout",
            "expected a number, found the string '30'",
        ),
        (
            "[cluster]\nstop_timeout = true\n" + KV,
            "cluster.stop_timeout",
            "expected a number, found the boolean true",
        ),
        ("cluster = [1]\n" + KV, "cluster", "expected a table, found an array"),
        ("services = 3", "services", "expected a table, found the integer 3"),
        (
            '[services]\nkv = "kv:Store"',
            "services.kv",
            "expected a table, found the string 'kv:Store'",
        ),
        (
            "[services.kv]\nentry = 1979-05-27",
            "services.kv.entry",
            "expected a non-empty string, found a date",
        ),
        (
            '[services.kv]\nentry = ""',
            "services.kv.entry",
            "expected a non-empty string, found an empty one",
        ),
        (
            KV + 'depends_on = "db"',
            "services.kv.depends_on",
            "expected an array of strings, found the string 'db'",
        ),
        (
            KV + "depends_on = [1]",
            "services.kv.depends_on",
            "expected an array of non-empty strings, found the integer 1",
        ),
        (
            KV + 'may_create_services = "yes"',
            "services.kv.may_create_services",
            "expected a boolean (true or false), found the string 'yes'",
        ),
        (KV + "code = 42", "services.kv.code", "expected a string, found the integer 42"),
        (KV + 'env = ["A=1"]', "services.kv.env", "expected a table, found an array"),
        (
            KV + "env = { LEVEL = 1 }",
            "services.kv.env.LEVEL",
            "expected a string, found the integer 1",
        ),
        (
            KV + 'env = { "A=B" = "x" }',
            'services.kv.env."A=B"',
            "'A=B' is not an environment variable name",
        ),
        (
            KV + "cwd = false",
            "services.kv.cwd",
            "expected a non-empty string, found the boolean false",
        ),
        (
            KV + "[services.kv.restart]\nintensity = 1.5",
            "services.kv.restart.intensity",
            "expected an integer, found the float 1.5",
        ),
        (
            KV + "[services.kv.permissions]\nnetwork = 1",
            "services.kv.permissions.network",
            "expected a boolean (true or false), found the integer 1",
        ),
        (
            KV + '[services.kv.permissions]\nread = "/etc"',
            "services.kv.permissions.read",
            "expected an array of strings",
        ),
        (
            KV + '[services.kv.permissions]\nwrite = [""]',
            "services.kv.permissions.write",
            "found an empty string",
        ),
        (
            KV + "[services.kv.permissions]\nmemory = 1.5",
            "services.kv.permissions.memory",
            "expected an integer (bytes) or a string such as '256MiB', found the float 1.5",
        ),
        (
            KV + '[services.kv.timeouts]\nready = "fast"',
            "services.kv.timeouts.ready",
            "expected a number, found the string 'fast'",
        ),
    ],
)
def test_wrong_types_are_refused(tmp_path: Path, text: str, key: str, fragment: str) -> None:
    error = refused(tmp_path, text)
    assert error.key == key
    assert fragment in error.problem


@pytest.mark.parametrize(
    ("text", "key", "fragment"),
    [
        ("[cluster]\nstop_timeout = 0\n" + KV, "cluster.stop_timeout", "must be positive, not 0"),
        (
            KV + "[services.kv.restart]\nperiod = -1",
            "services.kv.restart.period",
            "must be positive, not -1",
        ),
        (
            KV + "[services.kv.restart]\nperiod = nan",
            "services.kv.restart.period",
            "must be positive, not nan",
        ),
        (
            "[cluster]\nstop_timeout = inf\n" + KV,
            "cluster.stop_timeout",
            "must be finite, not inf",
        ),
        (
            KV + "[services.kv.restart]\nintensity = -1",
            "services.kv.restart.intensity",
            "must be zero or more, not -1",
        ),
        (
            KV + "[services.kv.restart]\nbackoff = -0.5",
            "services.kv.restart.backoff",
            "must be zero or more, not -0.5",
        ),
        (
            KV + "[services.kv.timeouts]\nclose = 0",
            "services.kv.timeouts.close",
            "must be positive, not 0",
        ),
        (
            KV + "[services.kv.permissions]\ncpu_time = 0",
            "services.kv.permissions.cpu_time",
            "must be positive, not 0",
        ),
        (
            KV + "[services.kv.permissions]\nmemory = -5",
            "services.kv.permissions.memory",
            "must be positive, not -5",
        ),
    ],
)
def test_numbers_out_of_range_are_refused(
    tmp_path: Path, text: str, key: str, fragment: str
) -> None:
    error = refused(tmp_path, text)
    assert (error.key, error.problem) == (key, fragment)


def test_a_toml_syntax_error_gives_its_line(tmp_path: Path) -> None:
    error = refused(tmp_path, KV + "[services.web\nentry = 1\n")
    assert error.key is None
    assert error.problem.startswith("invalid TOML: ")
    assert "(at line 3, column" in error.problem


def test_a_key_given_twice_is_a_toml_error(tmp_path: Path) -> None:
    error = refused(tmp_path, KV + KV)
    assert error.key is None
    assert "(at line 3," in error.problem


@pytest.mark.parametrize(
    ("table", "key"),
    [("services.Kv", "services.Kv"), ('services."my kv"', 'services."my kv"')],
)
def test_a_bad_service_name_is_refused(tmp_path: Path, table: str, key: str) -> None:
    error = refused(tmp_path, f'[{table}]\nentry = "kv:Store"\n')
    assert error.key == key
    assert error.problem.startswith("bad service name ")
    assert error.service == table.partition(".")[2].strip('"')


def test_a_service_without_entry_is_refused(tmp_path: Path) -> None:
    error = refused(tmp_path, '[services.kv]\ncode = "x = 1"\n')
    assert (error.key, error.service) == ("services.kv", "kv")
    assert error.problem.startswith("missing required key 'entry'")


@pytest.mark.parametrize(
    ("lines", "fragment"),
    [
        (
            'entry = "kv"',
            "an entry is 'package.module:attribute' or 'path/to/file.py:attribute', not 'kv'",
        ),
        ('entry = "kv:"', "or 'path/to/file.py:attribute', not 'kv:'"),
        ('entry = "kv-store:Store"', "not 'kv-store:Store'"),
        ('entry = "kv:Store"\ncode = "class Store: pass"', "with code, the entry is a name"),
    ],
)
def test_a_bad_entry_is_refused(tmp_path: Path, lines: str, fragment: str) -> None:
    error = refused(tmp_path, f"[services.kv]\n{lines}\n")
    assert (error.key, error.service) == ("services.kv.entry", "kv")
    assert fragment in error.problem


def test_a_bad_restart_mode_is_refused(tmp_path: Path) -> None:
    error = refused(tmp_path, KV + '[services.kv.restart]\nmode = "sometimes"\n')
    assert error.key == "services.kv.restart.mode"
    assert error.problem == (
        "expected one of 'never', 'on-failure', 'always', found the string 'sometimes'"
    )


@pytest.mark.parametrize(
    "line",
    ['cwd = "~/shop"', '[services.kv.permissions]\nread = ["/etc", "~alice/data"]'],
)
def test_a_home_relative_path_is_refused_not_taken_as_relative(tmp_path: Path, line: str) -> None:
    error = refused(tmp_path, f"{KV}{line}\n")
    assert error.key == ("services.kv.cwd" if "cwd" in line else "services.kv.permissions.read")
    assert "'~' is not expanded" in error.problem


@pytest.mark.parametrize("memory", ['"12 parsecs"', '"MiB"', '"256mib"', '"-1GiB"', '"1e9"'])
def test_a_bad_memory_string_is_refused(tmp_path: Path, memory: str) -> None:
    error = refused(tmp_path, f"{KV}[services.kv.permissions]\nmemory = {memory}\n")
    assert error.key == "services.kv.permissions.memory"
    assert error.problem.startswith("expected a size such as '256MiB' (units: B, KB, MB,")


def test_a_memory_size_of_zero_is_refused(tmp_path: Path) -> None:
    error = refused(tmp_path, f'{KV}[services.kv.permissions]\nmemory = "0KiB"\n')
    assert (error.key, error.problem) == (
        "services.kv.permissions.memory",
        "must be positive, not the string '0KiB'",
    )


@pytest.mark.parametrize(
    ("depends_on", "fragment"),
    [
        ('["DB"]', "bad service name 'DB'"),
        ('["kv"]', "a service cannot depend on itself"),
        ('["db", "db"]', "a dependency is listed twice in ['db', 'db']"),
        ('["db"]', "service 'kv' depends on 'db', which does not exist"),
    ],
)
def test_bad_dependencies_are_refused(tmp_path: Path, depends_on: str, fragment: str) -> None:
    error = refused(tmp_path, f"{KV}depends_on = {depends_on}\n")
    assert (error.key, error.service) == ("services.kv.depends_on", "kv")
    assert fragment in error.problem


def test_a_dependency_cycle_is_refused_and_named(tmp_path: Path) -> None:
    text = """\
    [services.a]
    entry = "a:A"
    depends_on = ["b"]
    [services.b]
    entry = "b:B"
    depends_on = ["c"]
    [services.c]
    entry = "c:C"
    depends_on = ["a"]
    [services.d]
    entry = "d:D"
    """
    error = refused(tmp_path, text)
    assert error.key == "services"
    assert isinstance(error.__cause__, DependencyCycleError)
    cycle = error.__cause__.cycle
    assert error.problem == f"dependency cycle: {' -> '.join(cycle)}"
    assert set(cycle) == {"a", "b", "c"}
    assert error.service == cycle[0]


@pytest.mark.parametrize(
    ("text", "key", "problem"),
    [
        ("", None, "missing required key 'services'"),
        ('[cluster]\nname = "shop"\n', None, "missing required key 'services'"),
        ("[services]\n", "services", "no services: add at least one [services.<name>] table"),
    ],
)
def test_a_file_without_services_is_refused(
    tmp_path: Path, text: str, key: str | None, problem: str
) -> None:
    error = refused(tmp_path, text)
    assert (error.key, error.problem) == (key, problem)


def test_a_missing_file_is_refused_by_name(tmp_path: Path) -> None:
    path = tmp_path / "nowhere.toml"
    with pytest.raises(ClusterFileError) as info:
        load_cluster(path)
    assert (info.value.path, info.value.key) == (str(path), None)
    assert str(info.value) == f"{path}: cannot read the cluster file: No such file or directory"


def test_a_directory_or_a_binary_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ClusterFileError, match="cannot read the cluster file: Is a directory"):
        load_cluster(tmp_path)
    binary = tmp_path / "binary.toml"
    binary.write_bytes(b"\xff\xfe[services]")
    with pytest.raises(ClusterFileError, match="not UTF-8 text"):
        load_cluster(binary)


def test_the_error_is_a_service_definition_error_and_pickles() -> None:
    with pytest.raises(ClusterFileError) as info:
        parse_cluster(KV + "[services.kv.restart]\nmode = 1\n", path="shop.toml")
    error = info.value
    assert isinstance(error, ServiceDefinitionError)
    assert isinstance(error, ValueError)
    assert str(error) == (
        "shop.toml: services.kv.restart.mode: expected a non-empty string, found the integer 1"
    )
    copy = pickle.loads(pickle.dumps(error))
    assert (str(copy), copy.path, copy.key, copy.problem, copy.service) == (
        str(error),
        "shop.toml",
        "services.kv.restart.mode",
        error.problem,
        "kv",
    )


# -- hostile or mistaken values ---------------------------------------------------


@pytest.mark.parametrize(
    "value", ["[" * 5000 + "]" * 5000, "{ a = " * 5000 + "1" + " }" * 5000], ids=["array", "table"]
)
def test_deep_nesting_is_refused_not_a_recursion_error(tmp_path: Path, value: str) -> None:
    error = refused(tmp_path, f"{KV}env = {value}\n")
    assert (error.key, error.problem) == (None, "invalid TOML: arrays or tables nested too deeply")


@pytest.mark.parametrize(
    ("line", "key"),
    [
        (r'cwd = "a\u0000b"', "services.kv.cwd"),
        (r'python = "bin/py\u0000thon"', "services.kv.python"),
        (r'python = "py\u0000thon"', "services.kv.python"),
        ('[services.kv.permissions]\nread = ["/etc\\u0000"]', "services.kv.permissions.read"),
        ('[services.kv.permissions]\nwrite = ["x\\u0000"]', "services.kv.permissions.write"),
    ],
)
def test_a_nul_in_a_path_is_refused(tmp_path: Path, line: str, key: str) -> None:
    error = refused(tmp_path, f"{KV}{line}\n")
    assert (error.key, error.problem) == (key, "a path cannot hold a NUL character")


@pytest.mark.parametrize(
    ("lines", "key", "problem"),
    [
        (
            'entry = "App"\ncode = "class App: pass\\u0000"',
            "services.kv.code",
            "the code cannot hold a NUL character",
        ),
        (
            'entry = "a\\u0000.py:App"',
            "services.kv.entry",
            "the path of an entry cannot hold a NUL character",
        ),
    ],
)
def test_a_nul_in_code_or_an_entry_path_is_refused(
    tmp_path: Path, lines: str, key: str, problem: str
) -> None:
    error = refused(tmp_path, f"[services.kv]\n{lines}\n")
    assert (error.key, error.problem) == (key, problem)


@pytest.mark.parametrize(
    ("line", "key", "problem"),
    [
        ("memory = 9223372036854775808", "memory", "must be less than 2**63, not 2**63"),
        ("memory = 18446744073709551616", "memory", "must be less than 2**63, not 2**64"),
        ("cpu_time = 18446744073709551616", "cpu_time", "must be less than 2**63, not 2**64"),
        ("open_files = 9223372036854775808", "open_files", "must be less than 2**63, not 2**63"),
        (
            'memory = "99999999999999999999TiB"',
            "memory",
            "must be less than 2**63 bytes, not the string '99999999999999999999TiB'",
        ),
        (
            f'memory = "{"9" * 400}B"',
            "memory",
            "must be less than 2**63 bytes, not the string '999",
        ),
    ],
)
def test_a_limit_setrlimit_cannot_take_is_refused_by_key(
    tmp_path: Path, line: str, key: str, problem: str
) -> None:
    error = refused(tmp_path, f"{KV}[services.kv.permissions]\n{line}\n")
    expected = problem.replace("2**63, not 2**63", f"2**63, not {2**63}")
    expected = expected.replace("not 2**64", f"not {2**64}")
    assert error.key == f"services.kv.permissions.{key}"
    assert error.problem.startswith(expected), error.problem


def test_open_files_above_the_hard_limit_is_refused(tmp_path: Path) -> None:
    import resource

    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    if hard == resource.RLIM_INFINITY:
        pytest.skip("no hard limit on open files here")
    error = refused(tmp_path, f"{KV}[services.kv.permissions]\nopen_files = {hard + 1}\n")
    assert (error.key, error.problem) == (
        "services.kv.permissions.open_files",
        f"{hard + 1} is above this system's hard limit (RLIMIT_NOFILE {hard})",
    )
    within = load_cluster(write(tmp_path, f"{KV}[services.kv.permissions]\nopen_files = {hard}\n"))
    assert within.services[0].permissions == Permissions(open_files=hard)


# -- what the file names must be there ------------------------------------------


@pytest.mark.parametrize(
    ("line", "key", "problem"),
    [
        ('cwd = "www"', "cwd", "'{d}/www' is not a directory"),
        ('cwd = "kv.py"', "cwd", "'{d}/kv.py' is not a directory"),
        ('python = "bin/python"', "python", "'{d}/bin/python' is not an executable file"),
        ('python = "./kv.py"', "python", "'{d}/kv.py' is not an executable file"),
        ('python = "no-such-python3"', "python", "'no-such-python3' is not on $PATH"),
        (
            'env = { PATH = "/nowhere" }\npython = "python3"',
            "python",
            "'python3' is not on $PATH",
        ),
        (
            '[services.kv.permissions]\nread = ["static"]',
            "permissions.read",
            "'{d}/static': no such file or directory",
        ),
        (
            '[services.kv.permissions]\nwrite = ["/etc", "var/kv"]',
            "permissions.write",
            "'{d}/var/kv': no such file or directory",
        ),
    ],
)
def test_a_missing_directory_or_interpreter_is_refused(
    tmp_path: Path, line: str, key: str, problem: str
) -> None:
    error = refused(tmp_path, f"{KV}{line}\n")
    assert (error.key, error.problem) == (f"services.kv.{key}", problem.format(d=tmp_path))
    # The file alone is right: for another machine, it is accepted.
    assert load_cluster(write(tmp_path, f"{KV}{line}\n"), check_environment=False).services


@pytest.mark.parametrize(
    ("entry", "module"),
    [
        ("nowhere:App", "nowhere"),
        ("pkg.nowhere:App", "pkg.nowhere"),
        ("kv.store:App", "kv.store"),  # kv is a module, not a package
    ],
)
def test_an_entry_module_that_cannot_be_found_is_refused(
    tmp_path: Path, entry: str, module: str
) -> None:
    package = tmp_path / "pkg"
    package.mkdir()
    (package / "__init__.py").touch()
    (tmp_path / "kv.py").touch()
    error = refused(tmp_path, f'[services.kv]\nentry = "{entry}"\n', modules=False)
    assert error.key == "services.kv.entry"
    assert error.problem == (
        f"cannot find the module {module!r} (looked in the service's cwd, its PYTHONPATH "
        "and this Python's sys.path)"
    )


def test_an_entry_module_is_found_without_importing_it(tmp_path: Path) -> None:
    shared = tmp_path / "lib"
    package = shared / "booby" / "trapped"
    package.mkdir(parents=True)
    for init in (shared / "booby" / "__init__.py", package / "__init__.py"):
        init.write_text("raise SystemExit('imported!')\n")
    (package / "app.py").write_text("raise SystemExit('imported!')\n")
    (tmp_path / "www").mkdir()
    (tmp_path / "www" / "site.py").touch()
    text = f"""\
    [services.a]
    entry = "booby.trapped.app:App"
    env = {{ PYTHONPATH = "{shared}" }}
    [services.b]
    entry = "site:App"
    cwd = "www"
    [services.c]
    entry = "json.decoder:JSONDecoder"
    [services.d]
    entry = "sys:App"
    """
    cluster = load_cluster(write(tmp_path, text))
    assert [spec.name for spec in cluster.services] == ["a", "b", "c", "d"]
    assert "booby" not in sys.modules


def test_the_module_of_a_service_with_its_own_python_is_not_looked_for(tmp_path: Path) -> None:
    text = f'[services.kv]\nentry = "elsewhere:App"\npython = "{sys.executable}"\n'
    (spec,) = load_cluster(write(tmp_path, text)).services
    assert spec.entry == "elsewhere:App"


# -- entries that name a file -----------------------------------------------------


@pytest.mark.parametrize(
    ("entry", "path"),
    [
        ("svc/app.py:App", "{d}/svc/app.py"),
        ("./svc/../svc/app.py:make.App", "{d}/svc/app.py"),
        ("{d}/svc/app.py:App", "{d}/svc/app.py"),
    ],
)
def test_an_entry_can_name_a_file_relative_to_the_cluster_file(
    tmp_path: Path, entry: str, path: str
) -> None:
    (tmp_path / "svc").mkdir()
    (tmp_path / "svc" / "app.py").touch()
    text = f'[services.kv]\nentry = "{entry.format(d=tmp_path)}"\n'
    (spec,) = load_cluster(write(tmp_path, text)).services
    assert spec.entry == f"{path.format(d=tmp_path)}:{entry.rpartition(':')[2]}"


def test_an_entry_file_that_does_not_exist_is_refused(tmp_path: Path) -> None:
    error = refused(tmp_path, '[services.kv]\nentry = "svc/app.py:App"\n')
    assert (error.key, error.problem) == (
        "services.kv.entry",
        f"'{tmp_path}/svc/app.py': no such file",
    )


@pytest.mark.parametrize("entry", ["app.py:App", "dir/app.py:make.App", "/srv/x y/app.py:App"])
def test_a_service_spec_takes_a_file_entry(entry: str) -> None:
    assert ServiceSpec(name="app", entry=entry).entry == entry


@pytest.mark.parametrize("entry", ["app.py:", "app.py", ".py:App", "dir/app:App", "app.py:a-b"])
def test_a_bad_file_entry_is_refused(entry: str) -> None:
    with pytest.raises(ServiceDefinitionError, match=r"an entry is 'package\.module:attribute'"):
        ServiceSpec(name="app", entry=entry)


def test_listen_gives_the_addresses_to_bind(tmp_path: Path) -> None:
    path = write(tmp_path, f'{KV}listen = ["127.0.0.1:8000", "[::1]:8000"]\n')
    (spec,) = load_cluster(path).services
    assert [str(address) for address in spec.listen] == ["127.0.0.1:8000", "[::1]:8000"]


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ('"127.0.0.1:8000"', "expected an array of strings, found the string"),
        ('["8000"]', "bad listen address '8000': write it as 'HOST:PORT'"),
        ('["h:99999"]', "the port is a number, 0 to 65535"),
        ('["h:1", "h:1"]', "an address is listed twice in ['h:1', 'h:1']"),
        ("[" + ", ".join(f'"h:{n}"' for n in range(65)) + "]", "64 addresses at most"),
    ],
)
def test_a_bad_listen_is_refused_naming_the_key(tmp_path: Path, value: str, problem: str) -> None:
    error = refused(tmp_path, f"{KV}listen = {value}\n")
    assert error.key == "services.kv.listen"
    assert problem in error.problem


def test_replicas_makes_a_pool(tmp_path: Path) -> None:
    (spec,) = load_cluster(write(tmp_path, f"{KV}replicas = 4\n")).services
    assert spec.replicas == 4
    for value, problem in [
        ("0", "must be positive, not 0"),
        ("-2", "must be positive"),
        ("2.5", "expected an integer"),
        ('"4"', "expected an integer"),
        ("1000", "a pool has 256 replicas at most, not 1000"),
    ]:
        error = refused(tmp_path, f"{KV}replicas = {value}\n")
        assert error.key == "services.kv.replicas"
        assert problem in error.problem, error.problem


def test_limit_bounds_a_pool_without_replicas(tmp_path: Path) -> None:
    (spec,) = load_cluster(write(tmp_path, f"{KV}replicas = 2\nlimit = 2.5\n")).services
    assert (spec.replicas, spec.limit) == (2, 2.5)
    for value in ("0", "-1", "nan", "inf", '"60"'):
        error = refused(tmp_path, f"{KV}limit = {value}\n")
        assert error.key == "services.kv.limit", value


def test_drain_bounds_what_a_retired_replica_is_given(tmp_path: Path) -> None:
    (spec,) = load_cluster(write(tmp_path, f"{KV}replicas = 2\ndrain = 0.5\n")).services
    assert spec.drain == 0.5
    (default,) = load_cluster(write(tmp_path, f"{KV}replicas = 2\n")).services
    assert default.drain == 10.0
    for value in ("0", "-1", "nan", "inf", '"10"'):
        error = refused(tmp_path, f"{KV}drain = {value}\n")
        assert error.key == "services.kv.drain", value


def test_on_thread_error_says_whether_a_thread_error_stops_the_service(tmp_path: Path) -> None:
    (spec,) = load_cluster(write(tmp_path, f'{KV}on_thread_error = "stop"\n')).services
    assert spec.container_options.on_thread_error == "stop"
    (default,) = load_cluster(write(tmp_path, KV)).services
    assert default.container_options.on_thread_error == "report"
    for value in ('"ignore"', "1", '""'):
        error = refused(tmp_path, f"{KV}on_thread_error = {value}\n")
        assert error.key == "services.kv.on_thread_error", value


def test_preload_forks_a_pools_replicas_from_a_zygote(tmp_path: Path) -> None:
    (spec,) = load_cluster(write(tmp_path, f"{KV}replicas = 2\npreload = true\n")).services
    assert spec.preload
    error = refused(tmp_path, f"{KV}preload = true\n")
    assert "preload is for pools" in error.problem
    error = refused(tmp_path, f'{KV}replicas = 2\npreload = "yes"\n')
    assert error.key == "services.kv.preload"


# -- many hosts ------------------------------------------------------------------

HOSTS = """
[cluster]
name = "shop"
redis = "redis://127.0.0.1:6379/0"
key_file = "shop.key"
registry_ttl = 1.5

[services.billing]
remote = true
limit = 5

[services.api]
entry = "api:Api"
depends_on = ["billing"]
"""


def key_file(directory: Path, key: bytes = b"k" * 32, mode: int = 0o600) -> Path:
    path = directory / "shop.key"
    path.write_bytes(key + b"\n")
    path.chmod(mode)
    return path


def test_a_cluster_of_many_hosts_gives_redis_its_key_and_remote_services(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    key_file(tmp_path)
    cluster = load_cluster(write(tmp_path, HOSTS))
    assert cluster.redis == "redis://127.0.0.1:6379/0"
    assert cluster.key_file == str(tmp_path / "shop.key")
    assert cluster.cluster_key() == b"k" * 32  # (the newline stripped)
    billing, api = cluster.services
    assert billing == ServiceSpec(name="billing", remote=True, limit=5)
    assert api.depends_on == ("billing",)
    options = cluster.manager_options()
    assert options["redis"] == cluster.redis and options["cluster_key"] == b"k" * 32
    assert options["registry_ttl"] == 1.5


@pytest.mark.parametrize(
    ("lines", "key", "fragment"),
    [
        ('redis = "http://x"', "cluster.redis", "expected a Redis URL"),
        ('redis = "embedded://0.0.0.0:1"', "cluster.redis", "expected a Redis URL"),
        ('redis = "redis://x"\nkey_file = "missing.key"', "cluster.key_file", "cannot read"),
        ('key_file = "shop.key"', "cluster.key_file", "give redis too"),
    ],
)
def test_bad_redis_settings_are_refused(
    tmp_path: Path, lines: str, key: str, fragment: str
) -> None:
    key_file(tmp_path)
    error = refused(tmp_path, f"[cluster]\n{lines}\n{KV}")
    assert error.key == key and fragment in error.problem


@pytest.mark.parametrize(
    ("key", "mode", "fragment"),
    [(b"k" * 32, 0o644, "chmod 600"), (b"short", 0o600, "32 or more")],
)
def test_a_key_file_others_may_read_or_too_short_is_refused(
    tmp_path: Path, key: bytes, mode: int, fragment: str
) -> None:
    key_file(tmp_path, key, mode)
    error = refused(tmp_path, HOSTS)
    assert error.key == "cluster.key_file" and fragment in error.problem


def test_a_remote_service_needs_redis_and_takes_no_entry(tmp_path: Path) -> None:
    error = refused(tmp_path, "[services.billing]\nremote = true\n")
    assert error.key == "services.billing.remote" and "redis" in error.problem
    text = '[cluster]\nredis = "embedded"\n[services.billing]\nremote = true\nentry = "b:B"\n'
    error = refused(tmp_path, text)
    assert "unknown key 'entry'" in error.problem


def test_without_key_file_the_key_comes_from_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cluster = load_cluster(write(tmp_path, f'[cluster]\nredis = "embedded"\n{KV}'))
    monkeypatch.delenv("STARTABLE_CLUSTER_KEY", raising=False)
    with pytest.raises(ClusterFileError, match="STARTABLE_CLUSTER_KEY"):
        cluster.manager_options()
    monkeypatch.setenv("STARTABLE_CLUSTER_KEY", "e" * 32)
    assert cluster.manager_options()["cluster_key"] is None  # (the manager reads it)


def test_a_short_key_is_refused_by_one_rule_wherever_it_comes_from(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from startable.cluster import ClusterError, ServicesManager

    cluster = load_cluster(write(tmp_path, f'[cluster]\nredis = "embedded"\n{KV}'))
    monkeypatch.setenv("STARTABLE_CLUSTER_KEY", "e" * 31)
    with pytest.raises(ClusterFileError, match="31 bytes; a cluster key has 32 or more"):
        cluster.manager_options()
    with pytest.raises(ClusterError, match="31 bytes; a cluster key has 32 or more"):
        ServicesManager([], redis="embedded")
    with pytest.raises(ClusterError, match="5 bytes; a cluster key has 32 or more"):
        ServicesManager([], redis="embedded", cluster_key=b"short")


# -- command services and health checks -----------------------------------------


def test_a_command_service_becomes_a_spec(tmp_path: Path) -> None:
    (tmp_path / "bin").mkdir()
    script = tmp_path / "bin" / "serve.sh"
    script.write_text("#!/bin/sh\nexec sleep 60\n")
    script.chmod(0o755)
    path = write(
        tmp_path,
        """\
        [services.cache]
        command = "sh -c 'exec sleep 60'"
        stop_signal = "SIGINT"
        env = { MODE = "fast" }
        ready = { port = 6390 }
        timeouts = { ready = 5, term = 2 }
        permissions = { memory = "64MiB", open_files = 256 }
        health = { command = ["sh", "-c", "true"], interval = 2, timeout = 1, retries = 4 }

        [services.script]
        command = ["./bin/serve.sh", ""]
        ready = { line = "^Ready" }

        [services.notified]
        command = ["sleep", "60"]
        ready = { notify = true }

        [services.api]
        entry = "kv:Store"
        depends_on = ["cache"]
        health = { port = 8000, host = "localhost" }
        """,
    )
    cache, script_spec, notified, api = load_cluster(path).services
    assert cache.command == ("sh", "-c", "exec sleep 60")
    assert cache.stop_signal.name == "SIGINT"
    assert cache.env == {"MODE": "fast"}  # no PYTHONPATH: it is not Python
    assert cache.ready.port == 6390 and cache.ready.kind == "port"
    assert cache.container_options.ready_timeout == 5
    assert cache.container_options.term_timeout == 2
    assert cache.permissions == Permissions(memory=64 * 2**20, open_files=256)
    assert cache.health is not None and cache.health.retries == 4
    assert cache.cwd == str(tmp_path)
    assert script_spec.command == ("./bin/serve.sh", "")
    assert script_spec.ready.kind == "line"
    assert notified.ready.notify
    assert api.health is not None and (api.health.host, api.health.port) == ("localhost", 8000)


@pytest.mark.parametrize(
    ("lines", "key", "fragment"),
    [
        ('command = ""', "services.svc.command", "expected a program to run"),
        ("command = []", "services.svc.command", "expected a program to run"),
        ("command = [1]", "services.svc.command", "found the integer 1"),
        ("command = 5", "services.svc.command", "a string or an array of strings"),
        ('command = "sh -c \'open"', "services.svc.command", "cannot split"),
        ('command = "no-such-program-here"', "services.svc.command", "is not on $PATH"),
        ('command = "./absent.sh"', "services.svc.command", "is not an executable file"),
        ('command = "sh"\nreplicas = 2', "services.svc.replicas", "does not apply"),
        ('command = "sh"\nentry = "kv:Store"', "services.svc.entry", "does not apply"),
        ('command = "sh"\nbogus = 1', "services.svc", "unknown key 'bogus'"),
        ('command = "sh"\ntimeouts = { close = 1 }', "services.svc.timeouts.close", "no close"),
        ('command = "sh"\nready = {}', "services.svc.ready", "give one of port, line"),
        ('command = "sh"\nready = { port = 70000 }', "services.svc.ready.port", "not a TCP port"),
        ('command = "sh"\nready = { port = 1, line = "x" }', "services.svc.ready", "one of"),
        ('command = "sh"\nready = { line = "(" }', "services.svc.ready", "regular expression"),
        ('command = "sh"\nstop_signal = "SIGNOPE"', "services.svc.stop_signal", "not a signal"),
        ('command = "sh"\nstop_signal = "STOP"', "services.svc.stop_signal", "does not end"),
        (
            'command = "sh"\nhealth = { command = "no-such-probe-here" }',
            "services.svc.health.command",
            "is not on $PATH",
        ),
        (
            'entry = "kv:Store"\nhealth = { command = "no-such-probe-here" }',
            "services.svc.health.command",
            "is not on $PATH",
        ),
        ('command = "sh"\nready = { host = "h" }', "services.svc.ready", "give one of"),
        (
            'command = "sh"\nready = { host = "h", line = "x" }',
            "services.svc.ready.host",
            "port too",
        ),
        (
            'command = "sh"\nhealth = { port = 1, interval = 1e300 }',
            "services.svc.health",
            "at most",
        ),
        (
            'command = "sh"\npermissions = { network = true }',
            "services.svc.permissions.network",
            "for Python services",
        ),
        ('command = "sh"\nhealth = {}', "services.svc.health", "one of command or port"),
        (
            'command = "sh"\nhealth = { port = 1, interval = -1 }',
            "services.svc.health.interval",
            "must be positive",
        ),
        (
            'command = "sh"\nhealth = { port = 1, retries = 0 }',
            "services.svc.health.retries",
            "must be positive",
        ),
        ('entry = "kv:Store"\nready = { port = 1 }', "services.svc", "unknown key 'ready'"),
    ],
)
def test_a_bad_command_service_is_refused(
    tmp_path: Path, lines: str, key: str, fragment: str
) -> None:
    error = refused(tmp_path, "[services.svc]\n" + lines + "\n")
    assert error.key == key
    assert fragment in error.problem
