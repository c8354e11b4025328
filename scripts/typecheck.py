"""Type-check the product, the tests and the HIL bench with mypy, strict.

The product's folders are installed under one import root by pyproject's package-dir, which
mypy cannot follow. This builds the same tree out of symbolic links (``.typecheck/``), so
every ``edge_agent.*`` import resolves to the real source, and runs mypy on it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TREE = ROOT / ".typecheck"


def build_tree() -> Path:
    """A link farm with the installed package layout; returns the folder to put on MYPYPATH."""
    dirs = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"][
        "package-dir"]
    shutil.rmtree(TREE, ignore_errors=True)
    for package, folder in sorted(dirs.items(), key=lambda kv: len(kv[0])):
        target = TREE.joinpath(*package.split("."))
        target.mkdir(parents=True, exist_ok=True)
        for entry in sorted((ROOT / folder).iterdir()):
            link = target / entry.name
            if entry.name == "__pycache__" or link.exists():
                continue
            if entry.is_dir() and any(p != package and f == str(entry.relative_to(ROOT))
                                      for p, f in dirs.items()):
                continue  # a folder mapped to a package of its own gets its own directory
            os.symlink(entry, link)
    return TREE


def main() -> int:
    """Run mypy over the linked product, tests/ and hil_tests/; mypy's exit code."""
    tree = build_tree()
    env = {**os.environ, "MYPYPATH": str(tree)}
    cmd = [sys.executable, "-m", "mypy", "--config-file", str(ROOT / "pyproject.toml"),
           str(tree / "edge_agent"), "tests", "hil_tests", "bench", "conftest.py", *sys.argv[1:]]
    return subprocess.call(cmd, cwd=ROOT, env=env)


if __name__ == "__main__":
    sys.exit(main())
