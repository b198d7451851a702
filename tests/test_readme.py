"""The README's reference tables and links stay true to the code."""

from __future__ import annotations

import re
from pathlib import Path

from metrics.app import MetricsSettings
from registry.app import RegistrySettings
from shared import errors
from shared.settings import SHARED_FIELDS, ServiceSettings
from training.app import TrainingSettings
from visits.app import VisitsSettings

REPO = Path(__file__).resolve().parents[1]
README = (REPO / "README.md").read_text(encoding="utf-8")
SLUG = re.compile(r'slug="([a-z0-9-]+)"|PROBLEM_BASE \+ "([a-z0-9-]+)"|_problem\(\s*\d+,\s*"([a-z0-9-]+)"')


def problem_slugs() -> set[str]:
    """Every problem type the code can answer with (literal slugs; ``http-<status>`` is dynamic)."""
    sources = [*(REPO / "shared/src/shared").rglob("*.py"), *(REPO / "services").glob("*/*/*.py")]
    found = {m for p in sources for groups in SLUG.findall(p.read_text(encoding="utf-8")) for m in groups if m}
    defaults = {
        cls.slug
        for cls in vars(errors).values()
        if isinstance(cls, type) and issubclass(cls, errors.ProblemError) and cls is not errors.ProblemError
    }
    return found | defaults


def test_every_problem_type_is_listed() -> None:
    slugs = problem_slugs()
    assert len(slugs) > 40  # the scan found the services' slugs, not only the defaults
    missing = sorted(s for s in slugs if f"`{s}`" not in README)
    assert not missing, f"add these to README's Problem types: {missing}"


def test_every_setting_is_in_the_configuration_table() -> None:
    fields = set()
    for cls in (ServiceSettings, RegistrySettings, VisitsSettings, TrainingSettings, MetricsSettings):
        fields |= set(cls.model_fields)
    missing = sorted(f for f in fields if f"`{f}`" not in README)
    assert not missing, f"add these to README's Configuration table: {missing}"
    rows = {m.group(1): m.group(0) for m in re.finditer(r"^\| `([a-z_]+)`[^\n]*", README, re.MULTILINE)}
    for name in SHARED_FIELDS:
        assert "| yes" in rows[name], f"{name} is shared (BRIDGE_{name.upper()}): say so in its row"


def test_local_links_point_inside_the_repository() -> None:
    for doc in (REPO / "README.md", REPO / "CONTRIBUTING.md", REPO / "docs/DOMAIN.md"):
        text = doc.read_text(encoding="utf-8")
        for target in re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", text):
            if target.startswith(("http://", "https://", "mailto:")):
                continue
            path = (doc.parent / target).resolve()
            assert path.is_relative_to(REPO), f"{doc.name} links outside the repository: {target}"
            assert path.exists(), f"{doc.name} links to a missing file: {target}"
    assert "](docs/DOMAIN.md)" in README
