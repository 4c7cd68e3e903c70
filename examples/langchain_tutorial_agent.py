"""The tutorial's LangChain agent on current LangChain/LangGraph, served through tokenrelay.

The tutorial built a conversational agent with `initialize_agent(...)`: window memory of the
last k=5 exchanges, a math tool (`llm-math`), `max_iterations=3` and
`early_stopping_method="generate"`, and streamed it over FastAPI with a callback handler.
`initialize_agent`, `ConversationBufferWindowMemory` and `LLMMathChain` are gone from current
LangChain; this is the same agent as a LangGraph graph with native tool calling:

    START -> agent --(tool calls)--> tools --(fewer than 3 tool rounds)--> agent
                   \\                       \\--(3 tool rounds: generate)--> final -> END
                    \\--(no tool calls)--> END

* memory: a checkpointer (`MemorySaver`) keeps each conversation under its thread id, which
  tokenrelay sets to the session id; the model sees the last 5 exchanges (question and final
  answer; earlier turns' tool steps are dropped), like `ConversationBufferWindowMemory(k=5)`;
* the math tool is tokenrelay's safe calculator (no `eval`), as a LangChain tool;
* `max_iterations=3`: after three rounds of tool calls in one turn, `final` makes one last
  model call without tools, given the tool results, so the run always ends with an answer.

`RunnableAgent` serves it: raw /chat, typed SSE /chat/events, OpenAI-compatible
/v1/chat/completions and the web page, final answer only, tool calls as tool events. By
default (`--policy messages`) the text of a model message that was offered tools is released
when that message ends, so the answer never contains text of a message that calls a tool; the
`final` node's answer (no tools offered) streams token by token. `--policy eager` streams
tool-enabled answers token by token too (exact for models that write no text before a tool
call).

    pip install "tokenrelay[langchain]"
    python examples/langchain_tutorial_agent.py                       # offline demo model, :8000
    python examples/langchain_tutorial_agent.py --ask "What is 2**10?"
    pip install langchain langchain-openai && export OPENAI_API_KEY=...
    python examples/langchain_tutorial_agent.py --model openai:gpt-4o-mini

The demo model is not an LLM: it answers arithmetic questions by calling the calculator, so the
whole pipeline runs without a model download or an API key.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import sys
from collections.abc import AsyncIterator, Iterator, Sequence
from typing import Any

from langchain_core.callbacks import AsyncCallbackManagerForLLMRun, CallbackManagerForLLMRun
from langchain_core.language_models.chat_models import BaseChatModel
from langchain_core.messages import (
    AIMessage,
    AIMessageChunk,
    AnyMessage,
    BaseMessage,
    HumanMessage,
    SystemMessage,
    ToolMessage,
)
from langchain_core.messages.tool import tool_call_chunk
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult
from langchain_core.tools import BaseTool, StructuredTool
from langchain_core.utils.function_calling import convert_to_openai_tool
from langgraph.checkpoint.memory import MemorySaver
from langgraph.graph import END, START, MessagesState, StateGraph
from langgraph.prebuilt import ToolNode

from tokenrelay.events import AnswerDelta, RunError, ToolCallFinished, ToolCallStarted
from tokenrelay.integrations.langchain import AnswerPolicy, RunnableAgent, create_langchain_app
from tokenrelay.tools.calculator import CALCULATOR_DESCRIPTION, calculate

MEMORY_K = 5
MAX_ITERATIONS = 3
SYSTEM_PROMPT = (
    "You are a helpful assistant. Use the Calculator tool for any arithmetic instead of "
    "computing in your head, then answer the user in one or two sentences."
)
FINAL_PROMPT = "You have used all your tool calls. Using the results above, give your final answer now."


def calculator_tool() -> BaseTool:
    """The tutorial's math tool: tokenrelay's safe calculator as a LangChain tool."""

    def run(expression: str) -> str:
        return calculate(expression)

    return StructuredTool.from_function(run, name="Calculator", description=CALCULATOR_DESCRIPTION)


# -- memory: the last k exchanges ------------------------------------------------------------


def window(messages: Sequence[AnyMessage], k: int = MEMORY_K) -> list[AnyMessage]:
    """What the model sees: the last `k` earlier exchanges as (question, final answer) pairs,
    then the current turn in full (its question and any tool steps so far)."""
    starts = [i for i, m in enumerate(messages) if isinstance(m, HumanMessage)]
    if not starts:
        return list(messages)
    earlier: list[list[AnyMessage]] = []
    for start, end in zip(starts, starts[1:], strict=False):
        turn = messages[start:end]
        answer = next(
            (m for m in reversed(turn) if isinstance(m, AIMessage) and not m.tool_calls and m.content), None
        )
        if answer is not None:
            earlier.append([turn[0], AIMessage(content=answer.content)])
    kept = earlier[-k:] if k > 0 else []
    return [m for pair in kept for m in pair] + list(messages[starts[-1] :])


def tool_rounds(messages: Sequence[AnyMessage]) -> int:
    """How many model calls of the current turn asked for tools."""
    count = 0
    for message in reversed(messages):
        if isinstance(message, HumanMessage):
            break
        if isinstance(message, AIMessage) and message.tool_calls:
            count += 1
    return count


def _steps_text(messages: Sequence[AnyMessage]) -> str:
    """The current turn's tool steps as plain text (providers differ on whether tool messages
    may be sent to a model that is offered no tools)."""
    lines = []
    for message in messages:
        if isinstance(message, ToolMessage):
            lines.append(f"- {message.name or 'tool'} returned: {message.content}")
        elif isinstance(message, AIMessage):
            for call in message.tool_calls:
                lines.append(f"- called {call['name']} with {json.dumps(call['args'])}")
    return "\n".join(lines)


# -- the graph ---------------------------------------------------------------------------------


def build_agent(
    model: BaseChatModel,
    *,
    memory_k: int = MEMORY_K,
    max_iterations: int = MAX_ITERATIONS,
    checkpointer: Any = None,
    system_prompt: str = SYSTEM_PROMPT,
) -> Any:
    """The tutorial's agent as a compiled LangGraph graph (memory in `checkpointer`,
    a new `MemorySaver` unless one is given)."""
    tools = [calculator_tool()]
    with_tools = model.bind_tools(tools)

    async def agent(state: MessagesState) -> dict[str, Any]:
        prompt = [SystemMessage(content=system_prompt), *window(state["messages"], memory_k)]
        return {"messages": [await with_tools.ainvoke(prompt)]}

    async def final(state: MessagesState) -> dict[str, Any]:
        # early_stopping_method="generate": one more call, no tools, answer from the results
        messages = window(state["messages"], memory_k)
        start = max(i for i, m in enumerate(messages) if isinstance(m, HumanMessage))
        question = f"{messages[start].content}\n\nTool results so far:\n{_steps_text(messages[start:])}"
        prompt = [
            SystemMessage(content=system_prompt),
            *messages[:start],
            HumanMessage(content=f"{question}\n\n{FINAL_PROMPT}"),
        ]
        return {"messages": [await model.ainvoke(prompt)]}

    def after_agent(state: MessagesState) -> str:
        last = state["messages"][-1]
        return "tools" if isinstance(last, AIMessage) and last.tool_calls else END

    def after_tools(state: MessagesState) -> str:
        return "final" if tool_rounds(state["messages"]) >= max_iterations else "agent"

    graph = StateGraph(MessagesState)
    graph.add_node("agent", agent)
    graph.add_node("tools", ToolNode(tools))
    graph.add_node("final", final)
    graph.add_edge(START, "agent")
    graph.add_conditional_edges("agent", after_agent, ["tools", END])
    graph.add_conditional_edges("tools", after_tools, ["agent", "final"])
    graph.add_edge("final", END)
    return graph.compile(checkpointer=checkpointer or MemorySaver(), name="tutorial-agent")


def tutorial_agent(
    model: BaseChatModel, *, policy: AnswerPolicy = "messages", **options: Any
) -> RunnableAgent:
    """The graph wrapped for tokenrelay: answer text only from the `agent` and `final` nodes."""
    return RunnableAgent(
        build_agent(model, **options),
        policy=policy,
        answer_nodes={"agent", "final"},
    )


# -- an offline demo model ---------------------------------------------------------------------

_EXPRESSION = re.compile(r"[-+*/^%().\d\s]*\d[-+*/^%().\d\s]*[-+*/^%][-+*/^%().\d\s]*\d[-+*/^%().\d\s)]*")


class DemoChatModel(BaseChatModel):
    """A stand-in for an LLM so the example runs anywhere: it calls the Calculator on the
    arithmetic in the question and answers with the result, streaming word by word."""

    delay_s: float = 0.02

    @property
    def _llm_type(self) -> str:
        return "tokenrelay-demo"

    def bind_tools(self, tools: Sequence[Any], **kwargs: Any) -> Any:
        return self.bind(tools=[convert_to_openai_tool(t) for t in tools], **kwargs)

    def _reply(self, messages: list[BaseMessage], tools: bool) -> AIMessage:
        last = messages[-1]
        if isinstance(last, ToolMessage):
            return AIMessage(content=f"The answer is {last.content}.")
        text = str(last.content)
        if "Tool results so far" in text:
            results = re.findall(r"returned: (.*)", text)
            return AIMessage(
                content=f"The answer is {results[-1]}." if results else "I could not work it out."
            )
        match = _EXPRESSION.search(text)
        if tools and match:
            return AIMessage(
                content="",
                tool_calls=[
                    {"name": "Calculator", "args": {"expression": match.group().strip()}, "id": "call_demo"}
                ],
            )
        return AIMessage(content="I am a demo model: ask me some arithmetic, such as 'What is 2**10?'.")

    def _chunks(self, reply: AIMessage) -> Iterator[ChatGenerationChunk]:
        for word in re.findall(r"\S+\s*", str(reply.content)):
            yield ChatGenerationChunk(message=AIMessageChunk(content=word))
        for index, call in enumerate(reply.tool_calls):
            yield ChatGenerationChunk(
                message=AIMessageChunk(
                    content="",
                    tool_call_chunks=[
                        tool_call_chunk(
                            name=call["name"], args=json.dumps(call["args"]), id=call["id"], index=index
                        )
                    ],
                )
            )

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        return ChatResult(
            generations=[ChatGeneration(message=self._reply(messages, bool(kwargs.get("tools"))))]
        )

    async def _astream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> AsyncIterator[ChatGenerationChunk]:
        for chunk in self._chunks(self._reply(messages, bool(kwargs.get("tools")))):
            await asyncio.sleep(self.delay_s)
            yield chunk


def load_model(name: str) -> BaseChatModel:
    if name == "demo":
        return DemoChatModel()
    from langchain.chat_models import init_chat_model  # needs `pip install langchain <provider package>`

    model: BaseChatModel = init_chat_model(name)
    return model


# -- entry point -------------------------------------------------------------------------------


async def ask(agent: RunnableAgent, question: str, *, session_id: str = "cli") -> str:
    """Stream one answer to the terminal; tool calls go to stderr."""
    answer = ""
    async for event in agent.run(question, session_id=session_id):
        if isinstance(event, AnswerDelta):
            answer += event.text
            print(event.text, end="", flush=True)
        elif isinstance(event, ToolCallStarted):
            print(f"[{event.name}({json.dumps(event.arguments)})]", file=sys.stderr, flush=True)
        elif isinstance(event, ToolCallFinished):
            print(f"[-> {event.result if event.error is None else 'error: ' + event.error}]", file=sys.stderr)
        elif isinstance(event, RunError):
            print(f"\nerror: {event.message}", file=sys.stderr)
    print()
    return answer


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument(
        "--model", default="demo", help="'demo' or a LangChain model id, e.g. openai:gpt-4o-mini"
    )
    parser.add_argument("--policy", default="messages", choices=["messages", "eager"])
    parser.add_argument("--ask", metavar="QUESTION", help="answer one question in the terminal and exit")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    args = parser.parse_args(argv)
    agent = tutorial_agent(load_model(args.model), policy=args.policy)
    if args.ask:
        asyncio.run(ask(agent, args.ask))
        return 0
    import uvicorn

    from tokenrelay.config import Settings

    uvicorn.run(create_langchain_app(agent, Settings.from_env()), host=args.host, port=args.port)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
