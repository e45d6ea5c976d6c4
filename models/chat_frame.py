"""Cut a model's chat template into the fixed pieces of a `ChatFrame`, backend-neutral.

Why sentinels: the daemon lays a prompt out as segments (head, system text, user parts, ...) and keys the prompt
cache on them. Rendering the template once with unique sentinel strings in place of the contents and cutting at
the sentinels yields pieces that never depend on the contents, so a cached prefix stays valid whatever follows.

`frame_from_renderer` takes any `render(messages, add_generation_prompt) -> str`: the llama.cpp backend passes
`jinja_renderer(...)` built from the GGUF's `tokenizer.chat_template`; the mlx backend can pass a lambda around
`tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=...)`.

System text: when the template has a real system slot (ChatML, Llama 3, Nemotron...), system_open/system_close
wrap it. When the template rejects a system role, or folds it into the first user turn (Gemma), there is no fixed
slot: system_open and system_close are both "" and the caller must put the system text at the start of the
user turn instead (as the first user part, followed by a blank line), which is what such templates do themselves.
Templates that inject a DEFAULT system prompt when none is given: `head` is taken from the render WITH a system
message, so a prompt without system text gets no default system block (deterministic, and cache friendly).
"""
from __future__ import annotations

import hashlib
from datetime import datetime
from typing import Any, Callable

import jinja2
import jinja2.ext
from jinja2.sandbox import ImmutableSandboxedEnvironment

from .base import ChatFrame

Renderer = Callable[[list[dict], bool], str]

# Plain ASCII words: survive templates that strip, trim or escape content, and never occur in real templates.
_S, _U, _A, _U2 = "OMNIDSYSq7x", "OMNIDUSERk3z", "OMNIDASSTm5w", "OMNIDUSERTWOp9v"

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

# Gemma's turn format. No system role: the frame folds system text into the user turn (see module docstring).
GEMMA_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}{{ raise_exception('Gemma has no system role') }}{% endif %}"
    "{% set role = 'model' if message['role'] == 'assistant' else message['role'] %}"
    "{{ '<start_of_turn>' + role + '\n' + message['content'] + '<end_of_turn>\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<start_of_turn>model\n' }}{% endif %}"
)


class _IgnoreGenerationTags(jinja2.ext.Extension):
    """HuggingFace templates may wrap assistant text in {% generation %}...{% endgeneration %}: pass it through."""

    tags = {"generation"}

    def parse(self, parser: Any) -> Any:
        parser.stream.skip(1)
        return parser.parse_statements(("name:endgeneration",), drop_needle=True)


def _raise_exception(message: str) -> None:
    raise jinja2.exceptions.TemplateError(message)


def _strftime_now(fmt: str) -> str:
    return datetime.now().strftime(fmt)


def jinja_renderer(template: str, bos: str, eos: str) -> Callable[..., str]:
    """A renderer for a HuggingFace-style chat template, set up like llama-cpp-python's Jinja2ChatFormatter.

    `extra` are more template variables (tools, enable_thinking...): a ChatRenderer as well as a Renderer.

    Sandboxed because the template comes from a model file, i.e. from the internet.
    """
    env = ImmutableSandboxedEnvironment(
        loader=jinja2.BaseLoader(),
        trim_blocks=True,
        lstrip_blocks=True,
        extensions=[_IgnoreGenerationTags, jinja2.ext.loopcontrols],
    )
    compiled = env.from_string(template)

    def render(messages: list[dict], add_generation_prompt: bool, extra: dict | None = None) -> str:
        return compiled.render(
            **(extra or {}),
            messages=messages,
            bos_token=bos,
            eos_token=eos,
            add_generation_prompt=add_generation_prompt,
            raise_exception=_raise_exception,
            strftime_now=_strftime_now,
        )

    return render


def fallback_template(architecture: str) -> str:
    """For a chat template too dynamic to cut into fixed pieces: its family's plain turn format (Gemma's for
    gemma archs, ChatML otherwise)."""
    return GEMMA_TEMPLATE if architecture.lower().startswith("gemma") else CHATML_TEMPLATE


def completion_frame(bos: str) -> ChatFrame:
    """The frame of a model that carries no chat template: a base model, which continues text.

    No turn markers at all: the system text, then the parts, and the model continues from the last part. An
    invented chat format would make a base model answer worse (measured on gemma-3-270m: "The three primary
    colors are" continues as " red, blue, and yellow." in plain text, and degenerates inside Gemma's turns).
    """
    digest = hashlib.blake2b(b"completion:" + bos.encode(), digest_size=16, person=b"omnid-template").hexdigest()
    return ChatFrame(head=bos, system_open="", system_close="\n\n", user_open="", user_close="",
                     assistant_close="\n\n", template_digest=digest)


def _msg(role: str, content: str) -> dict:
    return {"role": role, "content": content}


def _split(text: str, *sentinels: str) -> list[str]:
    """Cut `text` at each sentinel, in order; each must occur exactly once."""
    pieces = []
    for sentinel in sentinels:
        if text.count(sentinel) != 1:
            raise ValueError(f"the chat template does not render the message content {sentinel!r} exactly once")
        before, text = text.split(sentinel)
        pieces.append(before)
    pieces.append(text)
    return pieces


def _common_suffix(*texts: str) -> str:
    n = 0
    shortest = min(len(t) for t in texts)
    while n < shortest and len({t[len(t) - n - 1] for t in texts}) == 1:
        n += 1
    return texts[0][len(texts[0]) - n:]


def _system_pieces(render: Renderer, head: str, user_open: str, user_close: str) -> tuple[str, str]:
    """(system_open, system_close), or ("", "") when the template has no fixed system slot."""
    try:
        before_s, between, after_u = _split(render([_msg("system", _S), _msg("user", _U)], True), _S, _U)
    except (jinja2.exceptions.TemplateError, ValueError):
        return "", ""
    if not (before_s.startswith(head) and between.endswith(user_open) and after_u == user_close):
        return "", ""  # e.g. Gemma folds the system text into the first user turn
    return before_s[len(head):], between[: len(between) - len(user_open)]


def frame_from_renderer(render: Renderer, digest_source: str) -> ChatFrame:
    """Render the template with sentinels and cut it into a ChatFrame (raises ValueError if it cannot be cut).

    `digest_source` is what identifies the template (its text); it becomes ChatFrame.template_digest.
    """
    prefix_u, user_close = _split(render([_msg("user", _U)], True), _U)
    first, u_to_a, a_to_u2, tail = _split(
        render([_msg("user", _U), _msg("assistant", _A), _msg("user", _U2)], True), _U, _A, _U2
    )
    if first != prefix_u or u_to_a != user_close or tail != user_close:
        raise ValueError("the chat template renders turns inconsistently; it cannot be cut into fixed pieces")
    user_open = _common_suffix(prefix_u, a_to_u2)
    if not user_open:
        raise ValueError("the chat template has no recognisable user-turn opening")
    head = prefix_u[: len(prefix_u) - len(user_open)]
    assistant_close = a_to_u2[: len(a_to_u2) - len(user_open)]
    system_open, system_close = _system_pieces(render, head, user_open, user_close)
    digest = hashlib.blake2b(digest_source.encode("utf-8"), digest_size=16, person=b"omnid-template").hexdigest()
    return ChatFrame(
        head=head,
        system_open=system_open,
        system_close=system_close,
        user_open=user_open,
        user_close=user_close,
        assistant_close=assistant_close,
        template_digest=digest,
    )
