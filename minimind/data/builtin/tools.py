"""Synthetic tool-use conversations whose every number is computed, so each one is checkable.

Two tools are offered in every conversation's system turn (OpenAI-style function schemas in the
`tools` JSON string, as MiniMind's chat template renders them):

- `calculate_math(expression)`: integer arithmetic such as `(12 + 5) * 3` or `7452 / 81`
  (divisions are built from a product, so they come out whole);
- `convert_units(value, from_unit, to_unit)`: length, mass, time and volume conversions with
  exact decimal factors, results rounded to `DECIMALS` places.

A conversation is: system (prompt + tools) -> user question (English or Chinese) -> assistant
with empty content and a `tool_calls` JSON string `[{"name", "arguments"}]` -> `tool` turn with
the result as JSON -> assistant answer stating the result. The numbers are drawn from a seeded
rng and computed here in Python (never by a model), so a test can recompute every answer.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from dataclasses import dataclass
from decimal import ROUND_HALF_EVEN, Decimal
from typing import Literal

from minimind.data.builtin.common import message, take

Language = Literal["en", "zh"]

TOOL_CALL_RECORDS = 10_000  # how many conversations limit=None builds (the space is unbounded)
MATH_SHARE = 0.6
DECIMALS = 4

SYSTEM_PROMPTS = {
    "en": "You are a helpful assistant. Call a tool whenever a calculation or a unit "
          "conversion is needed, then answer with its result.",
    "zh": "你是一个乐于助人的助手。需要计算或单位换算时请调用工具，再根据工具结果回答。",
}


@dataclass(frozen=True)
class Unit:
    dimension: str
    factor: Decimal  # size in the dimension's base unit (metre, gram, second, litre)
    singular: str
    plural: str
    chinese: str


UNITS: dict[str, Unit] = {
    "meter": Unit("length", Decimal(1), "meter", "meters", "米"),
    "kilometer": Unit("length", Decimal(1000), "kilometer", "kilometers", "公里"),
    "centimeter": Unit("length", Decimal("0.01"), "centimeter", "centimeters", "厘米"),
    "millimeter": Unit("length", Decimal("0.001"), "millimeter", "millimeters", "毫米"),
    "inch": Unit("length", Decimal("0.0254"), "inch", "inches", "英寸"),
    "foot": Unit("length", Decimal("0.3048"), "foot", "feet", "英尺"),
    "mile": Unit("length", Decimal("1609.344"), "mile", "miles", "英里"),
    "gram": Unit("mass", Decimal(1), "gram", "grams", "克"),
    "kilogram": Unit("mass", Decimal(1000), "kilogram", "kilograms", "千克"),
    "milligram": Unit("mass", Decimal("0.001"), "milligram", "milligrams", "毫克"),
    "pound": Unit("mass", Decimal("453.59237"), "pound", "pounds", "磅"),
    "ounce": Unit("mass", Decimal("28.349523125"), "ounce", "ounces", "盎司"),
    "second": Unit("time", Decimal(1), "second", "seconds", "秒"),
    "minute": Unit("time", Decimal(60), "minute", "minutes", "分钟"),
    "hour": Unit("time", Decimal(3600), "hour", "hours", "小时"),
    "day": Unit("time", Decimal(86400), "day", "days", "天"),
    "liter": Unit("volume", Decimal(1), "liter", "liters", "升"),
    "milliliter": Unit("volume", Decimal("0.001"), "milliliter", "milliliters", "毫升"),
}

TOOLS = [
    {"type": "function", "function": {
        "name": "calculate_math",
        "description": "Evaluate an arithmetic expression with + - * / and parentheses.",
        "parameters": {"type": "object", "properties": {
            "expression": {"type": "string", "description": "e.g. '(12 + 5) * 3'"}},
            "required": ["expression"]}}},
    {"type": "function", "function": {
        "name": "convert_units",
        "description": "Convert a quantity between units of length, mass, time or volume.",
        "parameters": {"type": "object", "properties": {
            "value": {"type": "number", "description": "the quantity to convert"},
            "from_unit": {"type": "string", "enum": list(UNITS)},
            "to_unit": {"type": "string", "enum": list(UNITS)}},
            "required": ["value", "from_unit", "to_unit"]}}},
]

_OPERATOR_WORDS = {"+": ("plus", "加"), "-": ("minus", "减"), "*": ("times", "乘以"),
                   "/": ("divided by", "除以")}


@dataclass(frozen=True)
class Expression:
    text: str  # as passed to the tool: "(12 + 5) * 3"
    value: int
    spoken: dict[str, str]  # how a user says it, per language: "12 times 5" / "12 乘以 5"


@dataclass(frozen=True)
class ToolUse:
    """Everything one conversation needs: the question, the call, the result, the answer."""

    question: str
    name: str
    arguments: dict
    result: dict
    answer: str


def _binary(a: int, op: str, b: int, value: int) -> Expression:
    en, zh = _OPERATOR_WORDS[op]
    return Expression(f"{a} {op} {b}", value, {"en": f"{a} {en} {b}", "zh": f"{a} {zh} {b}"})


def _compound(text: str, value: int) -> Expression:
    return Expression(text, value, {"en": text, "zh": text})


def random_expression(rng: random.Random) -> Expression:
    """An integer arithmetic problem with its exact value, in one of seven shapes."""
    shape = rng.randrange(7)
    if shape == 0:
        a, b = rng.randint(10, 9999), rng.randint(10, 9999)
        return _binary(a, "+", b, a + b)
    if shape == 1:
        a, b = sorted((rng.randint(10, 9999), rng.randint(10, 9999)), reverse=True)
        return _binary(a, "-", b, a - b)
    if shape == 2:
        a, b = rng.randint(2, 999), rng.randint(2, 99)
        return _binary(a, "*", b, a * b)
    if shape == 3:
        divisor, quotient = rng.randint(2, 99), rng.randint(2, 999)
        return _binary(divisor * quotient, "/", divisor, quotient)
    a, b, c = rng.randint(2, 99), rng.randint(2, 99), rng.randint(2, 99)
    if shape == 4:
        return _compound(f"({a} + {b}) * {c}", (a + b) * c)
    if shape == 5:
        return _compound(f"{a} * {b} + {c}", a * b + c)
    return _compound(f"{a} * {b} - {c}", a * b - c)


def math_question(expression: Expression, language: Language, rng: random.Random) -> str:
    """A user's request to compute the expression, phrased from a few templates."""
    spoken = expression.spoken[language]
    if language == "zh":
        return rng.choice((f"帮我算一下 {spoken}", f"{spoken} 等于多少？",
                           f"请计算 {expression.text}。", f"{expression.text} 的结果是多少？"))
    return rng.choice((f"What is {spoken}?", f"Calculate {expression.text}.",
                       f"Can you work out {spoken} for me?", f"Please compute {expression.text}."))


def math_answer(expression: Expression, value: int, language: Language) -> str:
    """The assistant's final sentence stating `value` as the result of the expression."""
    if language == "zh":
        return f"{expression.spoken['zh']} 等于 {value}。"
    return f"{expression.spoken['en']} is {value}."


def format_decimal(number: Decimal) -> str:
    """Plain decimal notation without trailing zeros: 2000, 1.5, 0.0254."""
    text = format(number, "f")
    return text.rstrip("0").rstrip(".") if "." in text else text


def convert(value: Decimal, from_unit: str, to_unit: str) -> Decimal:
    """`value` in `from_unit` expressed in `to_unit`, rounded half-even to DECIMALS places."""
    exact = value * UNITS[from_unit].factor / UNITS[to_unit].factor
    return exact.quantize(Decimal(1).scaleb(-DECIMALS), rounding=ROUND_HALF_EVEN)


def _unit_name(unit: Unit, amount: str, language: Language) -> str:
    if language == "zh":
        return unit.chinese
    return unit.singular if amount == "1" else unit.plural


def math_use(rng: random.Random, language: Language) -> ToolUse:
    expression = random_expression(rng)
    return ToolUse(question=math_question(expression, language, rng), name="calculate_math",
                   arguments={"expression": expression.text},
                   result={"result": str(expression.value)},
                   answer=math_answer(expression, expression.value, language))


def _conversion_problem(rng: random.Random) -> tuple[Decimal, str, str, Decimal]:
    """A value and a pair of units of one dimension whose converted value does not round to 0."""
    while True:
        from_unit = rng.choice(list(UNITS))
        to_unit = rng.choice([u for u, spec in UNITS.items()
                              if spec.dimension == UNITS[from_unit].dimension and u != from_unit])
        value = Decimal(rng.randint(1, 500)) / rng.choice((1, 1, 2, 10))
        converted = convert(value, from_unit, to_unit)
        if converted:
            return value, from_unit, to_unit, converted


def conversion_use(rng: random.Random, language: Language) -> ToolUse:
    value, from_unit, to_unit, converted = _conversion_problem(rng)
    amount, result = format_decimal(value), format_decimal(converted)
    source = _unit_name(UNITS[from_unit], amount, language)
    target = _unit_name(UNITS[to_unit], result, language)
    if language == "zh":
        question = rng.choice((f"{amount} {source}等于多少{target}？",
                               f"把 {amount} {source}换算成{target}。"))
        answer = f"{amount} {source}等于 {result} {target}。"
    else:
        question = rng.choice((f"How many {UNITS[to_unit].plural} are in {amount} {source}?",
                               f"Convert {amount} {source} to {UNITS[to_unit].plural}."))
        answer = f"{amount} {source} is {result} {target}."
    number = int(value) if value == value.to_integral_value() else float(value)
    return ToolUse(question=question, name="convert_units",
                   arguments={"value": number, "from_unit": from_unit, "to_unit": to_unit},
                   result={"result": result, "unit": to_unit}, answer=answer)


def tool_conversation(use: ToolUse, language: Language) -> list[dict]:
    """The five turns of one tool use in MiniMind's SFT schema."""
    call = [{"name": use.name, "arguments": use.arguments}]
    return [
        message("system", SYSTEM_PROMPTS[language], tools=json.dumps(TOOLS, ensure_ascii=False)),
        message("user", use.question),
        message("assistant", "", tool_calls=json.dumps(call, ensure_ascii=False)),
        message("tool", json.dumps(use.result, ensure_ascii=False)),
        message("assistant", use.answer),
    ]


def build_tool_calls(limit: int | None, seed: int) -> Iterator[dict]:
    """Calculator and unit-conversion conversations (60/40), half English and half Chinese."""
    rng = random.Random(seed)

    def conversations() -> Iterator[dict]:
        for _ in range(TOOL_CALL_RECORDS):
            language: Language = rng.choice(("en", "zh"))
            make = math_use if rng.random() < MATH_SHARE else conversion_use
            yield {"conversations": tool_conversation(make(rng, language), language)}

    yield from take(conversations(), limit)
