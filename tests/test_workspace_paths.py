"""The product speaks of the product: no absolute paths of the machine a result came from, no
sibling checkout folders, no remarks about who measured where, in any file a user reads or runs.

    pytest tests/test_workspace_paths.py
"""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PRODUCT = ["README.md", "pyproject.toml", "docs", "bench", "genmodels", "results", "trainables",
           "sweeps", "analysis"]
TEXT_SUFFIXES = {".md", ".py", ".sh", ".toml", ".txt", ".yaml", ".yml", ".json", ".cfg"}
# An absolute path of a development machine, a folder beside the checkout, or a remark about the
# machine a number was taken on rather than about the product.
FORBIDDEN = re.compile(r"/work/|\.\./shared|shared/data|/root/|/home/\w+/|this session|was lent|"
                       r"lent machine|lent GPU|borrowed machine|other agents|/tmp/results")


def product_files() -> list[Path]:
    files = []
    for entry in PRODUCT:
        path = REPO / entry
        files += [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    return [f for f in files if f.suffix in TEXT_SUFFIXES and "__pycache__" not in f.parts]


def test_the_product_files_name_no_workspace_paths_and_no_workplace_remarks():
    assert len(product_files()) > 50  # the scan reaches the product
    hits = [f"{f.relative_to(REPO)}:{n}: {line.strip()}"
            for f in product_files()
            for n, line in enumerate(f.read_text(errors="replace").splitlines(), start=1)
            if FORBIDDEN.search(line)]
    assert not hits, "\n".join(hits)


def test_the_scan_catches_what_it_is_for():
    for line in ("python bench/run.py --data-dir ../shared/data", "see /work/main/runs",
                 "measured on a lent GPU", "MNIST in shared/data"):
        assert FORBIDDEN.search(line), line
    assert not FORBIDDEN.search("python sweeps/gan_sweep.py --data-dir data")
