"""Known-bad recipes (tests/recipes_bad/) must fail to render or fail llcuda's checks, as documented."""

from __future__ import annotations

import re
import shutil
import sys
from pathlib import Path

import pytest
import yaml

pytest.importorskip("rattler_build", reason="needs the `conda` extra: pip install -e '.[conda]'")
from rattler_build import RattlerBuildError

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "scripts"))
import conda_recipe

CASES = sorted((REPO / "tests" / "recipes_bad").glob("*.yaml"))


def apply(case: dict, recipe_dir: Path) -> None:
    target = recipe_dir / case["file"]
    text = target.read_text(encoding="utf-8")
    for edit in case["replace"]:
        count = text.count(edit["old"])
        assert count == 1, f"{edit['old']!r} occurs {count} times in {case['file']}: update this case"
        text = text.replace(edit["old"], edit["new"])
    target.write_text(text, encoding="utf-8")


def test_cases_exist() -> None:
    assert len(CASES) >= 10


@pytest.mark.parametrize("path", CASES, ids=[p.stem for p in CASES])
def test_known_bad_recipe_is_rejected(path: Path, tmp_path: Path) -> None:
    case = yaml.safe_load(path.read_text(encoding="utf-8"))
    assert set(case) == {"why", "file", "replace", "expect", "stage"}, f"{path.name}: unexpected keys"
    recipe_dir = tmp_path / "recipe"
    shutil.copytree(REPO / "recipe", recipe_dir)
    apply(case, recipe_dir)

    if case["stage"] == "render":
        with pytest.raises(RattlerBuildError) as error:
            conda_recipe.render(recipe_dir)
    else:
        rendered = conda_recipe.render(recipe_dir)  # must render: the fault is llcuda's rule, not syntax
        with pytest.raises(conda_recipe.RecipeCheckError) as error:
            conda_recipe.check(rendered, recipe_dir=recipe_dir)
    assert re.search(case["expect"], str(error.value)), f"{path.name}: unexpected error:\n{error.value}"


def test_unedited_copy_passes(tmp_path: Path) -> None:
    """The harness itself: a copy of recipe/ without an edit renders and passes the checks."""
    recipe_dir = tmp_path / "recipe"
    shutil.copytree(REPO / "recipe", recipe_dir)
    conda_recipe.check(conda_recipe.render(recipe_dir), recipe_dir=recipe_dir)
