"""Pull the program out of a model's answer (markdown, prose, fences, or bare code).

The rule, in order (``extract_code(answer, language)``):

1. ``<think>...</think>`` sections are dropped (reasoning models draft code there).
2. Fenced blocks (```` ``` ```` or ``~~~``, any length >= 3, an unclosed last fence runs to the end)
   are collected. A block *belongs* to the language when its tag names it (``js``, ``javascript``,
   ``mjs``, ``jsx``, ``ts``, ``typescript``, ``node``, ``html`` for three.js, whose ``<script>``
   bodies are used; ``python``, ``py``, ``python3``, ``cadquery`` for CadQuery), or it has no tag
   and does not look like another language. Blocks tagged otherwise (``bash``, ``json``, ...) are
   ignored. Tags and patterns come from each executor's :class:`~gen3deval.execute.base.CodeSyntax`.
3. Among those, the *main* block is the one with the entry point: three.js: it defines
   ``createObject``; CadQuery: it imports cadquery or calls ``cq.``/``cadquery.``. With several,
   the longest wins (ties: the later one, usually the revision). With none, the longest block.
4. Parts are joined: other blocks of the language that define at top level a name the main block
   uses but does not bind itself anywhere (helper functions, constants), and for Python the block
   holding the missing ``import cadquery``, are prepended in document order, separated by a blank
   line. Usage examples (three.js blocks that call ``createObject(...)`` without defining it) are
   never joined.
5. Without fences, an answer that is plainly code is used from its first code line to its last code
   line (prose before and after trimmed), if it contains the entry point (three.js) or imports
   cadquery (CadQuery).
6. Otherwise: None (scored as error class ``no_code``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from gen3deval.execute.base import CodeSyntax
from gen3deval.execute.registry import EXECUTORS, language_named

_THINK = re.compile(r"<think>.*?</think>", re.S | re.I)
_FENCE_OPEN = re.compile(r"^[ \t]{0,3}(?P<fence>`{3,}|~{3,})[ \t]*(?P<info>[^\n`]*)$")
_HTML_TAGS = {"html", "htm", "xhtml"}
_SCRIPT = re.compile(r"<script\b[^>]*>(.*?)</script>", re.S | re.I)
_IDENT = re.compile(r"[A-Za-z_$][\w$]*")
_STRING = re.compile(r"(['\"`])(?:\\.|(?!\1).)*\1")
_PROSE = re.compile(r"^\s*(?:[-*]\s+|\d+\.\s+)?[A-Z][a-z]*[,']?(?:\s+[\w'’,()-]+){2,}[.:!?]?\s*$")


@dataclass
class _Block:
    tag: str
    code: str
    pos: int


def _syntax(language: str) -> tuple[str, CodeSyntax]:
    lang = language_named(language)
    if lang is None:
        raise ValueError(f"unknown language {language!r}; expected one of {', '.join(EXECUTORS)}")
    return lang, EXECUTORS[lang].syntax


def _fenced_blocks(text: str) -> list[_Block]:
    """All fenced code blocks in order; an unclosed fence runs to the end of the text."""
    lines = text.split("\n")
    blocks: list[_Block] = []
    i = 0
    while i < len(lines):
        m = _FENCE_OPEN.match(lines[i])
        if not m:
            i += 1
            continue
        fence = m.group("fence")
        info = m.group("info").strip()
        close = re.compile(rf"^[ \t]{{0,3}}{re.escape(fence[0])}{{{len(fence)},}}[ \t]*$")
        body: list[str] = []
        j = i + 1
        while j < len(lines) and not close.match(lines[j]):
            body.append(lines[j])
            j += 1
        tag = info.split()[0].lower().lstrip(".{").rstrip("}") if info else ""
        blocks.append(_Block(tag=tag, code="\n".join(body).strip("\n"), pos=i))
        i = j + 1
    return blocks


def _names(pattern: re.Pattern[str], code: str) -> set[str]:
    """Names captured by ``pattern`` (the first non-empty group of each match)."""
    return {next(g for g in m.groups() if g) for m in pattern.finditer(code)}


def _looks_like(code: str, lang: str) -> bool:
    """Strong signs of ``lang``, or its weak signs and no strong sign of another language."""
    syn = EXECUTORS[lang].syntax
    if syn.only.search(code):
        return True
    others = [ex.syntax for name, ex in EXECUTORS.items() if name != lang]
    return bool(syn.signs.search(code)) and not any(o.only.search(code) for o in others)


def _belongs(block: _Block, lang: str) -> str | None:
    """The block's code if it is in ``lang`` (for HTML: its script bodies), else None."""
    syn = EXECUTORS[lang].syntax
    tag = block.tag
    if tag in syn.fence_tags:
        return block.code
    if syn.html_scripts and (tag in _HTML_TAGS or (not tag and "<script" in block.code.lower())):
        scripts = [s.strip("\n") for s in _SCRIPT.findall(block.code) if s.strip()]
        return "\n\n".join(scripts) if scripts else None
    if not tag and _looks_like(block.code, lang):
        return block.code
    return None


def _strip_comments_strings(code: str, syn: CodeSyntax) -> str:
    return _STRING.sub(" ", syn.comments.sub(" ", code))


def _is_usage_example(code: str, syn: CodeSyntax) -> bool:
    """A block that calls the entry point without defining it (``scene.add(createObject(THREE))``)."""
    return syn.calls_entry is not None and bool(syn.calls_entry.search(code)) and not syn.entry.search(code)


def _join_parts(main: str, others: list[tuple[int, str]], main_pos: int, syn: CodeSyntax) -> str:
    """Prepend the other blocks that define names ``main`` uses but lacks (transitively); usage
    examples (blocks calling ``createObject``) are never joined."""
    chosen: dict[int, str] = {}
    needed_from = [main]
    have = _names(syn.defs, main) | _names(syn.binds, main)
    others = [(pos, code) for pos, code in others if not _is_usage_example(code, syn)]
    imp, use = syn.library_import, syn.library_use
    # A main block that uses the library (``cq.``) without importing it takes the block with the import.
    lacks_import = imp is not None and use is not None and not imp.search(main) and bool(use.search(main))
    while needed_from:
        code = needed_from.pop()
        used = set(_IDENT.findall(_strip_comments_strings(code, syn)))
        for pos, other in others:
            if pos in chosen:
                continue
            defs = _names(syn.defs, other)
            wanted = (defs & used) - have
            if wanted or (lacks_import and imp is not None and imp.search(other)):
                chosen[pos] = other
                have |= defs
                needed_from.append(other)
    if not chosen:
        return main
    parts = [*sorted(chosen.items()), (main_pos, main)]
    parts.sort(key=lambda p: p[0])
    return "\n\n".join(code for _, code in parts)


def _bare_code(text: str, syn: CodeSyntax) -> str | None:
    """An unfenced answer: the span from the first to the last code line, if it holds the entry."""
    lines = text.split("\n")

    def code_line(ln: str) -> bool:
        return bool(ln.strip()) and bool(syn.code_line.search(ln)) and not _PROSE.match(ln)

    first = next((i for i, ln in enumerate(lines) if code_line(ln)), None)
    if first is None:
        return None
    last = max(i for i, ln in enumerate(lines) if code_line(ln))
    code = "\n".join(lines[first : last + 1]).strip("\n")
    return code if syn.bare_requires.search(code) else None


def extract_code(answer: str | None, language: str) -> str | None:
    """The program in ``answer`` for ``language`` (``"threejs"``, ``"cadquery"`` or an alias such as
    ``js``/``python``), or None when the answer holds no code (see the module docstring for the exact
    rule). ValueError for an unknown language."""
    lang, syn = _syntax(language)
    if not answer or not answer.strip():
        return None
    text = _THINK.sub("", answer.replace("\r\n", "\n"))
    blocks = _fenced_blocks(text)
    if blocks:
        mine = [(b.pos, code) for b in blocks if (code := _belongs(b, lang)) is not None and code.strip()]
        if mine:
            entries = [(pos, code) for pos, code in mine if syn.entry.search(code)]
            pool = entries or mine
            main_pos, main = max(pool, key=lambda pc: (len(pc[1]), pc[0]))
            others = [(pos, code) for pos, code in mine if pos != main_pos]
            return _join_parts(main, others, main_pos, syn).strip("\n") + "\n"
        # Fences, but none in this language: fall through to look for bare code in the prose.
    code = _bare_code(text, syn)
    return code + "\n" if code else None


__all__ = ["extract_code"]
