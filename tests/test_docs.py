"""The documentation site: every page's Python blocks run, generated pages are fresh, the API is documented.

docs/guides/new-domain.md, docs/guides/serving.md and docs/guides/trainer.md run in tests/test_guides.py (against a
loopback Hub) and README.md in tests/test_readme_and_recipe.py; every other page's ```python
blocks run here, in order, one page at a time in its own namespace and temporary folder (in
this process: a fresh interpreter per page would double the time these tests take).
"""

import doctest
import importlib
import inspect
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

import mlora_peft

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
RUN_ELSEWHERE = {"guides/new-domain.md", "guides/serving.md", "guides/trainer.md",
                 "guides/diagnose.md"}  # tests/test_guides.py
PAGES = sorted(p.relative_to(DOCS).as_posix() for p in DOCS.rglob("*.md"))


def python_blocks(page: Path) -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", page.read_text(), flags=re.S | re.M)


@pytest.mark.parametrize("page", [p for p in PAGES if p not in RUN_ELSEWHERE and python_blocks(DOCS / p)])
def test_page_examples_run(page, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code = "\n\n".join(python_blocks(DOCS / page))
    exec(compile(code, f"docs/{page}", "exec"), {"__name__": f"docs_{Path(page).stem}"})


def test_guides_with_code_are_run_somewhere():
    assert all(python_blocks(DOCS / page) for page in RUN_ELSEWHERE)


def run_generator(script: str, *args: str) -> subprocess.CompletedProcess:
    """Run a docs/ generator as the command line it is, importing the same mlora_peft as this test."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(mlora_peft.__file__).parents[1]),
                                                        os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([sys.executable, str(DOCS / script), *args], capture_output=True, text=True, env=env,
                          cwd=ROOT)


def test_config_reference_is_fresh():
    """`python docs/gen_config_reference.py --check` (docs/models.md: tests/test_model_params.py)."""
    checked = run_generator("gen_config_reference.py", "--check")
    assert checked.returncode == 0, f"stale page: run python docs/gen_config_reference.py\n{checked.stderr[-2000:]}"


def test_architecture_figure_generator_runs(tmp_path):
    out = tmp_path / "architecture.png"
    subprocess.run([sys.executable, str(DOCS / "gen_figures.py"), "--out", str(out)], check=True, cwd=ROOT)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (DOCS / "images" / "architecture.png").exists()


def test_every_public_name_has_an_example_and_is_in_the_api_reference():
    reference = (DOCS / "reference" / "api" / "mlora_peft.md").read_text()
    assert "::: mlora_peft\n" in reference  # renders every name in mlora_peft.__all__
    for name in mlora_peft.__all__:
        doc = inspect.getdoc(getattr(mlora_peft, name)) or ""
        assert "Example:" in doc and ">>>" in doc, f"mlora_peft.{name}'s docstring has no Example: section"


@pytest.mark.parametrize("module", sorted({getattr(mlora_peft, n).__module__ for n in mlora_peft.__all__}))
def test_public_doctests_pass(module):
    result = doctest.testmod(importlib.import_module(module), optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.failed == 0


def test_api_reference_covers_the_documented_modules():
    pages = {p.stem: p.read_text() for p in (DOCS / "reference" / "api").glob("*.md")}
    for module in ["models", "data", "export", "metrics", "evaluation", "trainer_utils", "features", "training"]:
        assert f"::: mlora_peft.{module}\n" in pages[module]


def test_fsdp_accelerate_config_loads():
    from accelerate.commands.config.config_args import ClusterConfig

    config = ClusterConfig.from_yaml_file(str(ROOT / "recipes" / "configs" / "accelerate_fsdp.yaml"))
    assert config.distributed_type == "FSDP" and config.fsdp_config["fsdp_use_orig_params"]
