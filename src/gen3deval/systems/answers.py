"""What the program-writing model systems (``vlm``, ``hf``) share about a model's answer: the messages of an
attempt and the classification of the answer text.

- :func:`attempt_messages`: attempt 1's messages (the reference image), or attempt i+1's (the image, attempt
  i's program verbatim and feedback) from what the engine passes as ``previous`` (see
  ``gen3deval.engine.stage_inputs``: ``program``/``answer`` files, ``executable``, ``error_class``, ``error``,
  ``render``). The templates are :mod:`gen3deval.prompts`'.
- :func:`classify`: the program in an answer, or why there is none (``refusal``, ``truncated``, ``no_code``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from gen3deval.prompts import Feedback, Template, first_messages, revision_messages


def revision_input(previous: dict[str, Any]) -> tuple[str, Feedback]:
    """(previous program text, :class:`Feedback`) of the engine's ``previous`` dict. The previous program is
    its kept program file, else the raw answer file (an answer without a program), else ``""``."""
    program = previous.get("program")
    text = Path(program).read_text(encoding="utf-8") if program else ""
    if not text and previous.get("answer"):
        text = Path(previous["answer"]).read_text(encoding="utf-8")
    fb = Feedback(
        executable=bool(previous.get("executable")),
        error_class=previous.get("error_class"),
        message=previous.get("error"),
        render_png=Path(previous["render"]) if previous.get("render") else None,
    )
    return text, fb


def attempt_messages(
    t: Template, image: Path, attempt: int, previous: dict[str, Any] | None
) -> list[dict[str, Any]]:
    """The OpenAI chat messages of ``attempt``: first messages for attempt 1 (or a revision told nothing),
    else revision messages built from ``previous``."""
    if attempt == 1 or not previous:
        return first_messages(t, image)
    text, fb = revision_input(previous)
    return revision_messages(t, image, text, fb)


def classify(
    text: str, language: str, *, finish_reason: str | None = None, refusal: str | None = None
) -> tuple[str | None, tuple[str, str] | None]:
    """(program, failure) of an answer: ``failure`` is ``(error_class, message)`` or None.

    In order: a refusal without a program -> ``refusal``; an answer cut at the token limit
    (``finish_reason == "length"``) -> ``truncated`` (its program, if any, is still returned: it is kept but
    not run); an empty answer -> ``no_code``; no ``language`` program in it -> ``no_code``.
    """
    from gen3deval.execute.extract import extract_code

    program = extract_code(text, language) if text.strip() else None
    failure: tuple[str, str] | None = None
    if refusal and program is None:
        failure = ("refusal", f"the model refused: {str(refusal)[:300]}")
    elif finish_reason == "length":
        failure = ("truncated", "the answer was cut at max_tokens (finish_reason: length)")
    elif not text.strip():
        failure = ("no_code", "the model's answer is empty")
    elif program is None:
        failure = ("no_code", f"no {language} program in the answer")
    return program, failure
