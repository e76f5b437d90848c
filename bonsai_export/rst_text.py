"""Python's documentation sources (reStructuredText) as plain text, close to what Sphinx's text builder writes
(the form of `pydoc_data.topics`, the held-out text): roles become their text ("print()" for :func:`print`),
inline literals are quoted, index entries, labels, comments and tables of contents are dropped, and each file is
cut into its sections, the unit that the held-out filter drops or keeps."""

from __future__ import annotations

import re
from pathlib import Path

DOCS_SUFFIXES = (".rst", ".rst.txt")
_CALLABLE_ROLES = {"func", "meth"}
_DROPPED_DIRECTIVES = {"index", "toctree", "highlight", "module", "currentmodule", "moduleauthor", "sectionauthor",
                       "testsetup", "testcleanup", "raw", "include", "literalinclude", "only", "tabularcolumns",
                       "impl-detail", "audit-event", "audit-event-table", "availability", "image", "figure",
                       "contents", "sectnum", "opcode", "autosummary"}
_NOTED_DIRECTIVES = {"note": "Note:", "warning": "Warning:", "seealso": "See also:", "versionadded": "New in version",
                     "versionchanged": "Changed in version", "deprecated": "Deprecated since version",
                     "deprecated-removed": "Deprecated since version"}
_ROLE = re.compile(r":(?:[\w-]+:)?([\w-]+):`([^`]+)`")
_LITERAL = re.compile(r"``([^`]+)``")
_LINK = re.compile(r"`([^`<]+?)\s*<[^`>]+>`_{1,2}")
_DIRECTIVE = re.compile(r"^(\s*)\.\.\s+([\w:-]+)::\s*(.*)$")
_UNDERLINE = re.compile(r"^([=\-~^*#\"'+`.:_])\1{2,}\s*$")


def _role(match: re.Match) -> str:
    role, text = match.group(1), match.group(2)
    label = re.match(r"(.*?)\s*<[^>]+>$", text)
    text = label.group(1) if label else text
    text = text.lstrip("!")
    if text.startswith("~"):
        text = text[1:].rsplit(".", 1)[-1]
    if role in ("ref", "doc", "term", "dfn", "abbr", "pep", "rfc", "title-reference", "emphasis", "strong"):
        return f"PEP {text}" if role == "pep" else (f"**RFC {text}**" if role == "rfc" else text)
    if role in _CALLABLE_ROLES and not text.endswith(")"):
        text += "()"
    return f'"{text}"'


def inline(line: str) -> str:
    line = _LITERAL.sub(lambda m: f'"{m.group(1)}"', line)
    line = _ROLE.sub(_role, line)
    line = _LINK.sub(lambda m: m.group(1), line)
    return line.replace("\\ ", "")


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip(" "))


def rst_sections(source: str) -> list[str]:
    """One reStructuredText file as plain-text sections (a heading and what follows up to the next heading)."""
    lines = source.expandtabs(8).splitlines()
    sections, current, skip_deeper = [], [], None
    i = 0
    while i < len(lines):
        line = lines[i]
        if skip_deeper is not None:  # inside a dropped directive or comment: skip its indented body
            if not line.strip() or _indent(line) > skip_deeper:
                i += 1
                continue
            skip_deeper = None
        nxt = lines[i + 1] if i + 1 < len(lines) else ""
        if _UNDERLINE.match(line) and i + 2 < len(lines) and _UNDERLINE.match(lines[i + 2]):
            line, nxt, i = nxt, lines[i + 2], i + 1  # overlined heading: title between two rules
        if line.strip() and _UNDERLINE.match(nxt) and len(nxt.strip()) >= len(line.strip()) > 0 \
                and not _UNDERLINE.match(line):
            if any(s.strip() for s in current):
                sections.append(current)
            title = inline(line.strip())
            current = [title, nxt.strip()[0] * len(title), ""]
            i += 2
            continue
        directive = _DIRECTIVE.match(line)
        if directive:
            indent, name, args = len(directive.group(1)), directive.group(2).split(":")[-1], directive.group(3)
            if name in _DROPPED_DIRECTIVES:
                skip_deeper = indent
            elif name in _NOTED_DIRECTIVES:
                current.append(" " * indent + f"{_NOTED_DIRECTIVES[name]} {inline(args)}".rstrip())
            elif args:  # function, class, method, data, ...: the signature line
                current.append(" " * indent + inline(args))
            i += 1
            while i < len(lines) and lines[i].strip().startswith(":") and _indent(lines[i]) > indent:
                i += 1  # directive options (:noindex:, :synopsis: ...)
            continue
        if re.match(r"^\s*\.\.(\s|$)", line):  # comment, label (.. _name:), substitution, footnote target
            skip_deeper = _indent(line)
            i += 1
            continue
        text = inline(line.rstrip())
        if text.endswith("::"):
            text = text[:-2].rstrip() + (":" if text[:-2].strip() else "")
        current.append(text)
        i += 1
    if any(s.strip() for s in current):
        sections.append(current)
    return [re.sub(r"\n{3,}", "\n\n", "\n".join(s)).strip() + "\n" for s in sections]


def docs_files(root: Path) -> list[Path]:
    """The reStructuredText files under a documentation folder (Python's Doc/, or a built HTML tree's _sources/),
    in a fixed order."""
    return sorted(p for p in root.rglob("*") if p.is_file() and p.name.endswith(DOCS_SUFFIXES))
