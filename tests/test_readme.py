"""The README's in-page links resolve, and the sections other pages point at are there."""

from __future__ import annotations

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def anchors(text: str) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces to '-', repeats numbered."""
    seen: dict[str, int] = {}
    found = set()
    in_code = False
    for line in text.splitlines():
        if line.startswith("```"):
            in_code = not in_code
        if in_code or not line.startswith("#"):
            continue
        title = line.lstrip("#").strip().lower()
        slug = re.sub(r"[^\w\- ]", "", title).replace(" ", "-")
        count = seen.get(slug, 0)
        seen[slug] = count + 1
        found.add(slug if count == 0 else f"{slug}-{count}")
    return found


def test_every_anchor_link_resolves() -> None:
    text = README.read_text(encoding="utf-8")
    linked = set(re.findall(r"\]\(#([^)]+)\)", text))
    assert linked, "the README links to its own sections"
    assert not linked - anchors(text), f"links to missing sections: {sorted(linked - anchors(text))}"


def test_the_sections_the_walkthroughs_need_are_there() -> None:
    found = anchors(README.read_text(encoding="utf-8"))
    assert {"distill-to-fine-tune", "reports-retention-and-purge", "evaluate", "command-line"} <= found
