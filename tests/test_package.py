"""Flowboard as an installed package: the wheel carries the page, and an installed
``flowboard serve`` serves it, outside the checkout.

The end-to-end test builds the wheel with pip (the build backend pinned in pyproject.toml),
installs it with the pinned dependencies (requirements.lock) into a fresh virtualenv in a
temporary folder, and fetches the page from the installed server. It needs the package index;
without one it skips, unless FLOWBOARD_REQUIRE_SERVICES=1.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
import tomllib
import venv
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from flowboard.config import ServerConfig
from flowboard.page import page_dir

REPO = Path(__file__).resolve().parent.parent
WEB = REPO / "web"
LISTENING = re.compile(r"flowboard listening on (http://\S+)")
#: What pip says when it cannot reach the package index (as opposed to a wrong pin).
OFFLINE = re.compile(r"Failed to establish a new connection|Temporary failure in name resolution|ProxyError")


def _configured_packages() -> list[str]:
    with (REPO / "pyproject.toml").open("rb") as file:
        packages: list[str] = tomllib.load(file)["tool"]["setuptools"]["packages"]
    return packages


def _page_files() -> list[Path]:
    return sorted(path.relative_to(WEB) for path in WEB.rglob("*") if path.is_file())


def test_the_wheel_configuration_names_every_package_and_every_folder_of_the_page() -> None:
    """pyproject.toml lists its packages by hand (the page is mapped in from web/): a new
    subpackage of flowboard/, or a new folder of web/, missing from the list would be left
    out of the wheel."""
    code = {
        ".".join(init.parent.relative_to(REPO).parts) for init in (REPO / "flowboard").rglob("__init__.py")
    }
    page = {".".join(("flowboard", "web", *path.parent.parts)) for path in _page_files()}
    assert sorted(code | page) == sorted(_configured_packages())


def test_the_default_page_in_a_checkout_is_web() -> None:
    """In the checkout (an editable install), the page served by default is web/ itself, so
    an edit to a page file shows on the next load."""
    assert page_dir() == WEB
    assert ServerConfig().web_dir == str(WEB)


def _fail_or_skip_offline(step: str, result: subprocess.CompletedProcess[str]) -> None:
    output = result.stdout + result.stderr
    if OFFLINE.search(output) and os.environ.get("FLOWBOARD_REQUIRE_SERVICES") != "1":
        pytest.skip(f"{step}: the package index is unreachable; set FLOWBOARD_REQUIRE_SERVICES=1 to fail")
    raise AssertionError(f"{step} failed ({result.returncode}):\n{output[-4000:]}")


def _run(step: str, *command: str | Path, cwd: Path) -> None:
    result = subprocess.run(
        [str(part) for part in command], cwd=cwd, capture_output=True, text=True, timeout=300
    )
    if result.returncode != 0:
        _fail_or_skip_offline(step, result)


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh virtualenv, outside the checkout, with the wheel built from the checkout."""
    root = tmp_path_factory.mktemp("installed")
    # The wheel is built from a copy, so that the build leaves nothing in the checkout.
    source = root / "source"
    ignore = shutil.ignore_patterns("__pycache__")
    for part in ("flowboard", "web"):
        shutil.copytree(REPO / part, source / part, ignore=ignore)
    shutil.copy2(REPO / "pyproject.toml", source)
    wheels = root / "wheels"
    _run("pip wheel", sys.executable, "-m", "pip", "wheel", "--no-deps", "-w", wheels, source, cwd=root)
    (wheel,) = wheels.glob("flowboard-*.whl")
    env = root / "venv"
    venv.create(env, with_pip=True)
    _run(
        "pip install",
        env / "bin" / "python",
        "-m",
        "pip",
        "install",
        "--quiet",
        "-c",
        REPO / "requirements.lock",
        wheel,
        cwd=root,
    )
    return env


@pytest.fixture
def served(installed: Path, tmp_path: Path) -> Iterator[str]:
    """The installed ``flowboard serve`` on port 0, run from a folder outside the checkout; its
    URL. Stopped with SIGTERM, which must end it cleanly (exit 0)."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH" and not k.startswith("FLOWBOARD_")}
    process = subprocess.Popen(
        [installed / "bin" / "flowboard", "serve", "--port", "0", "--sim-history", "0", "--db", "f.db"],
        cwd=tmp_path,
        env={**env, "PYTHONUNBUFFERED": "1"},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert process.stdout is not None
    try:
        deadline = time.monotonic() + 30
        output = ""
        while not (match := LISTENING.search(output)):
            line = process.stdout.readline()
            if not line:
                raise AssertionError(f"flowboard exited ({process.wait()}) before listening:\n{output}")
            assert time.monotonic() < deadline, "flowboard did not print its address within 30 s"
            output += line
        yield match.group(1)
        process.terminate()
        assert process.wait(timeout=15) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        process.stdout.close()


@pytest.mark.slow
def test_an_installed_wheel_serves_the_page_outside_the_checkout(installed: Path, served: str) -> None:
    """The wheel, installed in a fresh virtualenv, holds no path into the checkout, and its
    ``flowboard serve`` answers ``/`` and every file of the page (the scripts, the style
    sheet and the vendored chart library) with the bytes of the repository's web/."""
    site = installed / "lib" / f"python{sys.version_info.major}.{sys.version_info.minor}" / "site-packages"
    assert (site / "flowboard" / "web" / "index.html").is_file()
    assert not any(site.glob("__editable__*")), "an editable install, not the wheel"
    with httpx.Client(base_url=served, timeout=10) as http:
        index = http.get("/")
        assert index.status_code == 200
        assert index.content == (WEB / "index.html").read_bytes()
        # The scripts, modules and style sheets it loads (data: URIs aside).
        linked = re.findall(r'<(?:script|link)\b[^>]*\b(?:src|href)="([^":]+)"', index.text)
        assert "app.js" in linked and "vendor/uplot/uPlot.esm.js" in linked, linked
        for name in linked:
            assert (WEB / name).is_file(), f"the page links {name}, which is not a file of web/"
        for name in _page_files():
            response = http.get(f"/{name.as_posix()}")
            assert response.status_code == 200, name
            assert response.content == (WEB / name).read_bytes(), name
