"""The docs' numbers, generated from the results stored beside them, so that they cannot go stale (issue 35).

A block in a docs page

    <!-- zfnet:generated NAME -->
    ...
    <!-- zfnet:end -->

is replaced by GENERATORS[NAME](docs folder). `python scripts/doc_tables.py` rewrites the pages; with `--check`
it changes nothing and exits 1 naming each stale block (tests/test_docs_tables.py runs it).
"""

from __future__ import annotations

import json
import os
import re
import sys
from collections.abc import Callable

DOCS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "docs")
BLOCK = re.compile(r"(<!-- zfnet:generated (?P<name>[\w-]+) -->\n)(?P<body>.*?)(<!-- zfnet:end -->)", re.S)


def _load(docs: str, path: str) -> dict:
    with open(os.path.join(docs, path), encoding="utf-8") as f:
        return json.load(f)


def correspondence_table(docs: str) -> str:
    """The embedded model's table and the paper's, as `zfnet correspondence` wrote them."""
    with open(os.path.join(docs, "correspondence", "correspondence.md"), encoding="utf-8") as f:
        text = f.read()
    body = _load(docs, "correspondence/correspondence.json")
    src = body["random_region_source"]
    where = "its object box" if src.startswith("object") else "the named parts' hull"
    if "+mask" in src:
        where += ", at least half on the boot's own (non-black) pixels"
    return f"{text.strip()}\n\nRandom parts: {body['settings']['random_draws']} draws, each box inside {where}.\n"


def occlusion_facts(docs: str) -> str:
    """Per image of the stored run: what computation ran, where the top class changes, the lowest p(true)."""
    body = _load(docs, "occlusion/occlusion.json")
    images = body["images"]
    ran: dict[str, int] = {}
    for im in images:
        ran[im["strategy"]] = ran.get(im["strategy"], 0) + 1
    asked = body["settings"].get("strategy", "auto")
    lines = [
        f"Computation (`{asked}` asked): "
        + ", ".join(f"{k} for {v} of {len(images)} images" for k, v in sorted(ran.items()))
        + ".",
        "",
        "| image | p(true) unoccluded | positions where the top class changes | lowest p(true) at (row, col) |",
        "|---|---|---|---|",
    ]
    for im in images:
        grid = im["prob"]
        cells = len(grid) * len(grid[0])
        changed = sum(1 for row in im["top_class"] for c in row if c != im["base_class"])
        low, at = min((p, (i, j)) for i, row in enumerate(grid) for j, p in enumerate(row))
        y, x = im["ys"][at[0]], im["xs"][at[1]]
        lines.append(f"| {im['label_name']} | {im['base_prob']:.2f} | {changed} of {cells} | {low:.2f} at ({y}, {x}) |")
    return "\n".join(lines) + "\n"


GENERATORS: dict[str, Callable[[str], str]] = {
    "correspondence-table": correspondence_table,
    "occlusion-facts": occlusion_facts,
}


def render(page: str, docs: str = DOCS) -> str:
    """The page with every generated block made from the stored results."""

    def fill(m: re.Match) -> str:
        name = m.group("name")
        if name not in GENERATORS:
            raise SystemExit(f"doc_tables: unknown block {name!r}; known: {', '.join(GENERATORS)}")
        return m.group(1) + GENERATORS[name](docs) + m.group(4)

    return BLOCK.sub(fill, page)


def stale(docs: str = DOCS) -> list[str]:
    """The pages whose generated blocks differ from their stored results."""
    out = []
    for name in sorted(os.listdir(docs)):
        if name.endswith(".md"):
            with open(os.path.join(docs, name), encoding="utf-8") as f:
                page = f.read()
            if render(page, docs) != page:
                out.append(name)
    return out


def main(argv: list[str]) -> int:
    if "--check" in argv:
        bad = stale()
        for name in bad:
            print(f"docs/{name}: a generated block is stale; run python scripts/doc_tables.py", file=sys.stderr)
        return 1 if bad else 0
    for name in stale():
        path = os.path.join(DOCS, name)
        with open(path, encoding="utf-8") as f:
            page = f.read()
        with open(path, "w", encoding="utf-8") as f:
            f.write(render(page))
        print(f"docs/{name}: regenerated")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
