"""A strict reading of the report's HTML: every element closed in order, and what it references."""
from __future__ import annotations

from html.parser import HTMLParser
from typing import Dict, List, Tuple

VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track", "wbr"}


class StrictPage(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.stack: List[str] = []
        self.errors: List[str] = []
        self.elements: List[Tuple[str, Dict[str, str]]] = []
        self.scripts: List[str] = []
        self.text: List[str] = []

    def handle_starttag(self, tag, attrs):
        self.elements.append((tag, dict(attrs)))
        if tag not in VOID:
            self.stack.append(tag)

    def handle_startendtag(self, tag, attrs):
        self.elements.append((tag, dict(attrs)))

    def handle_endtag(self, tag):
        if not self.stack or self.stack[-1] != tag:
            self.errors.append(f"</{tag}> closes {self.stack[-1] if self.stack else 'nothing'}")
        else:
            self.stack.pop()

    def handle_data(self, data):
        if self.stack and self.stack[-1] == "script":
            self.scripts.append(data)
        else:
            self.text.append(data)


def parse_strictly(text: str) -> StrictPage:
    page = StrictPage()
    page.feed(text)
    page.close()
    assert text.lstrip().startswith("<!DOCTYPE html>")
    assert not page.errors, page.errors
    assert page.stack == [], f"unclosed: {page.stack}"
    return page
