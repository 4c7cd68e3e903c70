"""CPU per token of a LangGraph agent served through tokenrelay vs LangGraph's own streaming.

One LangGraph agent (a hand-built ReAct graph: model with a calculator tool <-> ToolNode), on a
fake chat model that streams fast: each request makes one tool round (the model calls the
calculator), then the model streams an answer of ``--tokens`` tokens, paced ``--interval-ms``
apart (0: as fast as the event loop goes). Each mode is its own uvicorn server process (one
worker, h11, no access log), serving the same graph:

* ``baseline``        FastAPI: POST /sse returns ``StreamingResponse(text/event-stream)`` over
                      ``graph.astream(..., stream_mode="messages")``, one
                      ``data: {"text": ...}`` frame per AIMessageChunk with content - what
                      LangGraph's docs show (it also streams the text of tool-calling messages);
* ``tokenrelay``      ``create_langchain_app(RunnableAgent(graph, policy="eager"))``, POST
                      /chat/events: typed SSE, final answer only, tool events, a session per
                      request (in-memory store), one ``answer_delta`` per token;
* ``tokenrelay-exact`` the same with the default ``messages`` policy: the answer of a
                      tool-enabled model call is released when the call ends (one event).

Server CPU = the server threads' on-CPU time (/proc/<pid>/task/*/schedstat, ns; clock ticks
from /proc/<pid>/stat where schedstat is missing) over one round of ``--requests`` requests
(``--concurrency`` at a time), divided by the answer tokens the model generated in that round
(the same count for every mode). The load generator (httpx, asyncio) runs in this process; the
server is pinned to the last CPU and this process to the others when there are two or more.
Rounds are interleaved (every mode once per round, rotating the order) after a warm-up round;
the table shows medians, and the ratios tokenrelay / baseline are per round, then the median.
Every response is checked: the answer text must be exactly the model's answer.

Usage:
  python bench/bench_langchain.py                     # about a minute
  python bench/bench_langchain.py --rounds 7 --tokens 400 --interval-ms 0
Server only (used internally): python bench/bench_langchain.py --serve MODE --port P ...
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import StreamingResponse

MODES = ("baseline", "tokenrelay", "tokenrelay-exact")
WORDS = [
    "Streaming",
    "works:",
    "東京の天気は晴れ,",
    "he",
    "said",
    '"ok"',
    "and",
    "closed",
    "the",
    "brace",
    "}",
    "then",
]


def answer_tokens(n: int) -> list[str]:
    return [WORDS[i % len(WORDS)] + " " for i in range(n)]


# -- the agent (built inside each server process) ---------------------------------------------------


def build_graph(tokens: int, interval_s: float) -> Any:
    import re

    from langchain_core.language_models.chat_models import BaseChatModel
    from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage, ToolMessage
    from langchain_core.messages.tool import tool_call_chunk
    from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult
    from langchain_core.tools import tool
    from langchain_core.utils.function_calling import convert_to_openai_tool
    from langgraph.graph import END, START, MessagesState, StateGraph
    from langgraph.prebuilt import ToolNode

    answer = answer_tokens(tokens)

    @tool
    def calculator(expression: str) -> str:
        """Evaluate an arithmetic expression."""
        from tokenrelay.tools.calculator import calculate

        return calculate(expression)

    class FastFakeModel(BaseChatModel):
        """Calls the calculator once, then streams the answer token by token."""

        @property
        def _llm_type(self) -> str:
            return "bench-fake"

        def bind_tools(self, tools: Sequence[Any], **kwargs: Any) -> Any:
            return self.bind(tools=[convert_to_openai_tool(t) for t in tools], **kwargs)

        def _generate(
            self, messages: list[BaseMessage], stop: Any = None, run_manager: Any = None, **kw: Any
        ) -> Any:
            return ChatResult(generations=[ChatGeneration(message=AIMessage(content="".join(answer)))])

        async def _astream(  # type: ignore[override]
            self, messages: list[BaseMessage], stop: Any = None, run_manager: Any = None, **kw: Any
        ) -> AsyncIterator[ChatGenerationChunk]:
            if not isinstance(messages[-1], ToolMessage):
                expression = re.sub(r"[^0-9+*/() -]", "", str(messages[-1].content)) or "1+1"
                args = json.dumps({"expression": expression})
                yield ChatGenerationChunk(
                    message=AIMessageChunk(
                        content="",
                        tool_call_chunks=[tool_call_chunk(name="calculator", args=args, id="c1", index=0)],
                    )
                )
                return
            start = time.monotonic()
            for i, token in enumerate(answer):
                if interval_s:
                    delay = start + i * interval_s - time.monotonic()
                    await asyncio.sleep(delay if delay > 0 else 0)
                else:
                    await asyncio.sleep(0)
                yield ChatGenerationChunk(message=AIMessageChunk(content=token))

    model = FastFakeModel().bind_tools([calculator])

    async def agent(state: Any) -> dict[str, Any]:
        return {"messages": [await model.ainvoke(state["messages"])]}

    def route(state: Any) -> str:
        last = state["messages"][-1]
        return "tools" if isinstance(last, AIMessage) and last.tool_calls else END

    graph = StateGraph(MessagesState)
    graph.add_node("agent", agent)
    graph.add_node("tools", ToolNode([calculator]))
    graph.add_edge(START, "agent")
    graph.add_conditional_edges("agent", route, ["tools", END])
    graph.add_edge("tools", "agent")
    return graph.compile()


def build_app(mode: str, tokens: int, interval_s: float) -> Any:
    graph = build_graph(tokens, interval_s)
    if mode == "baseline":
        from langchain_core.messages import AIMessageChunk, HumanMessage

        app = FastAPI()

        @app.get("/health")
        async def health() -> dict[str, str]:
            return {"status": "ok"}

        @app.post("/sse")
        async def sse(request: Request) -> StreamingResponse:
            body = await request.json()

            async def frames() -> AsyncIterator[str]:
                inputs = {"messages": [HumanMessage(content=body["text"])]}
                async for chunk, _meta in graph.astream(inputs, stream_mode="messages"):
                    if isinstance(chunk, AIMessageChunk) and chunk.content:
                        yield f"data: {json.dumps({'text': chunk.content}, ensure_ascii=False)}\n\n"
                yield "data: [DONE]\n\n"

            return StreamingResponse(frames(), media_type="text/event-stream")

        return app
    from tokenrelay.config import Settings
    from tokenrelay.integrations.langchain import RunnableAgent, create_langchain_app
    from tokenrelay.memory import InMemorySessionStore

    policy = "eager" if mode == "tokenrelay" else "messages"
    db = Path(tempfile.mkdtemp()) / "unused.db"
    return create_langchain_app(
        RunnableAgent(graph, policy=policy), Settings(db=f"sqlite:///{db}"), store=InMemorySessionStore()
    )


def serve(mode: str, port: int, tokens: int, interval_s: float) -> None:
    import uvicorn

    app = build_app(mode, tokens, interval_s)
    uvicorn.run(
        app, host="127.0.0.1", port=port, log_level="warning", access_log=False, http="h11", ws="none"
    )


# -- measuring -----------------------------------------------------------------------------------------


def server_cpu_s(pid: int) -> float:
    """On-CPU seconds of all threads of `pid`."""
    try:
        total = 0
        for tid in os.listdir(f"/proc/{pid}/task"):
            with contextlib.suppress(OSError), open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                total += int(f.read().split()[0])
        return total / 1e9
    except OSError:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Server:
    def __init__(self, mode: str, args: argparse.Namespace) -> None:
        self.mode = mode
        self.port = free_port()
        cmd = [
            sys.executable,
            __file__,
            "--serve",
            mode,
            "--port",
            str(self.port),
            "--tokens",
            str(args.tokens),
            "--interval-ms",
            str(args.interval_ms),
        ]
        self.proc = subprocess.Popen(cmd)
        cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
        if len(cpus) >= 2:
            os.sched_setaffinity(self.proc.pid, {cpus[-1]})
        self.url = f"http://127.0.0.1:{self.port}"

    def wait_ready(self, timeout: float = 60.0) -> None:
        import httpx

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.mode} server exited with {self.proc.returncode}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(self.url + "/health", timeout=1).status_code == 200:
                    return
            time.sleep(0.1)
        raise RuntimeError(f"{self.mode} server did not start")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()


async def one_request(client: Any, mode: str, url: str, expected: str) -> None:
    text = "What is 6*7?"
    if mode == "baseline":
        request = client.stream("POST", url + "/sse", json={"text": text})
    else:
        request = client.stream("POST", url + "/chat/events", json={"text": text})
    parts: list[str] = []
    buffer = ""
    finished = False
    async with request as response:
        response.raise_for_status()
        async for piece in response.aiter_text():
            buffer += piece
            while "\n\n" in buffer:
                frame, buffer = buffer.split("\n\n", 1)
                kind, data = "message", ""
                for line in frame.splitlines():
                    if line.startswith("event:"):
                        kind = line[6:].strip()
                    elif line.startswith("data:"):
                        data = line[5:].strip()
                if data == "[DONE]" or kind == "run_finished":
                    finished = True
                elif (mode == "baseline" and data) or kind == "answer_delta":
                    parts.append(json.loads(data)["text"])
                elif kind == "error":
                    raise RuntimeError(f"{mode}: run failed: {data}")
    got = "".join(parts)
    if not finished or got != expected:
        raise RuntimeError(f"{mode}: wrong answer ({len(got)} chars, finished={finished})")


async def load(mode: str, url: str, requests: int, concurrency: int, expected: str) -> float:
    import httpx

    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(timeout=60, limits=limits) as client:
        gate = asyncio.Semaphore(concurrency)

        async def guarded() -> None:
            async with gate:
                await one_request(client, mode, url, expected)

        start = time.perf_counter()
        await asyncio.gather(*(guarded() for _ in range(requests)))
        return time.perf_counter() - start


def measure(server: Server, args: argparse.Namespace, expected: str) -> tuple[float, float]:
    """(server CPU µs per answer token, wall seconds) of one round."""
    before = server_cpu_s(server.proc.pid)
    wall = asyncio.run(load(server.mode, server.url, args.requests, args.concurrency, expected))
    used = server_cpu_s(server.proc.pid) - before
    return used / (args.requests * args.tokens) * 1e6, wall


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="CPU per token: LangGraph via tokenrelay vs astream(messages)"
    )
    parser.add_argument("--serve", choices=MODES, help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--tokens", type=int, default=200, help="answer tokens per request (200)")
    parser.add_argument(
        "--interval-ms", type=float, default=1.0, help="model pacing per token, 0 = no pacing (1)"
    )
    parser.add_argument("--requests", type=int, default=30, help="requests per round and mode (30)")
    parser.add_argument("--concurrency", type=int, default=4, help="requests in flight (4)")
    parser.add_argument("--rounds", type=int, default=5, help="measured rounds (5)")
    parser.add_argument("--modes", default=",".join(MODES))
    args = parser.parse_args(argv)
    if args.serve:
        serve(args.serve, args.port, args.tokens, args.interval_ms / 1000)
        return 0
    try:
        import langgraph  # noqa: F401
    except ImportError:
        print("bench_langchain needs LangGraph: pip install 'tokenrelay[langchain]'")
        return 0
    modes = [m for m in args.modes.split(",") if m]
    cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    servers = {mode: Server(mode, args) for mode in modes}
    if len(cpus) >= 2:
        os.sched_setaffinity(0, set(cpus[:-1]))
    expected = "".join(answer_tokens(args.tokens))
    results: dict[str, list[float]] = {mode: [] for mode in modes}
    walls: dict[str, list[float]] = {mode: [] for mode in modes}
    try:
        for server in servers.values():
            server.wait_ready()
        print(
            f"{args.tokens} answer tokens per request after one tool round, {args.interval_ms:g} ms apart; "
            f"{args.requests} requests per round, {args.concurrency} in flight; {args.rounds} rounds "
            f"(+1 warm-up); Python {sys.version.split()[0]}, {len(cpus) or '?'} CPUs"
        )
        for round_no in range(args.rounds + 1):
            order = modes[round_no % len(modes) :] + modes[: round_no % len(modes)]
            for mode in order:
                cpu_us, wall = measure(servers[mode], args, expected)
                if round_no:  # round 0 warms up
                    results[mode].append(cpu_us)
                    walls[mode].append(wall)
    finally:
        for server in servers.values():
            server.stop()
    print(f"\n{'mode':<18}{'CPU µs/token (median)':>24}{'min':>9}{'max':>9}{'wall s/round':>14}")
    for mode in modes:
        values = results[mode]
        print(
            f"{mode:<18}{statistics.median(values):>24.1f}{min(values):>9.1f}{max(values):>9.1f}"
            f"{statistics.median(walls[mode]):>14.2f}"
        )
    if "baseline" in results:
        base = results["baseline"]
        print()
        for mode in modes:
            if mode == "baseline":
                continue
            ratios = [a / b for a, b in zip(results[mode], base, strict=True)]
            print(
                f"{mode} / baseline CPU per token: {statistics.median(ratios):.2f} "
                f"(per round: {', '.join(f'{r:.2f}' for r in ratios)})"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
