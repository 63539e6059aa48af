"""What the README and docs write as ``ap.<name>`` is importable from ``apprentice``."""

from __future__ import annotations

import re
from pathlib import Path

import apprentice as ap

ROOT = Path(__file__).resolve().parents[1]


def test_every_public_name_resolves():
    missing = [name for name in ap.__all__ if not hasattr(ap, name)]
    assert not missing, missing
    assert ap.LocalLM.__name__ == "LocalLM" and ap.VLLMLM.__name__ == "VLLMLM"


def test_every_name_the_docs_use_exists():
    texts = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    used = {m for path in texts for m in re.findall(r"\bap\.([A-Za-z_]\w*)", path.read_text())}
    assert used, "the README shows no ap.<name> at all"
    missing = sorted(name for name in used if not hasattr(ap, name))
    assert not missing, f"the docs use ap.{missing} which apprentice does not have"
