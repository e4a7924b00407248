#!/usr/bin/env python3
"""Writes bindings/python/README.md (the package's long description on
PyPI) from the repository README's chapter "Python, Flask and Gunicorn", so
that the two never drift apart.

    python3 bindings/python/readme.py          # rewrite README.md
    python3 bindings/python/readme.py --check  # exit 1 if README.md is stale

The chapter is copied as it is, except for links that only resolve inside
the repository: a link to a heading of another chapter becomes its text
followed by where to find it ("Monitoring" in the repository's README), a
link to a file of the repository names the file.
"""
import re
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT_README = HERE.parent.parent / "README.md"
OUT = HERE / "README.md"
CHAPTER = "## Python, Flask and Gunicorn"

HEADER = (
    "<!-- Generated from the repository README by bindings/python/readme.py:"
    " edit the README, then run it. -->\n\n"
)


def anchor(heading: str) -> str:
    """GitHub's id for a heading: lower case, punctuation dropped, spaces to '-'."""
    text = heading.strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def chapter(readme: str) -> str:
    lines = readme.splitlines(keepends=True)
    try:
        start = next(i for i, line in enumerate(lines) if line.rstrip("\n") == CHAPTER)
    except StopIteration:
        raise SystemExit(f"readme.py: {ROOT_README} has no line {CHAPTER!r}")
    end = next(
        (i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")),
        len(lines),
    )
    return "".join(lines[start:end]).rstrip("\n") + "\n"


def headings(readme: str) -> dict:
    """Anchor -> heading text of every heading of the README (outside code)."""
    found, fenced = {}, False
    for line in readme.splitlines():
        if line.startswith("```"):
            fenced = not fenced
        elif not fenced and line.startswith("#"):
            text = line.lstrip("#").strip()
            found.setdefault(anchor(text), text)
    return found


def render(readme: str) -> str:
    body = chapter(readme)
    inside = set(headings(body))
    every = headings(readme)

    def link(m: "re.Match[str]") -> str:
        text, target = m.group(1), m.group(2)
        if re.match(r"[a-z]+://", target):
            return m.group(0)
        if target.startswith("#"):
            if target[1:] in inside:
                return m.group(0)
            if target[1:] not in every:
                raise SystemExit(f"readme.py: the link {m.group(0)!r} names no heading of the README")
            heading = every[target[1:]]
            if text.lower() == heading.lower():
                return f'"{heading}" in the repository\'s README'
            return f'{text} ("{heading}" in the repository\'s README)'
        path = target.split("#", 1)[0]
        if not (ROOT_README.parent / path).exists():
            raise SystemExit(f"readme.py: the link {m.group(0)!r} names no file of the repository")
        if text.strip("`") == path:
            return f"{text} in the repository"
        return f"{text} (`{path}` in the repository)"

    return HEADER + re.sub(r"\[([^\]]+)\]\(([^)\s]+)\)", link, body)


def main() -> int:
    text = render(ROOT_README.read_text())
    if sys.argv[1:] == ["--check"]:
        if OUT.read_text() != text:
            print(f"{OUT} is stale: run python3 {Path(__file__).relative_to(ROOT_README.parent)}", file=sys.stderr)
            return 1
        return 0
    if sys.argv[1:]:
        print(__doc__, file=sys.stderr)
        return 2
    OUT.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
