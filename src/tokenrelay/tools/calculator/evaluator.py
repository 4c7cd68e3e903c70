"""Step 3: evaluate the checked tree within the resource bounds, and format the result."""

from __future__ import annotations

import ast
import math
from collections.abc import Iterator
from contextlib import contextmanager

from tokenrelay.tools.calculator.functions import _CONSTANTS, _FUNCTIONS
from tokenrelay.tools.calculator.limits import (
    _LIMB_BITS,
    _MAX_RESULT_BITS,
    _ZERO_TO_NEGATIVE,
    MAX_INT_BITS,
    MAX_RESULT_DIGITS,
    WORK_BUDGET,
    CalculatorError,
    Number,
    _about_digits,
    _limbs,
    _require_int_bits,
)
from tokenrelay.tools.calculator.syntax import _BINOP_SYMBOLS

# --------------------------------------------------------------------------
# Step 3: evaluate the checked tree within the resource bounds
# --------------------------------------------------------------------------


@contextmanager
def _arithmetic_errors(where: str) -> Iterator[None]:
    """Turn arithmetic exceptions raised inside the block into CalculatorError."""
    try:
        yield
    except CalculatorError:
        raise
    except ZeroDivisionError:
        raise CalculatorError(f"division by zero in {where}") from None
    except OverflowError as exc:
        if "convert" in str(exc) or "for a float" in str(exc):
            detail = "number too large to convert to floating point (the limit is about 1.8e308)"
        else:
            detail = "result too large (floating-point overflow; the limit is about 1.8e308)"
        raise CalculatorError(f"{detail} in {where}") from None
    except ValueError:
        raise CalculatorError(f"math domain error in {where}") from None


def _checked(value: object) -> Number:
    """Accept only finite floats and ints within MAX_INT_BITS."""
    if isinstance(value, int) and not isinstance(value, bool):
        _require_int_bits(value.bit_length(), "the result")
        return value
    if isinstance(value, float):
        if math.isnan(value):
            raise CalculatorError("math domain error: the result is undefined (NaN)")
        if math.isinf(value):
            raise CalculatorError("result too large (floating-point overflow; the limit is about 1.8e308)")
        return value
    raise CalculatorError("math domain error: the result is not a real number")


class _Evaluator:
    """Evaluates one validated tree; tracks the work budget of a single call."""

    __slots__ = ("_budget",)

    def __init__(self) -> None:
        self._budget = WORK_BUDGET

    def charge(self, units: int) -> None:
        self._budget -= units
        if self._budget < 0:
            raise CalculatorError(
                "expression needs too much computation (very large integers); "
                "use smaller numbers or split it into steps"
            )

    def evaluate(self, node: ast.expr) -> Number:
        self.charge(1)
        if isinstance(node, ast.Constant):
            value = node.value
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                return value
        elif isinstance(node, ast.Name):
            constant = _CONSTANTS.get(node.id)
            if constant is not None:
                return constant
        elif isinstance(node, ast.UnaryOp):
            operand = self.evaluate(node.operand)
            if isinstance(node.op, ast.USub):
                return -operand
            if isinstance(node.op, ast.UAdd):
                return operand
        elif isinstance(node, ast.BinOp):
            left = self.evaluate(node.left)
            right = self.evaluate(node.right)
            return self._binary(node.op, left, right)
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
            spec = _FUNCTIONS.get(node.func.id)
            if spec is not None:
                args = [self.evaluate(arg) for arg in node.args]
                with _arithmetic_errors(f"{node.func.id}()"):
                    return _checked(spec.impl(self, args))
        # Unreachable for validated trees; kept so a validator bug fails closed.
        raise CalculatorError(f"'{type(node).__name__}' expressions are not allowed")

    def _binary(self, op: ast.operator, a: Number, b: Number) -> Number:
        symbol = _BINOP_SYMBOLS.get(type(op))
        if symbol is None:  # unreachable for validated trees
            raise CalculatorError("operator is not allowed")
        with _arithmetic_errors(f"'{symbol}'"):
            if isinstance(op, ast.Pow):
                return _checked(self._power(a, b))
            if isinstance(op, (ast.Add, ast.Sub)):
                if isinstance(a, int) and isinstance(b, int):
                    self.charge(max(_limbs(a), _limbs(b)))
                return _checked(a + b if isinstance(op, ast.Add) else a - b)
            if isinstance(op, ast.Mult):
                if isinstance(a, int) and isinstance(b, int):
                    if a and b:
                        _require_int_bits(a.bit_length() + b.bit_length() - 1, "the product")
                    self.charge(_limbs(a) * _limbs(b))
                return _checked(a * b)
            if b == 0:
                raise CalculatorError(f"division by zero in '{symbol}'")
            if isinstance(a, int) and isinstance(b, int):
                # int / int is linear time; // and % are quadratic long division.
                linear = isinstance(op, ast.Div)
                self.charge(_limbs(a) + _limbs(b) if linear else _limbs(a) * _limbs(b))
            if isinstance(op, ast.Div):
                return _checked(a / b)
            if isinstance(op, ast.FloorDiv):
                return _checked(a // b)
            return _checked(a % b)

    def _power(self, base: Number, exponent: Number) -> object:
        if isinstance(base, int) and isinstance(exponent, int):
            if exponent < 0:
                if base == 0:
                    raise CalculatorError(_ZERO_TO_NEGATIVE)
                return base**exponent  # a float; Python converts both operands first
            if base in (0, 1):
                return base if exponent else 1
            if base == -1:
                return 1 if exponent % 2 == 0 else -1
            if exponent > MAX_INT_BITS:  # |base| >= 2, so the result has > exponent bits
                _require_int_bits(math.inf, "the power")
            bits = exponent * math.log2(abs(base))
            _require_int_bits(bits, "the power")
            self.charge((int(bits) // _LIMB_BITS + 1) ** 2 // 4)
            return base**exponent
        x, y = float(base), float(exponent)
        if x == 0 and y < 0:
            raise CalculatorError(_ZERO_TO_NEGATIVE)
        if x < 0 and not y.is_integer():
            raise CalculatorError(
                "math domain error: negative number raised to a fractional power "
                "(complex results are not supported)"
            )
        return x**y


def _format(value: Number) -> str:
    if isinstance(value, int):
        if value.bit_length() > _MAX_RESULT_BITS:
            raise CalculatorError(
                f"result has {_about_digits(value.bit_length())} digits; results are "
                f"limited to {MAX_RESULT_DIGITS:,} digits"
            )
        try:
            return str(value)
        except ValueError:  # sys.set_int_max_str_digits() set below our limit
            raise CalculatorError("result has too many digits to display") from None
    if value == 0:
        return "0"  # also turns -0.0 into "0"
    text = format(value, ".15g")
    if math.isinf(float(text)):  # 15 digits can round past the largest float
        text = repr(value)
    return text
