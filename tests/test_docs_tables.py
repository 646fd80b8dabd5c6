"""Issue 35: the docs' tables and counts are generated from the results stored beside them
(`scripts/doc_tables.py`), so they cannot go stale: the pages match, and an edited number is caught."""

from __future__ import annotations

import importlib.util
import os
import shutil

from conftest import REPO


def _tables():
    spec = importlib.util.spec_from_file_location("doc_tables", os.path.join(REPO, "scripts", "doc_tables.py"))
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_the_generated_blocks_match_the_stored_results():
    tables = _tables()
    assert tables.stale() == [], "run python scripts/doc_tables.py"
    pages = {
        n: open(os.path.join(REPO, "docs", n), encoding="utf-8").read() for n in ("occlusion.md", "correspondence.md")
    }
    assert all("<!-- zfnet:generated" in p for p in pages.values())
    assert "| Shirt | 0.51 | 38 of 121 |" in pages["occlusion.md"]  # the count issue 35 found stale (37)


def test_an_edited_number_or_result_is_caught(tmp_path):
    tables = _tables()
    docs = tmp_path / "docs"
    shutil.copytree(os.path.join(REPO, "docs"), docs)
    page = (docs / "occlusion.md").read_text(encoding="utf-8")
    (docs / "occlusion.md").write_text(page.replace("38 of 121", "37 of 121"), encoding="utf-8")
    assert tables.stale(str(docs)) == ["occlusion.md"]
    (docs / "occlusion.md").write_text(page, encoding="utf-8")
    corr = (docs / "correspondence" / "correspondence.md").read_text(encoding="utf-8")
    (docs / "correspondence" / "correspondence.md").write_text(corr.replace("| toe |", "| Toe |"), encoding="utf-8")
    assert tables.stale(str(docs)) == ["correspondence.md"]
