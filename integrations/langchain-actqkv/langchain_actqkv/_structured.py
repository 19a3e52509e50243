"""Schemas for ``with_structured_output`` and the parser of what the grammar let the model write."""

from __future__ import annotations

import json
from typing import Any, Optional

from langchain_core.exceptions import OutputParserException
from langchain_core.output_parsers import JsonOutputParser
from langchain_core.outputs import Generation
from langchain_core.utils.function_calling import convert_to_json_schema


def is_pydantic_class(schema: Any) -> bool:
    return isinstance(schema, type) and (hasattr(schema, "model_json_schema") or hasattr(schema, "__fields__")
                                         and hasattr(schema, "parse_obj"))


def schema_of(schema: Any) -> dict:
    """The full JSON schema to decode under: a pydantic class's own (constraints, ``$defs``), a JSON
    schema dict as given, an OpenAI tool/function dict's parameters, else LangChain's conversion
    (TypedDict, functions)."""
    if is_pydantic_class(schema):
        return schema.model_json_schema() if hasattr(schema, "model_json_schema") else schema.schema()
    if isinstance(schema, dict):
        if schema.get("type") == "function" and isinstance(schema.get("function"), dict):
            return schema["function"].get("parameters") or {"type": "object"}
        if "parameters" in schema and "name" in schema:
            return schema["parameters"]
        if any(k in schema for k in ("type", "properties", "anyOf", "oneOf", "allOf", "$ref", "enum", "const")):
            return schema
    return convert_to_json_schema(schema)


def response_format_schema(response_format: Any) -> dict:
    """The JSON schema of an OpenAI-style ``response_format`` (json_schema or json_object)."""
    if isinstance(response_format, dict):
        kind = response_format.get("type")
        if kind == "json_object":
            return {"type": "object"}
        if kind == "json_schema":
            spec = response_format.get("json_schema") or {}
            return spec.get("schema") or {"type": "object"}
    raise ValueError("response_format must be {'type': 'json_schema', 'json_schema': {'schema': {...}}} or "
                     f"{{'type': 'json_object'}}, got {response_format!r}")


def schema_instruction(schema: dict) -> str:
    """What the model is told about a structured answer (decoding enforces it either way)."""
    if schema == {"type": "object"}:
        return "Answer with a JSON object."
    return "Answer with a JSON object that matches this JSON schema: " + json.dumps(schema, ensure_ascii=False)


class StructuredOutputParser(JsonOutputParser):
    """Parses the grammar-constrained answer: strict JSON, into ``pydantic_object`` if given.

    An answer the grammar did not complete (cut by ``max_tokens``) is an ``OutputParserException``,
    never a half object. While streaming, partial objects are yielded as they grow.
    """

    pydantic_object: Optional[Any] = None

    def _validate(self, obj: Any) -> Any:
        cls = self.pydantic_object
        if cls is None:
            return obj
        return cls.model_validate(obj) if hasattr(cls, "model_validate") else cls.parse_obj(obj)

    def parse_result(self, result: list[Generation], *, partial: bool = False) -> Any:
        if partial:
            obj = super().parse_result(result, partial=True)
            if obj is None or self.pydantic_object is None:
                return obj
            try:
                return self._validate(obj)
            except Exception:  # an incomplete object does not validate yet
                return None
        gen = result[0]
        text = gen.text
        message = getattr(gen, "message", None)
        meta = getattr(message, "response_metadata", None) or {}
        if meta.get("structured_output_complete") is False:
            raise OutputParserException(
                f"the structured output was cut at max_tokens before it was complete ({meta.get('finish_reason')}); "
                "raise max_tokens", llm_output=text)
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as exc:
            raise OutputParserException(f"the answer is not JSON: {exc}", llm_output=text) from exc
        try:
            return self._validate(obj)
        except Exception as exc:
            raise OutputParserException(f"the answer does not fit the schema: {exc}", llm_output=text) from exc

    @property
    def _type(self) -> str:
        return "actqkv_structured_output"


__all__ = ["StructuredOutputParser", "is_pydantic_class", "schema_of", "schema_instruction", "response_format_schema"]
