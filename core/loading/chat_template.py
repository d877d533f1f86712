"""Rendering Hugging Face chat templates (Jinja2, sandboxed) as transformers does."""
from __future__ import annotations

import json
from datetime import datetime
from functools import lru_cache
from typing import Any

import jinja2
from jinja2.sandbox import ImmutableSandboxedEnvironment

from mistralrs.errors import ChatTemplateError


class _TemplateRaised(Exception):
    pass


def _raise_exception(message: str):
    raise _TemplateRaised(message)


def _tojson(value: Any, ensure_ascii: bool = False, indent: int | None = None,
            separators=None, sort_keys: bool = False) -> str:
    return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators,
                      sort_keys=sort_keys)


@lru_cache(maxsize=16)
def _compile(template: str) -> jinja2.Template:
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                        extensions=["jinja2.ext.loopcontrols"])
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    try:
        return env.from_string(template)
    except jinja2.TemplateSyntaxError as e:
        raise ChatTemplateError(f"the chat template does not compile: {e}") from None


def render_chat_template(template: str | None, messages: list[dict[str, Any]], *,
                         add_generation_prompt: bool = True, bos_token: str | None = "",
                         eos_token: str | None = "", **extra: Any) -> str:
    """Render `messages` ({"role", "content", ...}) with a chat template, passing the variables
    Hugging Face templates expect (`messages`, `add_generation_prompt`, `bos_token`,
    `eos_token`, `raise_exception`, `strftime_now`)."""
    if not template:
        raise ChatTemplateError(
            "this model has no chat template; send a completion request instead, or pass one "
            "(`chat_template` in tokenizer_config.json, chat_template.jinja, or the loader's "
            "`chat_template=` option)")
    try:
        return _compile(template).render(messages=messages,
                                         add_generation_prompt=add_generation_prompt,
                                         bos_token=bos_token or "", eos_token=eos_token or "",
                                         **extra)
    except _TemplateRaised as e:
        raise ChatTemplateError(f"the chat template rejected the messages: {e}") from None
    except jinja2.TemplateError as e:
        raise ChatTemplateError(f"the chat template failed to render: {e}") from None
