"""Structured output as clients ask for it: OpenAI's response_format and vLLM's guided_* fields.

One request may carry one constraint, in any of these fields, on completions or chat:
- response_format {"type": "json_object"}: any JSON object; {"type": "json_schema", "json_schema":
  {"name": ..., "schema": {...}}}: a JSON value valid under the schema (no schema: any object);
  {"type": "text"}: free text;
- guided_json (a schema, as an object or as JSON text), guided_regex (a pattern the whole output matches),
  guided_choice (a list of strings: the output is one of them), guided_grammar (Lark or GBNF text).
Each becomes a `StructuredOutput`; a malformed field, or a constraint that does not compile
(llm/grammar.py, through llguidance), is a SamplingParamsError naming the field: a 400.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from graphrun.llm.grammar import check_structured_output
from graphrun.llm.sampling_params import SamplingParamsError
from graphrun.llm.structured_output import StructuredOutput

STRUCTURED_FIELDS = ("response_format", "guided_json", "guided_regex", "guided_choice", "guided_grammar")


def requested_constraint(fields: Mapping[str, Any]) -> tuple[str, StructuredOutput] | None:
    """(field, constraint) from a request's STRUCTURED_FIELDS values, None when it asks for free text."""
    found = [(name, _constraint(name, value)) for name, value in fields.items() if value is not None]
    asked = [(name, constraint) for name, constraint in found if constraint is not None]
    if len(asked) > 1:
        names = ", ".join(name for name, _ in asked)
        raise SamplingParamsError(
            f"give one structured output constraint, not several ({names})", asked[1][0]
        )
    return asked[0] if asked else None


def check_constraint(field: str, constraint: StructuredOutput) -> None:
    """Raise SamplingParamsError naming `field` unless the constraint compiles."""
    try:
        check_structured_output(constraint)
    except SamplingParamsError as exc:
        raise SamplingParamsError(f"{field}: {exc}", field) from exc


def _constraint(field: str, value: Any) -> StructuredOutput | None:
    if field == "response_format":
        return _response_format(value)
    if field == "guided_json":
        return StructuredOutput.json_schema(_schema(field, value))
    if field == "guided_choice":
        if not value:
            raise SamplingParamsError("guided_choice must list at least one string", field)
        return StructuredOutput.choice(value)
    if field == "guided_regex":
        return StructuredOutput.regex(value)
    return StructuredOutput.grammar(value)


def _response_format(value: dict[str, Any]) -> StructuredOutput | None:
    field = "response_format"
    kind = value.get("type")
    if kind == "text":
        return None
    if kind == "json_object":
        return StructuredOutput.json_object()
    if kind != "json_schema":
        raise SamplingParamsError(
            f"response_format type must be text, json_object or json_schema, got {kind!r}", field
        )
    spec = value.get("json_schema")
    if not isinstance(spec, dict):
        raise SamplingParamsError("response_format json_schema needs a json_schema object", field)
    schema = spec.get("schema")
    return (
        StructuredOutput.json_object()
        if schema is None
        else StructuredOutput.json_schema(_schema(field, schema))
    )


def _schema(field: str, value: Any) -> dict[str, Any]:
    """A JSON schema given as an object or as JSON text."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as exc:
            raise SamplingParamsError(f"{field} is not valid JSON: {exc}", field) from exc
    if not isinstance(value, dict):
        raise SamplingParamsError(f"{field} must be a JSON schema object, got {type(value).__name__}", field)
    return value
