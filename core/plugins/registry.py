"""Discovery of architecture plugins and lookup of the architecture a model needs."""
from __future__ import annotations

import dataclasses
import threading
from dataclasses import dataclass

import pluggy

from mistralrs.errors import ArchitectureNotFoundError, DuplicateArchitectureError
from mistralrs.plugins import hookspecs
from mistralrs.plugins.architecture import Architecture

# First-party plugin distributions, so that a missing plugin's error can say what to install.
# Keys: seed enum names, HF `architectures` strings and GGUF `general.architecture` values.
_FIRST_PARTY = {
    "mistralrs-arch-llama": ("Llama", "LlamaForCausalLM", "llama"),
    "mistralrs-arch-mistral": ("Mistral", "Mixtral", "MistralForCausalLM",
                               "MixtralForCausalLM"),
    "mistralrs-arch-gemma": ("Gemma", "Gemma2", "Gemma3", "GemmaForCausalLM",
                             "Gemma2ForCausalLM", "Gemma3ForCausalLM", "gemma", "gemma2", "gemma3"),
    "mistralrs-arch-phi": ("Phi2", "Phi3", "Phi3_5MoE", "PhiForCausalLM", "Phi3ForCausalLM",
                           "PhiMoEForCausalLM", "phi2", "phi3"),
    "mistralrs-arch-qwen": ("Qwen2", "Qwen3", "Qwen2ForCausalLM", "Qwen3ForCausalLM", "qwen2",
                            "qwen3"),
    "mistralrs-arch-starcoder": ("Starcoder2", "Starcoder2ForCausalLM", "starcoder2"),
    "mistralrs-arch-deepseek": ("DeepseekV2", "DeepseekV3", "DeepseekV2ForCausalLM",
                                "DeepseekV3ForCausalLM", "deepseek2"),
    "mistralrs-arch-vision": ("Phi3V", "Idefics2", "LLaVaNext", "LLaVa", "VLlama", "Qwen2VL",
                              "Idefics3", "MiniCpmO", "Phi4MM"),
    "mistralrs-arch-flux": ("Flux", "FluxOffloaded"),
}


def _install_hint(key: str) -> str:
    for dist, keys in _FIRST_PARTY.items():
        if key in keys or key.lower() in (k.lower() for k in keys):
            return f"install the plugin that provides it: `pip install {dist}`"
    return "install a plugin that provides it (see `docs/plugins.md` to write one)"


@dataclass(frozen=True)
class PluginInfo:
    name: str
    version: str
    architectures: tuple[Architecture, ...]


class PluginRegistry:
    """All architectures that the installed (and in-process) plugins register.

    `PluginRegistry()` finds the plugins installed under the `mistralrs.architectures`
    entry-point group; `load_entry_points=False` starts empty, for tests and notebooks that
    `register_plugin` their own.
    """

    def __init__(self, load_entry_points: bool = True):
        self._manager = pluggy.PluginManager(hookspecs.PROJECT)
        self._manager.add_hookspecs(hookspecs)
        if load_entry_points:
            self._manager.load_setuptools_entrypoints(hookspecs.ENTRY_POINT_GROUP)
        self._architectures: dict[str, Architecture] | None = None

    def register_plugin(self, plugin: object, name: str | None = None) -> None:
        """Register a plugin in-process (a module or object with `@hookimpl` functions)."""
        self._manager.register(plugin, name=name)
        self._architectures = None

    def _provider_names(self) -> dict[int, tuple[str, str]]:
        """id(plugin) -> (distribution or plugin name, version)."""
        names = {id(plugin): (self._manager.get_name(plugin) or repr(plugin), "")
                 for plugin in self._manager.get_plugins()}
        for plugin, dist in self._manager.list_plugin_distinfo():
            names[id(plugin)] = (dist.metadata["name"], dist.version)
        return names

    def _collect(self) -> dict[str, Architecture]:
        providers = self._provider_names()
        found: dict[str, Architecture] = {}
        for impl in self._manager.hook.register_architectures.get_hookimpls():
            provider = providers.get(id(impl.plugin), (impl.plugin_name, ""))[0]

            def register(arch: Architecture, provider=provider) -> None:
                if not isinstance(arch, Architecture):
                    raise TypeError(f"plugin {provider} registered {arch!r}, not an Architecture")
                if arch.name in found:
                    raise DuplicateArchitectureError(
                        f"architecture {arch.name!r} is registered by two plugins: "
                        f"{found[arch.name].provider} and {provider}; uninstall one of them")
                found[arch.name] = dataclasses.replace(arch, provider=provider)

            impl.function(register=register)
        return found

    @property
    def architectures(self) -> dict[str, Architecture]:
        if self._architectures is None:
            self._architectures = self._collect()
        return self._architectures

    def plugins(self) -> list[PluginInfo]:
        """Installed plugins with their versions and what each registers."""
        by_provider: dict[str, list[Architecture]] = {}
        for arch in self.architectures.values():
            by_provider.setdefault(arch.provider, []).append(arch)
        providers = self._provider_names()
        infos = []
        for name, version in sorted(set(providers.values())):
            archs = tuple(sorted(by_provider.get(name, ()), key=lambda a: a.name))
            infos.append(PluginInfo(name, version, archs))
        return infos

    def _not_found(self, what: str, key: str) -> ArchitectureNotFoundError:
        installed = ", ".join(sorted(self.architectures)) or "none"
        return ArchitectureNotFoundError(
            f"no installed plugin provides {what} {key!r}; {_install_hint(key)}. "
            f"Installed architectures: {installed}")

    def get(self, name: str) -> Architecture:
        """The architecture registered under a seed enum name such as `Llama`."""
        for arch_name, arch in self.architectures.items():
            if arch_name.lower() == name.lower():
                return arch
        raise self._not_found("the architecture", name)

    def for_hf_config(self, config: dict) -> Architecture:
        """The architecture claiming one of a `config.json`'s `architectures` strings."""
        claimed = config.get("architectures") or []
        for hf_name in claimed:
            for arch in self.architectures.values():
                if hf_name in arch.hf_architectures:
                    return arch
        if not claimed:
            raise ArchitectureNotFoundError(
                "config.json has no `architectures` entry; pass the architecture explicitly "
                "(e.g. `Which.Plain(..., arch=Architecture.Llama)`)")
        raise self._not_found("the Hugging Face architecture", claimed[0])

    def for_gguf(self, gguf_arch: str, config_view: dict | None = None) -> Architecture:
        """The architecture claiming a GGUF `general.architecture` value; among several, the
        one whose `gguf_matches` accepts the file's config view, else one without a predicate."""
        claimants = [a for a in self.architectures.values() if gguf_arch in a.gguf_architectures]
        matching = [a for a in claimants if a.gguf_matches and a.gguf_matches(config_view or {})]
        generic = [a for a in claimants if a.gguf_matches is None]
        if matching or generic:
            return (matching or generic)[0]
        raise self._not_found("the GGUF architecture", gguf_arch)


_default: PluginRegistry | None = None
_default_lock = threading.Lock()


def default_registry() -> PluginRegistry:
    """The process-wide registry of installed plugins, loaded on first use."""
    global _default
    with _default_lock:
        if _default is None:
            _default = PluginRegistry()
        return _default
