"""The generated reference pages (docs/reference/) match what the code says today.

Integration, not unit: the HTTP page builds the serve app on a throwaway SQLite file.
"""

from __future__ import annotations

import difflib

import pytest

from docs.generate_reference import PAGES, REFERENCE_DIR, REGENERATE


@pytest.mark.parametrize("name", sorted(PAGES))
def test_reference_page_is_current(name: str) -> None:
    committed_path = REFERENCE_DIR / name
    assert committed_path.exists(), f"docs/reference/{name} is missing: run `{REGENERATE}`"
    committed = committed_path.read_text(encoding="utf-8")
    generated = PAGES[name]()
    if committed != generated:
        diff = "".join(
            list(
                difflib.unified_diff(
                    committed.splitlines(keepends=True),
                    generated.splitlines(keepends=True),
                    f"docs/reference/{name} (committed)",
                    f"docs/reference/{name} (from the code)",
                )
            )[:40]
        )
        pytest.fail(f"docs/reference/{name} is stale: run `{REGENERATE}`\n{diff}")
