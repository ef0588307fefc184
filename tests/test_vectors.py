"""The browser decoder (web/decoder.js) and the reference decoder fold v2 streams alike.

Each ``tests/vectors/*.json`` holds frame texts and the summary they fold to. The Python
decoder must still produce it (so a change to the folding rules shows up here, and the
vectors are regenerated on purpose), and node running web/decoder.js must produce it too.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from flowboard.protocol.decoder import ViewState

VECTORS_DIR = Path(__file__).parent / "vectors"
VECTORS = sorted(VECTORS_DIR.glob("*.json"))
JS_RUNNER = VECTORS_DIR / "run_js_decoder.mjs"


def _load(path: Path) -> dict[str, Any]:
    vector: dict[str, Any] = json.loads(path.read_text())
    return vector


def _node() -> str:
    node = shutil.which("node")
    if node is None:
        if os.environ.get("FLOWBOARD_REQUIRE_SERVICES") == "1":
            pytest.fail("node is not on PATH and FLOWBOARD_REQUIRE_SERVICES=1")
        pytest.skip(
            "node is not on PATH: cannot run web/decoder.js (set FLOWBOARD_REQUIRE_SERVICES=1 to fail)"
        )
    return node


@pytest.fixture(scope="module")
def js_summaries() -> dict[str, Any]:
    node = _node()
    result = subprocess.run(
        [node, str(JS_RUNNER), *map(str, VECTORS)], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, f"node failed:\n{result.stderr}"
    summaries: dict[str, Any] = json.loads(result.stdout)
    return summaries


def test_there_are_vectors() -> None:
    """The shared vectors exist, including one recorded from the real server."""
    names = {path.stem for path in VECTORS}
    assert {"basics", "resume", "no_fold"} <= names
    assert any(name.startswith("recorded") for name in names), names


@pytest.mark.parametrize("path", VECTORS, ids=[p.stem for p in VECTORS])
def test_python_decoder_matches_vector(path: Path) -> None:
    """flowboard.protocol.decoder folds the vector's frames to its recorded summary."""
    vector = _load(path)
    state = ViewState(tape_limit=vector["tape_limit"], detail_limit=vector["detail_limit"])
    for frame in vector["frames"]:
        state.apply_frame(frame)
    assert json.loads(json.dumps(state.summary())) == vector["summary"]


@pytest.mark.parametrize("path", VECTORS, ids=[p.stem for p in VECTORS])
def test_browser_decoder_matches_vector(path: Path, js_summaries: dict[str, Any]) -> None:
    """web/decoder.js, run by node, folds the same frames to the same summary."""
    assert js_summaries[path.name] == _load(path)["summary"]
