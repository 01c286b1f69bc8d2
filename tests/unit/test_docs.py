"""The docs name files and modules that exist: every path and dotted name of the project they quote resolves."""

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCS = ["README.md", "models/README.md"]
PACKAGES = ("api", "bench", "cli", "config", "demo", "dev", "engine", "feature_repo", "flows", "jobs", "models", "store",
            "tests")  # fmt: skip
#: Folders a run creates (the model's artifacts, the Feast data): quoted as where things land, not as code.
MADE_BY_RUNS = ("models/artifacts", "feature_repo/data", "tests/.")
QUOTED = re.compile(r"`([^`\n]+)`")
_TOP = "|".join(PACKAGES)
PATH = re.compile(rf"^(?:{_TOP})/[\w./-]*$")
DOTTED = re.compile(rf"^((?:{_TOP})(?:\.\w+)+)")


def _quoted(doc: str) -> list[str]:
    return QUOTED.findall((ROOT / doc).read_text())


def _resolves(dotted: str) -> bool:
    """``store.feast.open_store`` resolves if store/feast.py defines open_store (or store/feast/ is a package)."""
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        base = ROOT.joinpath(*parts[:cut])
        module = base.with_suffix(".py") if base.with_suffix(".py").is_file() else base / "__init__.py"
        if not module.is_file():
            continue
        rest = parts[cut:]
        if not rest:
            return True
        text = module.read_text()
        return bool(
            re.search(
                rf"^\s*(?:def|class|async def)\s+{rest[0]}\b|^{rest[0]}\s*[:=]|\bimport .*\b{rest[0]}\b", text, re.M
            )
        )
    return False


@pytest.mark.parametrize("doc", DOCS)
def test_every_quoted_path_exists(doc):
    paths = [q for q in _quoted(doc) if PATH.match(q) and not q.startswith(MADE_BY_RUNS)]
    assert paths, f"{doc} quotes no project path: the pattern is wrong"
    missing = [p for p in paths if not (ROOT / p.rstrip("/")).exists()]
    assert not missing, f"{doc} names paths that do not exist: {missing}"


@pytest.mark.parametrize("doc", DOCS)
def test_every_quoted_module_resolves(doc):
    names = [m.group(1) for q in _quoted(doc) if (m := DOTTED.match(q)) and not q.startswith("models.artifacts")]
    missing = sorted({n for n in names if not _resolves(n)})
    assert not missing, f"{doc} names modules or functions that do not exist: {missing}"


def test_the_development_tree_names_folders_that_exist():
    readme = (ROOT / "README.md").read_text()
    tree = re.findall(r"^([a-z_]+/)\s{2,}\S", readme, re.M)
    assert len(tree) >= 8, "the README's layout tree is gone or the pattern is wrong"
    missing = [folder for folder in tree if not (ROOT / folder).is_dir()]
    assert not missing, f"the README's layout names folders that do not exist: {missing}"
