"""Every `#anchor` link in the README lands on a heading (GitHub's slugs), so its map stays walkable."""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"

_FENCE = re.compile(r"^\s*(```|~~~)")
_HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")
_ANCHOR_LINK = re.compile(r"\]\(#([^)\s]+)\)")


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: rendered text, lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # links and images keep their text
    text = re.sub(r"[`*~]|<[^>]+>", "", text)  # markup, not words (GitHub keeps underscores)
    return re.sub(r"[^\w\- ]", "", text.lower()).replace(" ", "-")


def anchors(markdown: str) -> set[str]:
    """Every heading's anchor, numbered like GitHub's when a heading text repeats."""
    seen: Counter[str] = Counter()
    found: set[str] = set()
    fenced = False
    for line in markdown.splitlines():
        if _FENCE.match(line):
            fenced = not fenced
        elif not fenced and (heading := _HEADING.match(line)):
            base = slug(heading.group(2))
            found.add(base if not seen[base] else f"{base}-{seen[base]}")
            seen[base] += 1
    return found


def test_slugs_follow_github() -> None:
    assert slug("Permission health — `GET /api/health/permissions`") == "permission-health--get-apihealthpermissions"
    assert slug("Distill to fine-tune") == "distill-to-fine-tune"
    assert slug("`host.json` choices, [linked](x)") == "hostjson-choices-linked"
    assert anchors("# A\n```\n# B\n```\n## A\n") == {"a", "a-1"}


def test_every_anchor_link_resolves() -> None:
    text = README.read_text()
    missing = sorted(set(_ANCHOR_LINK.findall(text)) - anchors(text))
    assert not missing, f"README links to headings that do not exist: {missing}"


def test_every_relative_link_names_a_file() -> None:
    """Screenshots and docs the README points at exist (a deleted docs page leaves no dangling link)."""
    targets = re.findall(r"\]\(((?![a-z]+:|#)[^)#\s]+)", README.read_text())
    assert targets, "expected the README's screenshots at least"
    missing = sorted(target for target in set(targets) if not (README.parent / target).exists())
    assert not missing, f"README links to files that do not exist: {missing}"
