"""Where the document and the question go in the model's chat template.

The document is prefilled inside the first user message: everything of the rendered template up
to and including the document is the document's prefix (prefilled once, cached); the question,
later turns and the template's tail (up to the assistant's turn) are appended per question.
"""

from __future__ import annotations

from .errors import InputError

_MARK = "\u2063ACTQKV_DOCUMENT\u2063"
SEPARATOR = "\n\n"


def _render(tokenizer, messages: list[dict], add_generation_prompt: bool = True,
            tools: list[dict] | None = None) -> str:
    if not getattr(tokenizer, "chat_template", None):
        raise InputError("this model's tokenizer has no chat template: use generate()/complete() instead of ask()")
    if tools and not supports_tools(tokenizer):
        raise InputError("this model's chat template does not render tool definitions (no 'tools' in it)")
    extra = {"tools": tools} if tools else {}
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt,
                                         **extra)


def supports_tools(tokenizer) -> bool:
    """Whether the tokenizer's chat template renders tool definitions (it reads a ``tools`` variable)."""
    template = getattr(tokenizer, "chat_template", None)
    if isinstance(template, dict):
        template = template.get("tool_use") or template.get("default")
    return isinstance(template, str) and "tools" in template


def document_prefix(tokenizer, document: str, tools: list[dict] | None = None) -> str:
    """The template's head plus the document: what gets prefilled. With ``tools`` (JSON schemas
    of functions), the head is rendered with them (templates put them before the first user turn)."""
    rendered = _render(tokenizer, [{"role": "user", "content": _MARK}], tools=tools)
    head = rendered.split(_MARK)[0]
    return head + document


def question_suffix(tokenizer, messages: list[dict], with_document: bool = True,
                    tools: list[dict] | None = None) -> str:
    """Everything after the document for a conversation (the first user turn follows the document).

    System messages are folded into the first user turn (the template head before the document
    is fixed when the document is prefilled). With ``tools`` (which the document must have been
    prefilled with), ``tool`` messages and assistant ``tool_calls`` are passed to the template.
    """
    if not messages:
        raise InputError("no messages: give at least one user message")
    roles = ("system", "user", "assistant", "tool") if tools else ("system", "user", "assistant")
    for m in messages:
        if not isinstance(m, dict) or m.get("role") not in roles or not isinstance(m.get("content"), str):
            raise InputError(f"each message must be {{'role': {'|'.join(roles)}, 'content': str}}, got {m!r}")
    system = "\n".join(m["content"] for m in messages if m["role"] == "system")
    turns = [dict(m) for m in messages if m["role"] != "system"]
    if not turns or turns[0]["role"] != "user":
        raise InputError("the conversation must start with a user message")
    first = turns[0]["content"]
    if system:
        first = system + SEPARATOR + first
    if with_document:
        turns[0]["content"] = _MARK + SEPARATOR + first
        return _render(tokenizer, turns, tools=tools).split(_MARK, 1)[1]
    turns[0]["content"] = first
    return _render(tokenizer, turns, tools=tools)
