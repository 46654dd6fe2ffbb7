"""Conversations (chat records) to tokens, the same way on every backend.

A chat example (``Example.messages``) is laid out as text *segments*, each marked trained or not,
and each backend encodes the segments with its own tokenizer. The loss falls on every assistant
turn, never on system or user turns.

Two layouts:

* **The tokenizer's chat template**, where it has one (Hugging Face ``apply_chat_template``):
  assistant turn i is the text that rendering ``messages[:i + 1]`` adds to rendering
  ``messages[:i]`` with the generation prompt, i.e. the turn's content and its end-of-turn
  marker (``<|eot_id|>`` for Llama 3). A template that does not render a conversation as a
  prefix of its continuation cannot be split this way and is refused.
* **The plain template** otherwise (the built-in character models have no template)::

      System: You answer in one word.
      User: reverse: stone
      Assistant: enots

  Each message is ``"<Role>:"`` and then ``" <content>\\n"``, two segments encoded apart; the
  loss falls on ``" <content>\\n"`` of every assistant message (the newline ends the turn, so the
  model learns where an answer stops). No EOS is added; sampling stops at the newline. The first
  segment is encoded with the tokenizer's special tokens (a BOS where it adds one), as a plain
  prompt is.

Sampling renders the turns before the last assistant turn plus its header (the generation
prompt); the generated text ends at the turn's end marker (``stop_text``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from ulora_remote.backend import ROLES, Datum, Example, Message
from ulora_remote.errors import InputError

__all__ = [
    "PLAIN_TURN_END",
    "ChatLayout",
    "ChatTokens",
    "Encode",
    "Segment",
    "chat_example",
    "chat_layout",
    "check_messages",
    "encode_layout",
    "has_chat_template",
    "plain_layout",
    "plain_prompt",
]

#: What ends a turn in the plain template.
PLAIN_TURN_END = "\n"



@dataclass(frozen=True)
class Segment:
    """A piece of a rendered conversation: its text, whether the loss falls on it, the index of
    the message it belongs to (-1 for template text between messages), and where that message's
    content starts in ``text`` (-1 when the segment does not hold it), for messages about a
    character."""

    text: str
    trained: bool
    message: int
    offset: int = -1


#: ``(segment, add_special_tokens) -> token ids``: a backend's encoder of one segment.
Encode = Callable[[Segment, bool], list[int]]


@dataclass(frozen=True)
class ChatLayout:
    """A conversation as segments. ``special_first``: encode the first segment with the
    tokenizer's special tokens; ``stop_text``: the text that ends an assistant turn (None:
    the tokenizer's EOS alone)."""

    segments: tuple[Segment, ...]
    special_first: bool
    stop_text: str | None


@dataclass(frozen=True)
class ChatTokens:
    """An encoded conversation: ``tokens``, whether each is trained, and ``prompt_len``, the
    tokens before the last assistant turn (what sampling conditions on)."""

    tokens: tuple[int, ...]
    trained: tuple[bool, ...]
    prompt_len: int

    def datum(self) -> Datum:
        """The training datum: token j predicts token j + 1, weighted 1.0 where that is trained.

        Raises:
            InputError: no assistant token (every assistant turn rendered to nothing).
        """
        weights = tuple(1.0 if t else 0.0 for t in self.trained[1:])
        if not any(weights):
            raise InputError("the assistant turns render to no tokens; give every assistant "
                             "message a non-empty content")
        return Datum(self.tokens[:-1], self.tokens[1:], weights)


def check_messages(messages: Sequence[Message]) -> None:
    """Refuse a conversation that cannot be trained or evaluated.

    Raises:
        InputError: no messages, an unknown role, content that is not text, no assistant turn,
            or a last message that is not the assistant's (the reference of an evaluation).
    """
    if not messages:
        raise InputError("the conversation has no messages; give at least a user and an "
                         "assistant message")
    for i, m in enumerate(messages):
        if m.role not in ROLES:
            raise InputError(f"message {i} has the role {m.role!r}; use one of "
                             f"{', '.join(ROLES)}")
        if not isinstance(m.content, str):
            raise InputError(f"message {i} ({m.role}) has content of type "
                             f"{type(m.content).__name__}; content must be a string")
    if messages[-1].role != "assistant":
        raise InputError(f"the last message is the {messages[-1].role}'s; a conversation must "
                         "end with an assistant message (its reference answer)")
    if not messages[-1].content.strip():
        raise InputError("the last assistant message is empty; give it the reference answer")


def chat_example(messages: Sequence[Message], task: str = "") -> Example:
    """An ``Example`` carrying ``messages``: ``prompt`` is the plain rendering up to the last
    assistant turn's header, ``completion`` that turn's content.

    Raises:
        InputError: see ``check_messages``.
    """
    check_messages(messages)
    return Example(prompt=plain_prompt(messages), completion=messages[-1].content, task=task,
                   messages=tuple(messages))


def plain_prompt(messages: Sequence[Message]) -> str:
    """The plain template up to and including the last assistant turn's ``"Assistant:"``."""
    *history, last = plain_layout(messages).segments
    return "".join(s.text for s in history)


def has_chat_template(tokenizer: Any) -> bool:
    """Whether ``tokenizer`` (a Hugging Face tokenizer) carries a chat template."""
    template = getattr(tokenizer, "chat_template", None)
    return isinstance(template, str) and bool(template.strip())


def chat_layout(messages: Sequence[Message], tokenizer: Any) -> ChatLayout:
    """The layout of ``messages`` for ``tokenizer``: its chat template, else the plain one.

    Raises:
        InputError: see ``check_messages``; or the chat template fails on the conversation or
            does not render it as a prefix of its continuation.
    """
    check_messages(messages)
    if has_chat_template(tokenizer):
        return template_layout(messages, tokenizer)
    return plain_layout(messages)


def plain_layout(messages: Sequence[Message]) -> ChatLayout:
    """The plain template (see the module docstring)."""
    segments: list[Segment] = []
    for i, m in enumerate(messages):
        segments.append(Segment(f"{m.role.capitalize()}:", False, i))
        segments.append(Segment(f" {m.content}{PLAIN_TURN_END}", m.role == "assistant", i, 1))
    return ChatLayout(tuple(segments), special_first=True, stop_text=PLAIN_TURN_END)


def template_layout(messages: Sequence[Message], tokenizer: Any) -> ChatLayout:
    """Split the chat template's rendering into untrained text and assistant turns."""
    full = _apply(tokenizer, messages, generation_prompt=False)
    segments: list[Segment] = []
    done = 0
    stop_text = None
    for i, m in enumerate(messages):
        if m.role != "assistant":
            continue
        before = _apply(tokenizer, messages[:i], generation_prompt=True)
        upto = _apply(tokenizer, messages[: i + 1], generation_prompt=False)
        if not (upto.startswith(before) and full.startswith(upto) and len(before) >= done):
            raise InputError(
                f"the tokenizer's chat template does not render message {i} (assistant) as a "
                "continuation of the messages before it, so its loss cannot be placed; use a "
                "tokenizer whose template renders each turn after the previous ones"
            )
        if len(before) > done:
            segments.append(Segment(full[done:len(before)], False, -1))
        turn = full[len(before):len(upto)]
        at = turn.rfind(m.content) if m.content else -1
        segments.append(Segment(turn, True, i, at))
        done = len(upto)
        if at >= 0:  # what follows the content ends a turn: "<|eot_id|>", "<|im_end|>\n"...
            suffix = turn[at + len(m.content):]
            stop_text = suffix.strip() or suffix or None
    if done < len(full):
        segments.append(Segment(full[done:], False, -1))
    return ChatLayout(tuple(segments), special_first=False, stop_text=stop_text)


def _apply(tokenizer: Any, messages: Sequence[Message], *, generation_prompt: bool) -> str:
    conversation = [{"role": m.role, "content": m.content} for m in messages]
    try:
        text = tokenizer.apply_chat_template(conversation, tokenize=False,
                                             add_generation_prompt=generation_prompt)
    except Exception as exc:  # noqa: BLE001 - Jinja templates raise what they like
        raise InputError(f"the tokenizer's chat template cannot render this conversation "
                         f"({type(exc).__name__}: {exc}); change the messages") from None
    return str(text)


def encode_layout(layout: ChatLayout, encode: Encode) -> ChatTokens:
    """Encode each segment with ``encode`` and join them.

    Raises:
        InputError: whatever ``encode`` raises (e.g. a character the tokenizer cannot encode).
    """
    tokens: list[int] = []
    trained: list[bool] = []
    prompt_len = 0
    for k, segment in enumerate(layout.segments):
        ids = encode(segment, layout.special_first and k == 0)
        if segment.trained:
            prompt_len = len(tokens)
        tokens.extend(ids)
        trained.extend([segment.trained] * len(ids))
    return ChatTokens(tuple(tokens), tuple(trained), prompt_len)
