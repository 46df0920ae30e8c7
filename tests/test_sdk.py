"""The JavaScript SDK (sdk/): its node tests against the real server, its types,
its built files and its size. Node and npm are needed: skipped without them,
except in CI (CI=true), where their absence fails."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

SDK = Path(__file__).resolve().parent.parent / "sdk"
SIZE_BUDGET = 10 * 1024  # bytes, minified and gzipped (sdk/README.md)


def need(tool: str) -> str:
    """The tool's path; a skip outside CI, a failure in CI, when it is missing."""
    path = shutil.which(tool)
    if path is None:
        message = f"{tool} is not installed (the SDK's tests need Node 18+ and npm)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message)
        pytest.skip(message)
    return path


def run(args: list[str], timeout: float, env: dict[str, str] | None = None) -> str:
    """Runs a command in sdk/; fails the test with its whole output when it fails."""
    result = subprocess.run(args, cwd=SDK, capture_output=True, text=True, timeout=timeout,
                            env={**os.environ, **(env or {})})
    output = result.stdout + result.stderr
    if result.returncode != 0:
        pytest.fail(f"{' '.join(args)} exited with {result.returncode}:\n{output}", pytrace=False)
    return output


@pytest.fixture(scope="module")
def sdk() -> Path:
    """sdk/ with its dev dependencies installed from package-lock.json (npm ci, when
    node_modules is missing or older than the lockfile)."""
    need("node")
    npm = need("npm")
    installed = SDK / "node_modules" / ".package-lock.json"
    lock = SDK / "package-lock.json"
    if not installed.exists() or installed.stat().st_mtime < lock.stat().st_mtime:
        run([npm, "ci", "--no-audit", "--no-fund"], timeout=300)
    return SDK


def test_node_suite(sdk: Path) -> None:
    """The SDK's scenarios on a real-socket wx against run.py: chat, restart, hide/show,
    a silent network drop, a killed app's queue, token expiry, close codes, records."""
    tests = sorted(str(p.relative_to(sdk)) for p in (sdk / "test").glob("*.test.mjs"))
    assert tests, "no node tests found"
    output = run(["node", "--test", *tests], timeout=240, env={"SDK_TEST_PYTHON": sys.executable})
    assert "# fail 0" in output, output


def test_types(sdk: Path) -> None:
    """index.d.ts compiles, and a Mini Program's use of it type-checks against miniprogram-api-typings."""
    run(["node", "node_modules/typescript/bin/tsc", "-p", "tsconfig.json"], timeout=120)


def test_dist_is_built_from_src(sdk: Path) -> None:
    """dist/ (what WeChat's npm build and browsers load) is what src/ builds to."""
    run(["node", "scripts/build.mjs", "--check"], timeout=60)


def test_size_within_budget(sdk: Path) -> None:
    """The ES module, minified (terser) and gzipped, stays under 10 KB."""
    output = run(["node", "scripts/size.mjs", "--max", str(SIZE_BUDGET)], timeout=60)
    assert "minified+gzipped" in output
