"""The config and the data folder are found the same way by the gateway and every command,
from whatever folder they are run: --config/--data-dir, SCHOOLGATE_CONFIG/SCHOOLGATE_DATA_DIR,
/etc/schoolgate and /var/lib/schoolgate when installed system-wide, then the checkout's own.
A command never starts a new database unless told to (--init), and one that changes something
says which config and database it used.

The subprocess tests run real commands (``python -m schoolgate.cli``) from another folder; the
installed copy is a real ``pip install --target`` of this checkout; the system-wide case runs
in a private mount namespace whose /etc and /var/lib are overlays, so nothing on the machine
is touched.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from gateway_process import ROOT, free_port, stop_gateway, wait_port

from schoolgate.core.locations import (
    CHECKOUT,
    ENVIRONMENT,
    GIVEN,
    SYSTEM,
    LocationError,
    checkout_root,
    locate,
)

PYTHON = sys.executable
CHECKOUT_CONFIG = ROOT / "mitm_config.yaml"


def _fake_checkout(tmp_path: Path) -> Path:
    root = tmp_path / "checkout"
    (root / "schoolgate").mkdir(parents=True)
    (root / "pyproject.toml").write_text("[project]\nname = 'schoolgate'\n")
    (root / "mitm_config.yaml").write_text("{}\n")
    return root


def _fake_installed(tmp_path: Path) -> Path:
    package = tmp_path / "venv" / "lib" / "python3.11" / "site-packages" / "schoolgate"
    package.mkdir(parents=True)
    # even with a config file beside it, an installed copy does not read it
    (package.parent / "mitm_config.yaml").write_text("{}\n")
    (package.parent / "pyproject.toml").write_text("")
    return package


def test_the_order_given_environment_system_checkout(tmp_path):
    checkout = _fake_checkout(tmp_path)
    package = checkout / "schoolgate"
    system_config = tmp_path / "etc" / "schoolgate" / "mitm_config.yaml"
    system_data = tmp_path / "var" / "lib" / "schoolgate"
    kw = dict(system_config=system_config, system_data_dir=system_data, package_dir=package)

    where = locate(environ={}, **kw)
    assert (where.config.path, where.config.source) == (checkout / "mitm_config.yaml", CHECKOUT)
    assert (where.data_dir.path, where.data_dir.source) == (checkout / "var", CHECKOUT)
    assert "the checkout's default" in where.describe()

    system_config.parent.mkdir(parents=True)
    system_config.write_text("{}\n")
    where = locate(environ={}, **kw)
    assert (where.config.path, where.config.source) == (system_config, SYSTEM)
    assert (where.data_dir.path, where.data_dir.source) == (system_data, SYSTEM)
    assert "installed system-wide" in where.describe()

    env = {"SCHOOLGATE_CONFIG": str(tmp_path / "x.yaml"), "SCHOOLGATE_DATA_DIR": "rel/data"}
    where = locate(environ=env, **kw)
    assert (where.config.path, where.config.source) == (tmp_path / "x.yaml", ENVIRONMENT)
    assert where.data_dir.source == ENVIRONMENT and where.data_dir.path.is_absolute()
    assert where.data_dir.path == Path.cwd() / "rel" / "data"
    assert "from SCHOOLGATE_CONFIG" in where.describe()

    where = locate("given.yaml", tmp_path / "d", environ=env, **kw)
    assert where.config == where.config.__class__(Path.cwd() / "given.yaml", GIVEN, "--config")
    assert where.data_dir.path == tmp_path / "d" and where.data_dir.source == GIVEN


def test_an_installed_copy_never_reads_a_config_beside_its_package(tmp_path):
    package = _fake_installed(tmp_path)
    assert checkout_root(package) is None
    system_config = tmp_path / "etc" / "mitm_config.yaml"
    with pytest.raises(LocationError) as caught:
        locate(environ={}, system_config=system_config, package_dir=package)
    assert str(system_config) in str(caught.value) and "SCHOOLGATE_CONFIG" in str(caught.value)
    assert "site-packages" not in str(caught.value)
    # with a config from the environment, its data folder is the system one
    where = locate(
        environ={"SCHOOLGATE_CONFIG": "/srv/school.yaml"},
        system_config=system_config,
        system_data_dir=tmp_path / "lib",
        package_dir=package,
    )
    assert where.data_dir.path == tmp_path / "lib" and where.data_dir.source == SYSTEM


def test_this_checkout_is_a_checkout():
    assert checkout_root() == ROOT


# -- real commands from another folder ------------------------------------------------------


def _env(**values: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SCHOOLGATE_")}
    env.update(values)
    return env


def _schoolgate(*args: str, cwd: Path, env: dict[str, str], stdin: str | None = None):
    return subprocess.run(
        [PYTHON, "-m", "schoolgate.cli", *args],
        cwd=cwd,
        env=env,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.e2e
def test_staff_add_from_another_folder_after_the_gateway_made_the_database(tmp_path):
    """The README's first steps: the gateway (here with its data folder from the environment,
    the checkout's config) makes the database; `schoolgate staff add`, run from any folder,
    then finds the same database and says which it used."""
    data = tmp_path / "data"
    elsewhere = tmp_path / "somewhere" / "else"
    elsewhere.mkdir(parents=True)
    env = _env(SCHOOLGATE_DATA_DIR=str(data))
    add = ("staff", "add", "it.tech", "--role", "it_support", "--password-stdin")

    before = _schoolgate(*add, cwd=elsewhere, env=env, stdin="correct horse battery\n")
    assert before.returncode == 1
    assert "there is no database yet" in before.stderr and "--init" in before.stderr
    assert str(data / "schoolgate.db") in before.stderr
    assert not (data / "schoolgate.db").exists() and not (elsewhere / "var").exists()

    port = free_port()
    log = tmp_path / "gateway.log"
    proc = subprocess.Popen(
        [PYTHON, "-m", "schoolgate.cli", "run", "--listen-host", "127.0.0.1"]
        + ["--listen-port", str(port), "--quiet"],
        cwd=tmp_path / "somewhere",
        env=env,
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
    )
    try:
        wait_port(port, proc, log)
    finally:
        stop_gateway(proc)
    said = log.read_text()
    assert f"config {CHECKOUT_CONFIG} (the checkout's default)" in said, said
    assert f"data folder {data} (from SCHOOLGATE_DATA_DIR)" in said, said
    assert (data / "schoolgate.db").is_file()

    done = _schoolgate(*add, cwd=elsewhere, env=env, stdin="correct horse battery\n")
    assert done.returncode == 0, done.stderr
    assert "add: it.tech: done" in done.stdout
    assert f"config {CHECKOUT_CONFIG} (the checkout's default)" in done.stderr
    assert f"database sqlite:///{data / 'schoolgate.db'}" in done.stderr
    listed = _schoolgate("staff", "list", cwd=tmp_path, env=env)
    assert listed.returncode == 0 and "it.tech" in listed.stdout
    assert "using" not in listed.stderr  # only commands that change something say it
    assert not (elsewhere / "var").exists() and not (tmp_path / "var").exists()


def _school_folder(folder: Path) -> Path:
    """A copy of the shipped config, timetables and lists (what a school puts in /etc)."""
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copy(CHECKOUT_CONFIG, folder / "mitm_config.yaml")
    for name in ("schedules", "blocklists"):
        shutil.copytree(ROOT / name, folder / name)
    return folder / "mitm_config.yaml"


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """This checkout installed the way a school installs it (a built wheel, not editable)."""
    target = tmp_path_factory.mktemp("installed") / "site-packages"
    done = subprocess.run(
        [PYTHON, "-m", "pip", "install", "--quiet", "--no-deps", "--target", str(target)]
        + [str(ROOT)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr
    assert (target / "schoolgate" / "gateway" / "templates" / "block.html").is_file()
    return target


def test_an_installed_copy_says_where_to_put_the_config(installed, tmp_path):
    env = _env(PYTHONPATH=str(installed))
    which = subprocess.run(
        [PYTHON, "-c", "import schoolgate; print(schoolgate.__file__)"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
    )
    assert which.stdout.startswith(str(installed)), which
    done = _schoolgate("check-config", cwd=tmp_path, env=env)
    assert done.returncode == 1
    assert "/etc/schoolgate/mitm_config.yaml" in done.stderr
    assert "site-packages" not in done.stderr

    config = _school_folder(tmp_path / "school")
    env |= {"SCHOOLGATE_CONFIG": str(config), "SCHOOLGATE_DATA_DIR": str(tmp_path / "data")}
    assert _schoolgate("check-config", cwd=tmp_path, env=env).returncode == 0
    grant = (
        "allow", "add", "--host", "bbc.co.uk", "--for", "everyone", "--minutes", "30",
        "--by", "it.tech",
    )  # fmt: skip
    refused = _schoolgate(*grant, cwd=tmp_path, env=env)
    assert refused.returncode == 1 and "there is no database yet" in refused.stderr
    made = _schoolgate(*grant, "--init", cwd=tmp_path, env=env)
    assert made.returncode == 0, made.stderr
    assert f"config {config} (from SCHOOLGATE_CONFIG)" in made.stderr
    assert (tmp_path / "data" / "schoolgate.db").is_file()


def _namespace_reason() -> str | None:
    if os.geteuid() != 0:
        return "needs root for a private mount namespace"
    if shutil.which("unshare") is None:
        return "needs unshare (util-linux)"
    return None


@pytest.mark.skipif(_namespace_reason() is not None, reason=_namespace_reason() or "")
@pytest.mark.e2e  # a mount namespace of its own
def test_installed_system_wide_uses_etc_and_var_lib(installed, tmp_path):
    """/etc/schoolgate/mitm_config.yaml and /var/lib/schoolgate, in a mount namespace of the
    test's own whose /etc and /var/lib are overlays (the machine's are not touched)."""
    school = _school_folder(tmp_path / "school").parent
    layers = tmp_path / "layers"
    for name in ("etc-up", "etc-work", "lib-up", "lib-work"):
        (layers / name).mkdir(parents=True)
    grant = "allow add --host bbc.co.uk --for everyone --minutes 30 --by it.tech"
    script = f"""
set -e
mount -t overlay overlay -o lowerdir=/etc,upperdir={layers}/etc-up,workdir={layers}/etc-work /etc
mount -t overlay overlay -o lowerdir=/var/lib,upperdir={layers}/lib-up,\\
workdir={layers}/lib-work /var/lib
rm -rf /etc/schoolgate /var/lib/schoolgate
cp -r {school} /etc/schoolgate
cd {tmp_path}
PYTHONPATH={installed} {PYTHON} -m schoolgate.cli {grant} --init
test -f /var/lib/schoolgate/schoolgate.db && echo "db in /var/lib/schoolgate"
{PYTHON} -m schoolgate.cli allow list
"""
    existed = Path("/etc/schoolgate").exists(), Path("/var/lib/schoolgate").exists()
    done = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "sh", "-c", script],
        env=_env(),
        capture_output=True,
        text=True,
        timeout=180,
    )
    if done.returncode != 0 and "mount" in done.stderr and "permission" in done.stderr.lower():
        pytest.skip(f"no overlay mounts here: {done.stderr.strip()}")
    assert done.returncode == 0, done.stderr
    assert "config /etc/schoolgate/mitm_config.yaml (installed system-wide)" in done.stderr
    assert "data folder /var/lib/schoolgate (installed system-wide)" in done.stderr
    assert "db in /var/lib/schoolgate" in done.stdout
    # the checkout's own command finds the system-wide config too (it exists)
    assert "bbc.co.uk (site) open for everyone" in done.stdout
    # nothing changed outside the namespace
    assert (Path("/etc/schoolgate").exists(), Path("/var/lib/schoolgate").exists()) == existed
