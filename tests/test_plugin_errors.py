"""Clear errors: missing plugins, duplicate claims, missing or broken model files."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import mistralrs_arch_llama.plugin
import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from mistralrs.errors import (
    ArchitectureNotFoundError,
    DuplicateArchitectureError,
    ModelFormatError,
    ModelNotFoundError,
)
from mistralrs.loading.model_loader import load_gguf, load_plain
from mistralrs.plugins import Architecture, PluginRegistry, default_registry, hookimpl, lazy
from tiny_models import save_hf_model


@pytest.fixture
def llama_only():
    """A registry holding only the Llama plugin, as if it were the only one installed."""
    registry = PluginRegistry(load_entry_points=False)
    registry.register_plugin(mistralrs_arch_llama.plugin, name="mistralrs-arch-llama")
    return registry


def test_missing_plugin_names_the_distribution_and_lists_installed(llama_only):
    with pytest.raises(ArchitectureNotFoundError) as err:
        llama_only.get("Mixtral")
    message = str(err.value)
    assert "pip install mistralrs-arch-mistral" in message
    assert "Installed architectures: Llama" in message


def test_unclaimed_hf_architecture(tmp_path, llama_only):
    (tmp_path / "config.json").write_text(json.dumps({"architectures": ["Qwen2ForCausalLM"]}))
    with pytest.raises(ArchitectureNotFoundError, match="pip install mistralrs-arch-qwen"):
        load_plain(str(tmp_path), registry=llama_only, progress=False)


def test_unknown_architecture_without_a_first_party_plugin(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"architectures": ["MadeUpForCausalLM"]}))
    with pytest.raises(ArchitectureNotFoundError, match="docs/plugins.md"):
        load_plain(str(tmp_path), progress=False)


def _plugin(arch_name: str):
    class Plugin:
        @hookimpl
        def register_architectures(self, register):
            register(Architecture(name=arch_name, parse_config=None, weight_mapper=None,
                                  build_model=None))
    return Plugin()


def test_duplicate_claim_names_both_plugins():
    registry = PluginRegistry(load_entry_points=False)
    registry.register_plugin(_plugin("Llama"), name="first-plugin")
    registry.register_plugin(_plugin("Llama"), name="second-plugin")
    with pytest.raises(DuplicateArchitectureError) as err:
        registry.get("Llama")
    assert "first-plugin" in str(err.value) and "second-plugin" in str(err.value)


def test_in_process_registration():
    registry = PluginRegistry(load_entry_points=False)
    registry.register_plugin(_plugin("Notebook"), name="notebook")
    assert registry.get("Notebook").provider == "notebook"
    with pytest.raises(ArchitectureNotFoundError):
        registry.get("Llama")


def test_missing_path():
    with pytest.raises(ModelNotFoundError, match="does not exist"):
        load_plain("/nonexistent/model/dir", progress=False)


def test_directory_without_config(tmp_path):
    with pytest.raises(ModelNotFoundError, match="no config.json"):
        load_plain(str(tmp_path), progress=False)


def test_hub_id_offline(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    with pytest.raises(ModelNotFoundError, match="HF_HUB_OFFLINE"):
        load_plain("some-org/some-model", progress=False)


@pytest.fixture
def tiny_llama_dir(tmp_path):
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=300, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=1)
    return save_hf_model(LlamaForCausalLM(config), tmp_path / "llama")


def test_truncated_safetensors(tiny_llama_dir):
    weights = tiny_llama_dir / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with pytest.raises(ModelFormatError, match="truncated"):
        load_plain(str(tiny_llama_dir), progress=False)


def test_explicit_architecture_that_does_not_fit(tiny_llama_dir):
    with pytest.raises(ModelFormatError, match="Llama"):
        load_plain(str(tiny_llama_dir), arch="ToyLM", progress=False)


def test_truncated_gguf(tmp_path):
    from mistralrs.default_model import default_model_path

    source = default_model_path().read_bytes()
    for size in (10, 5000, len(source) // 2):
        broken = tmp_path / f"broken{size}.gguf"
        broken.write_bytes(source[:size])
        with pytest.raises(ModelFormatError):
            load_gguf(str(broken.parent), broken.name, progress=False)


def test_mixtral_gguf_without_its_plugin(tmp_path, llama_only):
    from gguf import GGMLQuantizationType
    from transformers import MixtralConfig, MixtralForCausalLM

    from gguf_writer import write_llama_gguf

    config = MixtralConfig(vocab_size=288, hidden_size=32, intermediate_size=48,
                           num_hidden_layers=1, num_attention_heads=4, num_key_value_heads=2,
                           num_local_experts=4, num_experts_per_tok=2)
    write_llama_gguf(MixtralForCausalLM(config), tmp_path / "moe.gguf", GGMLQuantizationType.F32)
    with pytest.raises(ArchitectureNotFoundError, match="pip install mistralrs-arch-mistral"):
        load_gguf(str(tmp_path), "moe.gguf", registry=llama_only, progress=False)


def test_registry_imports_no_plugin_model_code():
    """Plugins name their config and model code lazily (`mistralrs.plugins.lazy`): finding the
    installed architectures imports none of it, and using one imports only its own."""
    script = (
        "import sys\n"
        "from mistralrs.plugins import default_registry\n"
        "registry = default_registry()\n"
        "def heavy(): return sorted(m for m in sys.modules if m.startswith('mistralrs_arch_')"
        " and m.endswith(('.config', '.model')))\n"
        "print(len(registry.architectures), heavy())\n"
        "try: registry.get('Llama').parse_config({}, 'hf')\n"
        "except Exception: pass\n"
        "print(heavy())\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          check=True)
    first, second = done.stdout.splitlines()
    count, before = first.split(" ", 1)
    assert int(count) >= 14 and before == "[]"
    assert second == "['mistralrs_arch_llama.config']"


def test_lazy_plugin_function_imports_on_first_call_and_names_a_bad_target():
    join = lazy("os.path:join")
    assert join("a", "b") == os.path.join("a", "b") and join.__name__ == "join"
    with pytest.raises(ValueError, match="module:function"):
        lazy("os.path.join")
    broken = lazy("mistralrs_no_such_plugin.model:build_model")  # fails only when called
    with pytest.raises(ImportError, match="reinstall the plugin"):
        broken({})
