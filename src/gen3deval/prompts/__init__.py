"""Prompt templates for vision-language models that write 3D programs (the ``vlm`` system).

A template is a small markdown file cut into sections by marker lines ``<!-- NAME -->``
(docs/vlm-prompts.md has the format):

- ``system``: the system message: the task and the executor contract (required);
- ``user``: the first attempt's user message; the line ``$reference_image`` is the reference image
  (default: ``Reference image:`` and the image);
- ``revise``: the revision message; lines ``$reference_image`` and ``$feedback``, and ``$program``
  (the previous program, verbatim, fenced);
- ``failed``: the feedback when the previous program failed: ``$error_class``, ``$message`` (fenced);
- ``ran``: the feedback when it ran: the line ``$render_image`` is its ``ref`` render.

Built-in templates (:data:`TEMPLATES`): ``threejs`` (``threejs.md``) and ``cadquery``
(``cadquery.md``), both using ``revise.md`` for the three revision sections; a template file may
override any of them. :attr:`Template.version` (sha256[:16] of the canonical texts) goes into the
protocol fingerprint, so editing a prompt makes runs incomparable, as it should.

Messages are OpenAI chat messages: images are inline ``data:image/png;base64`` URLs.
"""

from __future__ import annotations

import hashlib
import re
import string
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from gen3deval.errors import ConfigError
from gen3deval.systems._openai_api import image_part  # one definition of an inline image part

# Built-in template name -> its language (the executor that runs the answers).
TEMPLATES: dict[str, str] = {"threejs": "threejs", "cadquery": "cadquery"}
# The fence tag used to show a previous program, per language.
_FENCE_TAG = {"threejs": "js", "cadquery": "python"}
FIRST_SECTIONS = ("system", "user")
REVISE_SECTIONS = ("revise", "failed", "ran")
# Placeholders each section may use; the image placeholders must stand alone on a line.
_ALLOWED = {
    "system": set(),
    "user": {"reference_image"},
    "revise": {"reference_image", "program", "feedback"},
    "failed": {"error_class", "message"},
    "ran": {"render_image"},
}
_REQUIRED = {
    "system": set(),
    "user": {"reference_image"},
    "revise": {"reference_image", "program", "feedback"},
    "failed": {"message"},
    "ran": {"render_image"},
}
_LINE_TOKENS = {"reference_image", "render_image", "feedback"}
_DEFAULT_USER = "Reference image:\n$reference_image"
_MARKER = re.compile(r"^<!--\s*([A-Za-z_-]+)\s*-->[ \t]*$", re.M)
MESSAGE_CHARS = 1500  # feedback error messages are trimmed to about this many characters


@dataclass(frozen=True)
class Template:
    """A prompt template. ``text``: the canonical first-attempt sections (system, user);
    ``revise_text``: the canonical revision sections (revise, failed, ran); ``version``: sha256[:16]
    of both; ``language``: the language its answers are in, when known (built-ins; files loaded with
    ``language=``)."""

    name: str
    text: str
    revise_text: str
    version: str
    language: str | None = None

    def section(self, name: str) -> str:
        """The body of one section (``system``, ``user``, ``revise``, ``failed``, ``ran``)."""
        sections = _split(self.text, self.name) | _split(self.revise_text, self.name)
        return sections[name]


@dataclass(frozen=True)
class Feedback:
    """What attempt i+1 is told about attempt i.

    ``executable``: the program ran and gave geometry; ``error_class``/``message``: its failure
    (``message`` trimmed to ~:data:`MESSAGE_CHARS`, head and tail kept); ``render_png``: its ``ref``
    render (PNG), shown beside the reference image, or None when it failed or has no render.
    """

    executable: bool
    error_class: str | None = None
    message: str | None = None
    render_png: Path | None = None

    def __post_init__(self) -> None:
        if self.message is not None:
            object.__setattr__(self, "message", trim_message(self.message))


def trim_message(message: str, limit: int = MESSAGE_CHARS) -> str:
    """``message`` cut to about ``limit`` characters: the first two thirds and the last third (where a
    traceback's cause is) with a note of how much was cut in between."""
    message = message.strip()
    if len(message) <= limit:
        return message
    head, tail = (limit * 2) // 3, limit // 3
    cut = len(message) - head - tail
    return f"{message[:head]}\n[... {cut} characters cut ...]\n{message[-tail:]}"


# --------------------------------------------------------------------------------------------------
# loading
# --------------------------------------------------------------------------------------------------


def _split(text: str, where: str) -> dict[str, str]:
    """Sections of a template text; text without any marker is one ``system`` section."""
    marks = list(_MARKER.finditer(text))
    if not marks:
        return {"system": text.strip("\n")} if text.strip() else {}
    if text[: marks[0].start()].strip():
        raise ConfigError(f"prompt template {where}: text before the first section marker (<!-- system -->)")
    out: dict[str, str] = {}
    for i, m in enumerate(marks):
        name = m.group(1).lower()
        if name not in _ALLOWED:
            known = ", ".join(_ALLOWED)
            raise ConfigError(f"prompt template {where}: unknown section <!-- {name} --> (known: {known})")
        if name in out:
            raise ConfigError(f"prompt template {where}: section <!-- {name} --> appears twice")
        end = marks[i + 1].start() if i + 1 < len(marks) else len(text)
        out[name] = text[m.end() : end].strip("\n")
    return out


def _placeholders(body: str) -> set[str]:
    names = set()
    for m in string.Template.pattern.finditer(body):
        if m.group("named") or m.group("braced"):
            names.add(m.group("named") or m.group("braced"))
    return names


def _check(sections: dict[str, str], where: str) -> None:
    """Every section uses only its own placeholders, all the required ones, images on their own line."""
    if not sections.get("system", "").strip():
        raise ConfigError(f"prompt template {where}: the <!-- system --> section is missing or empty")
    for name, body in sections.items():
        if name == "system":
            continue  # sent as it is (no placeholders), so a `${x}` in example code is fine
        used = _placeholders(body)
        if bad := used - _ALLOWED[name]:
            allowed = ", ".join(f"${p}" for p in sorted(_ALLOWED[name])) or "none"
            raise ConfigError(
                f"prompt template {where}: section <!-- {name} --> uses "
                f"{', '.join(f'${p}' for p in sorted(bad))} (allowed there: {allowed})"
            )
        lines = {ln.strip() for ln in body.split("\n")}
        for req in sorted(_REQUIRED[name]):
            token = f"${req}"
            if req in _LINE_TOKENS and token not in lines:
                raise ConfigError(
                    f"prompt template {where}: section <!-- {name} --> needs {token} alone on a line"
                )
            if req not in used:
                raise ConfigError(f"prompt template {where}: section <!-- {name} --> needs {token}")


def _canonical(sections: dict[str, str], names: tuple[str, ...]) -> str:
    return "".join(f"<!-- {n} -->\n{sections[n]}\n" for n in names)


def _builtin_text(file: str) -> str:
    return resources.files(__name__).joinpath(file).read_text(encoding="utf-8")


def _build(name: str, text: str, language: str | None, where: str) -> Template:
    sections = _split(text, where)
    sections.setdefault("user", _DEFAULT_USER)
    revise = _split(_builtin_text("revise.md"), "revise.md")
    for sec in REVISE_SECTIONS:
        sections.setdefault(sec, revise[sec])
    _check(sections, where)
    first = _canonical(sections, FIRST_SECTIONS)
    rev = _canonical(sections, REVISE_SECTIONS)
    version = hashlib.sha256(f"{first}\0{rev}".encode()).hexdigest()[:16]
    return Template(name=name, text=first, revise_text=rev, version=version, language=language)


def load_template(name_or_path: str, base_dir: Path, *, language: str | None = None) -> Template:
    """A built-in template (:data:`TEMPLATES`) or a template file (relative paths against
    ``base_dir``, e.g. the run spec's folder). ``language``, when given, must match a built-in's
    language and is recorded for a file. ConfigError naming the template when it is unknown,
    unreadable or malformed."""
    if name_or_path in TEMPLATES:
        lang = TEMPLATES[name_or_path]
        if language is not None and language != lang:
            raise ConfigError(
                f"prompt {name_or_path!r} is the built-in template for {lang}, but language is "
                f"{language!r}; use prompt={language} or a template file"
            )
        return _build(name_or_path, _builtin_text(f"{name_or_path}.md"), lang, f"{name_or_path}.md")
    path = Path(name_or_path).expanduser()
    if not path.is_absolute():
        path = Path(base_dir) / path
    if not path.is_file():
        raise ConfigError(
            f"prompt {name_or_path!r}: neither a built-in template ({', '.join(TEMPLATES)}) "
            f"nor a file (looked for {path})"
        )
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"prompt template {path}: cannot read it ({exc})") from None
    return _build(path.stem, text, language, str(path))


def default_template(language: str) -> Template:
    """The built-in template for ``language`` (``threejs`` or ``cadquery``)."""
    names = [n for n, lang in TEMPLATES.items() if lang == language]
    if not names:
        raise ConfigError(
            f"no built-in prompt template for language {language!r} (known: {', '.join(TEMPLATES)})"
        )
    return load_template(names[0], Path("."))


# --------------------------------------------------------------------------------------------------
# messages
# --------------------------------------------------------------------------------------------------


def fenced(text: str, tag: str = "") -> str:
    """``text`` in a backtick fence longer than any backtick run inside it (so it cannot end early)."""
    longest = max((len(m) for m in re.findall(r"`+", text)), default=0)
    fence = "`" * max(3, longest + 1)
    return f"{fence}{tag}\n{text.rstrip(chr(10))}\n{fence}"


def _content(
    body: str, values: dict[str, str], lines: dict[str, list[dict[str, Any]]]
) -> list[dict[str, Any]]:
    """Content parts of one section: lines that are exactly a line token become those parts; the text in
    between has its placeholders filled (after splitting, so values are never parsed as tokens)."""
    parts: list[dict[str, Any]] = []
    chunk: list[str] = []

    def flush() -> None:
        text = string.Template("\n".join(chunk)).safe_substitute(values).strip("\n")
        if text.strip():
            parts.append({"type": "text", "text": text})
        chunk.clear()

    for ln in body.split("\n"):
        token = ln.strip()[1:] if ln.strip().startswith("$") else None
        if token in lines:
            flush()
            parts.extend(lines[token])
        else:
            chunk.append(ln)
    flush()
    # Merge neighbouring text parts (a line token that expanded to text).
    merged: list[dict[str, Any]] = []
    for p in parts:
        if merged and p["type"] == "text" and merged[-1]["type"] == "text":
            merged[-1] = {"type": "text", "text": merged[-1]["text"] + "\n\n" + p["text"]}
        else:
            merged.append(p)
    return merged


def first_messages(t: Template, image_png: Path) -> list[dict[str, Any]]:
    """Attempt 1: ``[system, user(text + reference image)]`` (OpenAI chat messages)."""
    user = _content(t.section("user"), {}, {"reference_image": [image_part(image_png)]})
    return [{"role": "system", "content": t.section("system")}, {"role": "user", "content": user}]


def revision_messages(
    t: Template, image_png: Path, previous_program: str, feedback: Feedback
) -> list[dict[str, Any]]:
    """Attempt i+1: ``[system, user]`` where the user message holds the reference image, the previous
    program verbatim (fenced) and the feedback: the error class and trimmed message when it failed, its
    ``ref`` render when it ran; and asks for a complete revised program."""
    if feedback.executable:
        render = (
            [image_part(feedback.render_png)]
            if feedback.render_png is not None
            else [{"type": "text", "text": "(its render is not available)"}]
        )
        fb = _content(t.section("ran"), {}, {"render_image": render})
    else:
        values = {
            "error_class": feedback.error_class or "unknown",
            "message": fenced(feedback.message or "(no message)", "text"),
        }
        fb = _content(t.section("failed"), values, {})
    tag = _FENCE_TAG.get(t.language or "", "")
    user = _content(
        t.section("revise"),
        {"program": fenced(previous_program, tag)},
        {"reference_image": [image_part(image_png)], "feedback": fb},
    )
    return [{"role": "system", "content": t.section("system")}, {"role": "user", "content": user}]


__all__ = [
    "MESSAGE_CHARS",
    "TEMPLATES",
    "Feedback",
    "Template",
    "default_template",
    "fenced",
    "first_messages",
    "image_part",
    "load_template",
    "revision_messages",
    "trim_message",
]
