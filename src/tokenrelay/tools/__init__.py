"""Tools: the safe calculator (the tutorial's `llm-math`) and user functions via `@tool`."""

from __future__ import annotations

from tokenrelay.tools.registry import Tool, ToolOutcome, as_tools, tool

__all__ = ["Tool", "ToolOutcome", "as_tools", "calculator", "default_tools", "tool"]


def _calculator(expression: str) -> str:
    from tokenrelay.tools.calculator import calculate

    return calculate(expression)


def _make_calculator() -> Tool:
    from tokenrelay.tools.calculator import CALCULATOR_DESCRIPTION

    return Tool.from_function(_calculator, name="Calculator", description=CALCULATOR_DESCRIPTION)


calculator = _make_calculator()


def default_tools() -> list[Tool]:
    return [calculator]
