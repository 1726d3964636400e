"""Where the stdio server's own CPU time goes, sampled with py-spy while a real client drives it.

Starts `openarc-mcp serve` through the SDK's stdio client (as hosts do), attaches
``py-spy record --format raw`` to the server process (not to the batching LLM's child, whose time is
GenAI's) for each workload, and prints, per workload, the share of busy samples by where the
innermost Python frame lies (openarc_mcp, the MCP SDK, pydantic, anyio/asyncio, jsonschema, the
rest) and the top functions by own samples. Workloads:

  generate   8 streamed generate calls, 96 tokens each (text forwarded while it decodes)
  embed      10 bursts of 64 concurrent one-text embed calls (coalesced)
  ping       2,000 pings (the protocol floor)

    python benchmarks/profile_server.py [--only generate,embed,ping] [--rate 500]

Needs py-spy (`pip install py-spy`) and permission to trace the child (root, or ptrace_scope 0).
"""

from __future__ import annotations

import argparse
import shutil
import signal
import subprocess
import sys
import tempfile
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path

import anyio
from mcp import Client

from openarc_mcp.library import DEFAULT_EMBEDDING, DEFAULT_LLM
from openarc_mcp.library.prepare import prepare_models

sys.path.insert(0, str(Path(__file__).resolve().parent))
from soak import models_dir_from, server_pid
from suite import connected, openarc_server

GROUPS = (
    ("openarc_mcp", "/openarc_mcp/"),
    ("mcp SDK", "/mcp/"),
    ("pydantic", "/pydantic"),
    ("jsonschema", "/jsonschema/"),
    ("anyio/asyncio", "/anyio/"),
    ("anyio/asyncio", "/asyncio/"),
    ("starlette/httpx", "/starlette/"),
)


async def generate_load(client: Client) -> None:
    async def ignore(progress: float, total: float | None, message: str | None) -> None:
        return None

    for index in range(8):
        arguments = {
            "model": DEFAULT_LLM,
            "prompt": f"Write a short story about a lighthouse keeper, part {index}.",
            "max_tokens": 96,
            "temperature": 0,
        }
        await client.call_tool("generate", arguments, progress_callback=ignore)


async def embed_load(client: Client) -> None:
    for burst in range(10):
        async with anyio.create_task_group() as group:
            for index in range(64):
                text = f"Burst {burst}, sentence {index}: the keeper wrote the weather into the log."
                group.start_soon(client.call_tool, "embed", {"model": DEFAULT_EMBEDDING, "texts": text})


async def ping_load(client: Client) -> None:
    for _ in range(2000):
        await client.send_ping()  # the suite's clients speak the legacy protocol version, as hosts do


WORKLOADS: dict[str, Callable[[Client], Awaitable[None]]] = {
    "generate": generate_load,
    "embed": embed_load,
    "ping": ping_load,
}


IDLE = (
    "Condition.wait",
    "Event.wait",
    "EpollSelector.select",
    "Connection._recv",
    "_worker",
    "WorkerThread.run",
    "Thread._wait_for_tstate_lock",
)
"""Innermost frames of threads that only wait (py-spy cannot always tell them from busy ones)."""


def summarize(raw: str, top: int = 12) -> str:
    """Busy samples by group of the innermost frame, and the top functions by own samples."""
    groups: Counter[str] = Counter()
    functions: Counter[str] = Counter()
    idle = 0
    for line in raw.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        leaf = stack.split(";")[-1]
        if leaf.split(" (")[0] in IDLE:
            idle += int(count)
            continue
        groups[_group(leaf)] += int(count)
        functions[leaf.replace(str(Path(sys.prefix)), "")] += int(count)
    total = sum(groups.values()) or 1
    lines = [f"  busy samples: {total} (waiting threads left out: {idle})"]
    lines += [f"  {share / total:6.1%}  {name}" for name, share in groups.most_common()]
    lines.append("  top functions (own samples):")
    lines += [f"  {count / total:6.1%}  {name}" for name, count in functions.most_common(top)]
    return "\n".join(lines)


def _group(frame: str) -> str:
    for name, marker in GROUPS:
        if marker in frame:
            return name
    return "other (stdlib, native)"


async def profile(models_dir: Path, only: set[str], rate: int) -> None:
    params = openarc_server(models_dir, OPENARC_PRELOAD=f"{DEFAULT_LLM},{DEFAULT_EMBEDDING}")
    async with connected(params) as client:
        await generate_load(client)  # waits for the preloads; warms both models up
        await embed_load(client)
        pid = server_pid()
        for name, workload in WORKLOADS.items():
            if only and name not in only:
                continue
            output = Path(tempfile.mkdtemp()) / f"{name}.txt"
            spy_binary = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
            command = [
                spy_binary,
                "record",
                "--pid",
                str(pid),
                "--rate",
                str(rate),
                "--format",
                "raw",
                "--full-filenames",
            ]
            spy = await anyio.open_process([*command, "--output", str(output)], stderr=subprocess.DEVNULL)
            await anyio.sleep(1.0)  # py-spy attaches
            await workload(client)
            spy.send_signal(signal.SIGINT)  # py-spy writes what it sampled
            with anyio.fail_after(30):
                await spy.wait()
            sys.stdout.write(f"{name}:\n{summarize(output.read_text() if output.exists() else '')}\n\n")


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--only", default="", help="comma-separated: generate, embed, ping")
    parser.add_argument("--rate", type=int, default=500, help="py-spy samples per second")
    parser.add_argument("--models-dir", type=Path, default=None)
    args = parser.parse_args()
    models_dir = models_dir_from(args.models_dir)
    prepare_models([DEFAULT_LLM, DEFAULT_EMBEDDING], models_dir)
    only = {part.strip().lower() for part in args.only.split(",") if part.strip()}
    anyio.run(profile, models_dir, only, args.rate)
    return 0


if __name__ == "__main__":
    sys.exit(main())
