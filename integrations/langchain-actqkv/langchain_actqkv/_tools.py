"""Tool calling through the model's own chat template: tool definitions in, ``<tool_call>`` blocks out.

The template renders the tools (``apply_chat_template(..., tools=...)``) and the model answers with
Qwen2.5 / Hermes style blocks::

    <tool_call>
    {"name": "get_weather", "arguments": {"city": "Paris"}}
    </tool_call>
"""

from __future__ import annotations

import json
import re
import uuid
from typing import Any, Optional, Sequence

from langchain_core.messages import InvalidToolCall, ToolCall
from langchain_core.utils.function_calling import convert_to_openai_tool

_CALL = re.compile(r"<tool_call>\s*(.*?)\s*(?:</tool_call>|$)", re.DOTALL)


def format_tools(tools: Sequence[Any]) -> list[dict]:
    """LangChain tools, functions, pydantic models or dicts -> OpenAI-style function definitions."""
    return [convert_to_openai_tool(t) for t in tools]


def normalise_tool_choice(tool_choice: Any, tools: list[dict]) -> Optional[str]:
    """``None``/"auto" -> "auto" (the model decides); "none"; "any"/"required"/True -> "any" (must call
    one); a tool name or ``{"type": "function", "function": {"name": ...}}`` -> that name."""
    names = [t["function"]["name"] for t in tools]
    if tool_choice is None or tool_choice == "auto":
        return "auto"
    if tool_choice is True or tool_choice in ("any", "required"):
        return "any"
    if tool_choice == "none" or tool_choice is False:
        return "none"
    if isinstance(tool_choice, dict):
        tool_choice = (tool_choice.get("function") or {}).get("name") or tool_choice.get("name")
    if isinstance(tool_choice, str) and tool_choice in names:
        return tool_choice
    raise ValueError(f"tool_choice {tool_choice!r} is not 'auto', 'none', 'any', 'required' or one of the "
                     f"bound tools {names}")


def parse_tool_calls(text: str) -> tuple[str, list[ToolCall], list[InvalidToolCall]]:
    """Split generated text into its plain content and the tool calls of its ``<tool_call>`` blocks."""
    calls: list[ToolCall] = []
    invalid: list[InvalidToolCall] = []
    for raw in _CALL.findall(text):
        call_id = f"call_{uuid.uuid4().hex[:24]}"
        try:
            data = json.loads(raw)
            name, args = data["name"], data.get("arguments", data.get("parameters", {}))
            if isinstance(args, str):
                args = json.loads(args)
            if not isinstance(name, str) or not isinstance(args, dict):
                raise TypeError("name must be a string and arguments an object")
            calls.append(ToolCall(name=name, args=args, id=call_id, type="tool_call"))
        except (ValueError, KeyError, TypeError) as exc:
            invalid.append(InvalidToolCall(name=None, args=raw, id=call_id, error=f"not a valid tool call: {exc}",
                                           type="invalid_tool_call"))
    content = _CALL.sub("", text).strip() if (calls or invalid) else text
    return content, calls, invalid


def template_tool_calls(tool_calls: Sequence[dict]) -> list[dict]:
    """An AIMessage's tool calls as chat templates expect them on an assistant message."""
    return [{"type": "function", "id": c.get("id"), "function": {"name": c["name"], "arguments": c["args"]}}
            for c in tool_calls]


__all__ = ["format_tools", "normalise_tool_choice", "parse_tool_calls", "template_tool_calls"]
