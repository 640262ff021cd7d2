"""The runtime distribution (what the image installs) holds the gateway and no bench tooling.

The wheel is built from a copy of the checkout, so a stale ``build/`` or
egg-info in the working tree can neither leak into it nor be written by it.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent
DOCKERFILE = ROOT / "deploy" / "Dockerfile"

# Benchmark and load tooling, by module name; none of it may ship at runtime.
TOOLING = ("loadgen", "stampbot", "probe", "bare_autobahn", "bare_produce", "peer_bridge",
           "capacity", "report", "render", "profile", "resample_cost", "procs")
_TOOLING = re.compile(rf"(^|/)(kgw_bench|bench|{'|'.join(TOOLING)})(/|\.py$)")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> zipfile.ZipFile:
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src"
    shutil.copytree(ROOT, src, ignore=shutil.ignore_patterns(
        ".git", ".venv", "build", "dist", "*.egg-info", "__pycache__", ".*_cache", ".kafka"))
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
         "--wheel-dir", str(tmp / "dist"), str(src)],
        check=True, capture_output=True, timeout=120)
    (built,) = (tmp / "dist").glob("knowlarity_gateway-*.whl")
    return zipfile.ZipFile(built)


def _modules(wheel: zipfile.ZipFile) -> list[str]:
    return [n for n in wheel.namelist() if ".dist-info/" not in n]


def test_runtime_wheel_has_no_bench_or_load_tooling(wheel: zipfile.ZipFile) -> None:
    """No file of the runtime wheel is bench or load tooling, nor outside the gateway package."""
    names = _modules(wheel)
    assert [n for n in names if _TOOLING.search(n)] == []
    assert [n for n in names if not n.startswith("gateway/")] == []


def test_runtime_wheel_holds_the_node_and_the_core(wheel: zipfile.ZipFile) -> None:
    """The node, the pure core, the bot example, the simulator and the operator's tools ship."""
    names = set(_modules(wheel))
    for path in ("gateway/node.py", "gateway/core/call.py", "gateway/cli.py",
                 "gateway/bot/echo.py", "gateway/simulator/__init__.py",
                 "gateway/localkafka/__init__.py", "gateway/localkafka/pom.xml",
                 "gateway/sdk/__init__.py", "gateway/bot/ivr.py",
                 "gateway/bot/prompts/prompt.wav", "gateway/bot/prompts/goodbye.wav"):
        assert path in names, path


def test_only_the_cli_names_the_bench_package(wheel: zipfile.ZipFile) -> None:
    """Nothing at runtime imports kgw_bench but the CLI's guarded registration of ``bench``."""
    naming = [n for n in _modules(wheel)
              if n.endswith(".py") and b"kgw_bench" in wheel.read(n)]
    assert naming == ["gateway/cli.py"]
    cli = wheel.read("gateway/cli.py").decode()
    (line,) = [ln for ln in cli.splitlines() if re.search(r"^\s*(from|import) kgw_bench", ln)]
    assert line.startswith("    "), "kgw_bench must be imported lazily, inside a function"


def _stages(dockerfile: str) -> list[list[str]]:
    """The Dockerfile's stages as instructions, continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n", " ", dockerfile)
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.startswith("#")]
    froms = [i for i, ln in enumerate(lines) if ln.upper().startswith("FROM ")]
    return [lines[a:b] for a, b in zip(froms, [*froms[1:], len(lines)], strict=True)]


def test_image_installs_only_the_built_wheels() -> None:
    """The final image copies nothing from the tree: it installs the build stage's wheels only."""
    final = _stages(DOCKERFILE.read_text())[-1]
    copies = [ln for ln in final if re.match(r"(COPY|ADD)\b", ln, re.I)]
    for ln in copies:  # a COPY without --from=build /wheels/... would take the source tree
        assert re.search(r"--from=build\s+/wheels/\S*\.whl\s", ln), ln
    mounts = re.findall(r"--mount=\S*", " ".join(final))
    for mount in mounts:
        assert "from=build" in mount and "source=/wheels," in mount, mount
    assert copies or mounts, "the final stage gets no wheels from the build stage"
    (install,) = [ln for ln in final if "pip install" in ln]
    assert "--no-index" in install and "--find-links /wheels" in install


def test_image_build_stage_sees_only_the_runtime_sources() -> None:
    """The wheel is built from setup.cfg, pyproject.toml, README.md and gateway/ alone."""
    build = _stages(DOCKERFILE.read_text())[0]
    copied = [word for ln in build if ln.upper().startswith("COPY ")
              for word in ln.split()[1:-1]]
    assert sorted(copied) == ["README.md*", "gateway/", "pyproject.toml", "setup.cfg"]
    ignore = (ROOT / "deploy" / "Dockerfile.dockerignore").read_text().splitlines()
    rules = [ln.strip() for ln in ignore if ln.strip() and not ln.startswith("#")]
    assert rules[0] == "*", "the context must be an allow-list"
    assert {r[1:] for r in rules if r.startswith("!")} == {
        "setup.cfg", "pyproject.toml", "README.md", "gateway"}
