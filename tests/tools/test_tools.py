"""Tools: `@tool` schemas from type hints, argument parsing/validation, `Tool.invoke` outcomes
(errors, timeouts, threads), `as_tools`, and the built-in Calculator tool."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from typing import Any

import pytest

from tokenrelay.tools import Tool, ToolOutcome, as_tools, calculator, default_tools, tool


@tool
def convert(amount: float, currency: str, rounding: int = 2) -> str:
    """Convert an amount of money to another currency.

    This second paragraph is not part of the description."""
    return f"{round(amount * 2, rounding)} {currency}"


@tool
def shout(text: str) -> str:
    """Upper-case the text."""
    return text.upper()


@tool
def square(n: int) -> int:
    """Square an integer."""
    return n * n


# ----------------------------------------------------------------------------- schemas


def test_schema_from_type_hints() -> None:
    assert convert.name == "convert"
    assert convert.description == "Convert an amount of money to another currency."
    assert convert.parameters == {
        "type": "object",
        "properties": {
            "amount": {"type": "number"},
            "currency": {"type": "string"},
            "rounding": {"type": "integer", "default": 2},
        },
        "required": ["amount", "currency"],
    }


def test_spec_is_openai_function() -> None:
    spec = convert.spec()
    assert spec.name == "convert"
    assert spec.parameters == convert.parameters
    assert spec.to_openai() == {
        "type": "function",
        "function": {
            "name": "convert",
            "description": "Convert an amount of money to another currency.",
            "parameters": convert.parameters,
        },
    }


def test_decorator_with_name_and_description() -> None:
    @tool(name="Weather", description="Current weather for a city.")
    def weather(city: str) -> str:
        """Ignored docstring."""
        return "sunny"

    assert isinstance(weather, Tool)
    assert weather.name == "Weather"
    assert weather.description == "Current weather for a city."
    assert weather.parameters == {
        "type": "object",
        "properties": {"city": {"type": "string"}},
        "required": ["city"],
    }


def test_description_falls_back_to_function_name() -> None:
    def nodoc(x: int) -> int:
        return x

    assert Tool.from_function(nodoc).description == "nodoc"


def test_untyped_parameter_accepts_anything() -> None:
    def anything(value):  # type: ignore[no-untyped-def]
        return value

    t = Tool.from_function(anything)
    assert t.parameters == {"type": "object", "properties": {"value": {}}, "required": ["value"]}
    assert t.parse_arguments({"value": [1, "a"]}) == {"value": [1, "a"]}


def test_var_args_are_rejected() -> None:
    def variadic(*args: int) -> int:
        return sum(args)

    def kw(**kwargs: int) -> int:
        return len(kwargs)

    with pytest.raises(TypeError, match=r"\*args/\*\*kwargs"):
        Tool.from_function(variadic)
    with pytest.raises(TypeError, match=r"\*args/\*\*kwargs"):
        Tool.from_function(kw)


def test_underscore_parameter_is_rejected() -> None:
    # pydantic would treat `_x` as a private attribute and drop it from the schema silently
    def private(_x: str) -> str:
        return _x

    with pytest.raises(TypeError, match="underscore"):
        Tool.from_function(private)


# ----------------------------------------------------------------------------- single input


def test_single_input_detection() -> None:
    def one(x: str) -> str:
        return x

    def one_required_one_optional(x: str, y: int = 1) -> str:
        return x

    def only_optional(x: str = "a") -> str:
        return x

    def none() -> str:
        return ""

    def two(x: str, y: str) -> str:
        return x + y

    assert Tool.from_function(one).single_input == "x"
    assert Tool.from_function(one_required_one_optional).single_input is None
    assert Tool.from_function(only_optional).single_input is None
    assert Tool.from_function(none).single_input is None
    assert Tool.from_function(two).single_input is None
    assert calculator.single_input == "expression"
    assert shout.single_input == "text"


def test_single_input_takes_plain_text_or_json_object() -> None:
    assert shout.parse_arguments("hello {there}") == {"text": "hello {there}"}
    assert shout.parse_arguments('{"text": "hi"}') == {"text": "hi"}
    assert shout.parse_arguments({"text": "hi"}) == {"text": "hi"}
    assert square.parse_arguments("7") == {"n": 7}
    assert square.parse_arguments(7) == {"n": 7}


# ----------------------------------------------------------------------------- validation


def test_multi_input_arguments_from_json_text_and_dict() -> None:
    expected = {"amount": 3.5, "currency": "EUR", "rounding": 2}
    assert convert.parse_arguments('{"amount": 3.5, "currency": "EUR"}') == expected
    assert convert.parse_arguments({"amount": "3.5", "currency": "EUR"}) == expected
    assert convert.parse_arguments({"amount": 1, "currency": "USD", "rounding": 0}) == {
        "amount": 1.0,
        "currency": "USD",
        "rounding": 0,
    }


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"amount": "lots", "currency": "EUR"}, r"invalid input for convert: amount: .*valid number"),
        ({"amount": 1}, r"invalid input for convert: currency: Field required"),
        ({"amount": 1, "currency": "EUR", "rounding": "x"}, r"rounding: .*valid integer"),
        ("just some text", r"convert needs a JSON object with \['amount', 'currency', 'rounding'\]"),
        ('{"amount": 1, ', r"convert needs a JSON object"),
        ([1, 2], r"convert needs a JSON object"),
    ],
)
def test_invalid_arguments_raise_value_error(arguments: Any, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        convert.parse_arguments(arguments)


def test_single_input_validation_error() -> None:
    with pytest.raises(ValueError, match=r"invalid input for square: n: .*valid integer"):
        square.parse_arguments("seven")


def test_tool_without_parameters() -> None:
    @tool
    def now() -> str:
        """The time."""
        return "noon"

    assert now.parameters == {"type": "object", "properties": {}}
    assert now.parse_arguments("") == {}
    assert now.parse_arguments({}) == {}


@pytest.mark.anyio
async def test_invalid_arguments_become_error_outcome() -> None:
    outcome = await convert.invoke({"amount": "lots"})
    assert outcome.result is None
    assert outcome.error is not None
    assert outcome.error.startswith("invalid input for convert:")
    assert "amount" in outcome.error and "currency" in outcome.error
    assert outcome.observation == "Error: " + outcome.error


# ----------------------------------------------------------------------------- invoke


@pytest.mark.anyio
async def test_invoke_returns_result() -> None:
    assert await convert.invoke('{"amount": 2, "currency": "EUR"}') == ToolOutcome(result="4.0 EUR")
    assert (await shout.invoke("abc")).observation == "ABC"


@pytest.mark.anyio
async def test_non_string_results_are_json() -> None:
    @tool
    def info(city: str) -> dict[str, Any]:
        """Facts."""
        return {"city": city, "population": 1_400_000, "name": "東京"}

    outcome = await info.invoke("Tokyo")
    assert outcome.result is not None
    assert json.loads(outcome.result) == {"city": "Tokyo", "population": 1400000, "name": "東京"}
    assert "東京" in outcome.result  # not \u-escaped
    assert (await square.invoke(12)).result == "144"


@pytest.mark.anyio
async def test_long_results_are_truncated() -> None:
    @tool
    def big(n: int) -> str:
        """Long text."""
        return "x" * n

    outcome = await big.invoke(20_000)
    assert outcome.result is not None
    assert outcome.result.startswith("x" * 8000)
    assert outcome.result.endswith("[truncated 12000 chars]")
    assert len(outcome.result) < 8100


@pytest.mark.anyio
async def test_exception_becomes_error_outcome() -> None:
    @tool
    def explode(text: str) -> str:
        """Fails."""
        raise RuntimeError(f"kaboom: {text}")

    @tool
    def silent(text: str) -> str:
        """Fails without a message."""
        raise KeyError

    outcome = await explode.invoke("now")
    assert outcome == ToolOutcome(error="RuntimeError: kaboom: now")
    assert outcome.observation == "Error: RuntimeError: kaboom: now"
    assert (await silent.invoke("x")).error == "KeyError"


@pytest.mark.anyio
async def test_async_tool_is_awaited_on_the_loop() -> None:
    seen: list[bool] = []

    @tool
    async def lookup(key: str) -> str:
        """Async lookup."""
        seen.append(threading.current_thread() is threading.main_thread())
        await asyncio.sleep(0)
        return key[::-1]

    assert (await lookup.invoke("abc")).result == "cba"
    assert seen == [True]


@pytest.mark.anyio
async def test_sync_tool_runs_in_a_worker_thread() -> None:
    seen: list[tuple[bool, bool]] = []

    @tool
    def blocking(text: str) -> str:
        """Blocks."""
        try:
            asyncio.get_running_loop()
            on_loop = True
        except RuntimeError:
            on_loop = False
        seen.append((threading.current_thread() is threading.main_thread(), on_loop))
        time.sleep(0.05)
        return text

    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.005)
            ticks += 1

    task = asyncio.create_task(ticker())
    try:
        assert (await blocking.invoke("ok")).result == "ok"
    finally:
        task.cancel()
    assert seen == [(False, False)]
    assert ticks >= 3, "the event loop kept running while the sync tool blocked"


@pytest.mark.anyio
async def test_async_tool_timeout() -> None:
    @tool
    async def hang(text: str) -> str:
        """Never returns."""
        await asyncio.sleep(30)
        return text

    start = time.perf_counter()
    outcome = await hang.invoke("x", timeout_s=0.1)
    assert time.perf_counter() - start < 1.0
    assert outcome == ToolOutcome(error="hang timed out after 0.1 s")


@pytest.mark.anyio
async def test_sync_tool_timeout_does_not_block_the_run() -> None:
    @tool
    def slow(text: str) -> str:
        """Sleeps."""
        time.sleep(0.4)
        return text

    start = time.perf_counter()
    outcome = await slow.invoke("x", timeout_s=0.05)
    assert time.perf_counter() - start < 0.3
    assert outcome.error == "slow timed out after 0.05 s"


# ----------------------------------------------------------------------------- as_tools


def test_as_tools_accepts_functions_and_tools() -> None:
    def double(n: int) -> int:
        """Double it."""
        return 2 * n

    tools = as_tools([calculator, double, shout])
    assert [t.name for t in tools] == ["Calculator", "double", "shout"]
    assert all(isinstance(t, Tool) for t in tools)
    assert tools[1].description == "Double it."


def test_as_tools_rejects_duplicate_names() -> None:
    def shout(text: str) -> str:  # same name as the module-level tool
        return text

    with pytest.raises(ValueError, match=r"duplicate tool names: \['shout'\]"):
        as_tools([globals()["shout"], shout])
    with pytest.raises(ValueError, match="duplicate tool names"):
        as_tools([calculator, Tool.from_function(square.function, name="Calculator")])


# ----------------------------------------------------------------------------- calculator


def test_default_tools_is_the_calculator() -> None:
    assert [t.name for t in default_tools()] == ["Calculator"]
    assert calculator.parameters == {
        "type": "object",
        "properties": {"expression": {"type": "string"}},
        "required": ["expression"],
    }
    assert calculator.description


@pytest.mark.anyio
async def test_calculator_tool() -> None:
    assert await calculator.invoke("sqrt(71)") == ToolOutcome(result="8.42614977317636")
    assert await calculator.invoke('{"expression": "2 + 2"}') == ToolOutcome(result="4")
    bad = await calculator.invoke("__import__('os').system('true')")
    assert bad.result is None
    assert bad.error is not None and bad.error.startswith("CalculatorError: ")
