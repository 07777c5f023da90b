"""Runtime and build apart: the server package serves without the trainer or its dependencies.

`covergen[train]` (peft, tensorboard, imagehash) is an optional extra; `trainer/` holds the
LoRA trainer and the demo-model build. These tests keep the server package from growing an
import of either: one reads every import statement in `server/covergen/`, one starts the real
service in a fresh interpreter where those modules cannot be imported and paints one cover.
"""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SERVER_PACKAGE = REPO / "server" / "covergen"
# What only the trainer may import. tqdm is a runtime dependency: the `covergen prepare` client
# draws its progress bar with it.
TRAINER_ONLY = ("trainer", "peft", "tensorboard", "imagehash")
BLOCKED_AT_RUN_TIME = ("trainer", "peft", "tensorboard", "imagehash")


def _imported_roots(path: Path) -> set[str]:
    """Top-level names of every module `path` imports, at module level or inside functions."""
    roots: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            roots.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            roots.add(node.module.split(".")[0])
    return roots


def test_no_server_module_imports_trainer_code_or_its_dependencies() -> None:
    sources = [p for p in SERVER_PACKAGE.rglob("*.py") if "v1" not in p.relative_to(SERVER_PACKAGE).parts]
    assert len(sources) > 20  # the walk really found the package
    offenders = {
        str(path.relative_to(REPO)): sorted(_imported_roots(path) & set(TRAINER_ONLY)) for path in sources
    }
    assert {path: names for path, names in offenders.items() if names} == {}


# Run in a fresh interpreter: sys.modules[name] = None makes `import name` raise ImportError and
# importlib.util.find_spec(name) return None, which is how diffusers and transformers see a
# package that is not installed.
SERVE_WITHOUT_TRAINER = textwrap.dedent(
    """
    import asyncio, json, sys
    import torch
    torch.set_num_threads(1)  # two cores shared with the test process
    BLOCKED = {blocked!r}
    for name in BLOCKED:
        sys.modules[name] = None

    from covergen.server import start_service
    from covergen.settings import Settings
    from covergen.v1 import cover_pb2 as pb, cover_pb2_grpc as pb_grpc
    import grpc

    async def main():
        settings = Settings(  # the default embedded:regional base and the committed styles
            host="127.0.0.1", grpc_port=0, metrics_port=0, cache_enabled=False,
            cache_dir={cache_dir!r}, device="cpu", dtype="fp32", log_level="WARNING",
        )
        service = await start_service(settings)
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{{service.port}}") as channel:
                reply = await pb_grpc.CoverServiceStub(channel).GenerateCover(
                    pb.GenerateCoverRequest(region="杭州", title="西湖边新开的早餐店", steps=2), timeout=120
                )
        finally:
            await service.stop(1.0)
        loaded = sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED and sys.modules[m] is not None)
        print(json.dumps({{"adapters": [a.name for a in reply.adapters], "bytes": len(reply.image),
                          "loaded": loaded}}))

    asyncio.run(main())
    """
)


def test_service_starts_and_paints_without_the_trainer_extra(model_cache_dir: Path) -> None:
    script = SERVE_WITHOUT_TRAINER.format(blocked=BLOCKED_AT_RUN_TIME, cache_dir=str(model_cache_dir))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=env, cwd=REPO, timeout=240
    )
    assert done.returncode == 0, done.stderr[-4000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["adapters"] == ["jiangnan"]  # the committed regional adapter, really stacked
    assert result["bytes"] > 0
    assert result["loaded"] == []


MAX_FUNCTION_LINES = 120  # issue 11's bound; CONVENTIONS asks for ~80


def test_no_function_in_server_or_trainer_runs_past_120_lines() -> None:
    long: list[str] = []
    for root in (SERVER_PACKAGE, REPO / "trainer"):
        for path in root.rglob("*.py"):
            if "v1" in path.relative_to(root).parts:
                continue  # generated from the proto
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                    lines = (node.end_lineno or node.lineno) - node.lineno + 1
                    if lines > MAX_FUNCTION_LINES:
                        long.append(f"{path.relative_to(REPO)}:{node.lineno} {node.name} ({lines} lines)")
    assert not long, "split these into named steps: " + "; ".join(long)
