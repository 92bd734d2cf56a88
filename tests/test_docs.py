"""The documentation site: every setting has a meaning, and a broken link fails the build.

`make checks` runs `mkdocs build --strict` on the real site; these tests hold the two things
that build relies on: `gate/settings_doc.py` describes exactly the variables `gate/settings.py`
reads, and a page linking to a page or anchor that does not exist fails `--strict`.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

from gate import settings, settings_doc

ROOT = Path(__file__).resolve().parents[1]
MKDOCS = Path(sys.executable).with_name("mkdocs")


def test_every_setting_has_a_meaning_and_every_meaning_a_setting() -> None:
    variables = set(settings.ENV.values())
    assert variables - settings_doc.MEANING.keys() == set(), "add them to gate/settings_doc.py"
    assert settings_doc.MEANING.keys() - variables == set(), "gone from gate/settings.py"
    assert all(text.strip() for text in settings_doc.MEANING.values())


def _build(tmp_path: Path, page: str) -> subprocess.CompletedProcess[str]:
    shutil.copy(ROOT / "mkdocs.yml", tmp_path / "mkdocs.yml")
    shutil.copytree(ROOT / "docs", tmp_path / "docs")
    (tmp_path / "docs" / "index.md").write_text(page)
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1", "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [str(MKDOCS), "build", "--strict"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_a_link_to_a_missing_page_or_anchor_fails_the_strict_build(tmp_path: Path) -> None:
    page = (
        "# Gate\n\n<!-- pages -->\n\n[a missing page](no-such-page.md), "
        "[a missing anchor](settings.md#nope), [a generated page](api.md#error-codes)\n"
    )
    result = _build(tmp_path, page)
    assert result.returncode != 0, result.stderr
    warnings = [line for line in result.stderr.splitlines() if line.startswith("WARNING")]
    # Exactly the two broken links fail it: the rest of the real site builds clean.
    assert len(warnings) == 2, warnings
    assert "no-such-page.md" in warnings[0] or "no-such-page.md" in warnings[1]
    assert any("#nope" in line for line in warnings), warnings


# An event type as a string literal in Lua or Python: 'call.cut', "wallet.spend_spike", ...
EVENT_LITERAL = re.compile(r"""["'](call|wallet|number|transaction|workspace)\.([a-z_]+)["']""")


def test_every_event_the_code_emits_is_in_the_design_contract() -> None:
    sources = [*ROOT.glob("lua/*.lua"), *ROOT.glob("gate/**/*.py")]
    emitted = {
        f"{m[1]}.{m[2]}" for path in sources for m in EVENT_LITERAL.finditer(path.read_text())
    }
    assert "call.cut" in emitted  # the pattern finds them
    design = (ROOT / "docs" / "design.md").read_text()
    missing = sorted(kind for kind in emitted if f"| `{kind}` |" not in design)
    assert missing == [], "add them to the event table of §5 (or, audit actions, §9's table)"


def test_every_design_section_the_code_names_exists() -> None:
    sources = [
        path
        for folder in ("gate", "lua", "tests", "loadtest")
        for path in (ROOT / folder).rglob("*")
        if path.suffix in {".py", ".lua", ".toml"}
    ]
    named = {
        int(m[1])
        for path in sources
        for m in re.finditer(r"(?:DESIGN|design\.md) ?§(\d+)", path.read_text())
    }
    assert named, "the pattern finds the references"
    design = (ROOT / "docs" / "design.md").read_text()
    missing = sorted(n for n in named if f"{{#s{n}}}" not in design)
    assert missing == [], "a comment names a section docs/design.md does not have"
    outside = [str(p.relative_to(ROOT)) for p in sources if "DESIGN" in p.read_text()
               and p.name != "test_docs.py"]  # fmt: skip
    assert outside == [], "point them at docs/design.md: the contract lives in the repository"
