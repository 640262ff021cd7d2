"""The sans-I/O core imports no I/O framework, no socket and no generated protobuf code."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

CORE = Path(__file__).resolve().parent.parent / "gateway" / "core"
FORBIDDEN_ROOTS = frozenset({"twisted", "autobahn", "aiokafka", "socket", "asyncio"})


def _absolute(node: ast.ImportFrom, package: str) -> str:
    """The absolute module an ImportFrom names, resolving leading dots against ``package``."""
    if not node.level:
        return node.module or ""
    parts = package.split(".")
    base = parts[: len(parts) - (node.level - 1)] if node.level > 1 else parts
    return ".".join(base + ([node.module] if node.module else []))


def _is_forbidden(module: str) -> bool:
    parts = module.split(".")
    return (
        parts[0] in FORBIDDEN_ROOTS
        or any(p.endswith("_pb2") for p in parts)
        or parts[:2] == ["gateway", "proto"]
    )


def forbidden_imports(source: str, package: str = "gateway.core") -> list[str]:
    """Every module (or ``module.name``) imported by ``source`` that the core must not use."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [a.name for a in node.names if _is_forbidden(a.name)]
        elif isinstance(node, ast.ImportFrom):
            module = _absolute(node, package)
            if _is_forbidden(module):
                found.append(module)
            else:
                # ``from gateway import proto``, ``from x import y_pb2``
                found += [f"{module}.{a.name}" for a in node.names
                          if _is_forbidden(f"{module}.{a.name}")]
    return found


@pytest.mark.parametrize(
    "source",
    [
        "import twisted",
        "import twisted.internet.reactor",
        "from twisted.internet import reactor",
        "from autobahn.twisted.websocket import WebSocketServerProtocol",
        "import aiokafka",
        "from aiokafka import AIOKafkaProducer",
        "import socket",
        "from socket import socket as s",
        "import asyncio",
        "import asyncio.events",
        "import json, asyncio",
        "from gateway.proto.knowlarity.gateway.v1 import inbound_pb2",
        "import gateway.proto.knowlarity.gateway.v1.command_pb2",
        "from gateway import proto",
        "import gateway.proto",
        "from elsewhere import thing_pb2",
        "import thing_pb2",
        "from .. import proto",
        "from ..proto.knowlarity.gateway.v1 import outbound_pb2",
        "def f():\n    import twisted\n",
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from twisted import logger\n",
        "try:\n    import asyncio\nexcept ImportError:\n    pass\n",
    ],
)
def test_checker_flags_forbidden_imports(source):
    """The checker flags every way of importing a forbidden module, so the real check can fail."""
    assert forbidden_imports(source) != []


@pytest.mark.parametrize(
    "source",
    [
        "import json",
        "import socketserver",
        "import asyncio_compat",
        "from gateway.core import model as m",
        "from gateway.core.errors import CloseCode",
        "from . import knowlarity",
        "from .wav import encode_wav",
        "import numpy as np\nimport soxr",
        "from gateway import topics",
        "x = 'import twisted'",
    ],
)
def test_checker_passes_allowed_imports(source):
    """The checker does not flag the imports the core is allowed, nor look-alike names."""
    assert forbidden_imports(source) == []


def _core_modules() -> list[Path]:
    return sorted(CORE.rglob("*.py"))


def test_core_modules_are_found():
    """The walk sees the core's modules, so the purity check below cannot pass on nothing."""
    names = {p.name for p in _core_modules()}
    assert {"__init__.py", "call.py", "errors.py", "knowlarity.py", "model.py", "playout.py",
            "resample.py"} <= names


@pytest.mark.parametrize("path", _core_modules(), ids=lambda p: str(p.relative_to(CORE)))
def test_core_module_imports_nothing_forbidden(path):
    """No module in gateway/core imports twisted, autobahn, aiokafka, socket, asyncio, protobuf."""
    rel = path.relative_to(CORE.parent.parent).with_suffix("")
    package = ".".join(rel.parts[:-1])  # the package relative imports resolve against
    assert forbidden_imports(path.read_text(encoding="utf-8"), package) == []
