"""MkDocs hook: a page under ``docs/`` that the ``nav`` of ``mkdocs.yml`` forgot still appears.

Pages missing from the nav are listed under "More" (sorted by path), so a page merged after the
last nav edit is reachable from the site, not only from search. Give it a proper place in the
nav when you can.
"""

from __future__ import annotations

from typing import Any


def on_nav(nav: Any, config: Any, files: Any) -> Any:
    """Append the documentation pages that are not in the nav as a "More" section."""
    from mkdocs.structure.nav import Section
    from mkdocs.structure.pages import Page

    listed = {page.file.src_uri for page in nav.pages}
    extra = [
        Page(None, f, config)
        for f in sorted(files.documentation_pages(), key=lambda f: f.src_uri)
        if f.src_uri not in listed
    ]
    if extra:
        section = Section("More", extra)
        for page in extra:
            page.parent = section
        nav.items.append(section)
        nav.pages.extend(extra)
        for prev, page in zip(nav.pages, nav.pages[1:], strict=False):
            prev.next_page, page.previous_page = page, prev
    return nav
