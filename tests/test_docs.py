"""The README is a short landing page whose links all resolve, its test command (which CI runs)
also builds the documentation site, every page the site's navigation names exists, and what the
Quick start writes (reports/, the built site/) is ignored by git."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _readme():
    return (ROOT / "README.md").read_text()


def test_readme_is_a_landing_page():
    lines = _readme().splitlines()
    assert len(lines) <= 250, f"README.md has {len(lines)} lines; move the detail to docs/"
    text = _readme()
    assert "not a diagnostic device" in text
    assert "QUICKSTART" not in text, "a placeholder was left in the README"
    assert "![" in text, "the README shows one results figure"


def test_readme_test_command_builds_the_site_and_is_what_ci_runs():
    block = _readme().split("**Run the tests**", 1)[1].split("```bash\n", 1)[1].split("\n```", 1)[0]
    assert block.endswith("&& .venv/bin/mkdocs build --strict"), block
    assert block in (ROOT / ".ci" / "run").read_text().splitlines()
    assert block in (ROOT / "docs" / "getting-started.md").read_text()


@pytest.mark.parametrize("name", ["README.md", *sorted(p.name for p in (ROOT / "docs").glob("*.md"))])
def test_relative_links_resolve(name):
    path = ROOT / name if name == "README.md" else ROOT / "docs" / name
    targets = re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", path.read_text())
    missing = [t for t in targets if not re.match(r"[a-z]+:", t) and not (path.parent / t).exists()]
    assert not missing, f"{name} links to files that do not exist: {missing}"


def test_site_navigation_names_existing_pages():
    text = (ROOT / "mkdocs.yml").read_text()
    pages = re.findall(r":\s+(\S+\.(?:md|ipynb))\s*$", text, flags=re.M)
    assert "index.md" in pages and "api.md" in pages
    missing = [p for p in pages if not (ROOT / "docs" / p).exists()]
    assert not missing, f"mkdocs.yml names pages that do not exist: {missing}"
    assert "--strict" in (ROOT / ".ci" / "run").read_text()


def test_requirements_pin_the_site_packages():
    req = (ROOT / "requirements.txt").read_text()
    for package in ("mkdocs>=", "mkdocs-material>=", "mkdocstrings[python]>=", "mkdocs-jupyter>="):
        assert package in req and re.search(re.escape(package) + r"[\d.]+,<", req), package


@pytest.mark.parametrize("path", ["reports/eda/x.png", "site/index.html", "runs/a/config.json"])
def test_quick_start_outputs_are_ignored_by_git(path):
    if not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    result = subprocess.run(["git", "check-ignore", "-q", path], cwd=ROOT)
    assert result.returncode == 0, f"{path} is not ignored by git"
