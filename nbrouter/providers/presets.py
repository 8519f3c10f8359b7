"""The provider presets: wire protocol, base URL, key variable and price-table id of the usual endpoints."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Preset:
    """Defaults for one well-known provider."""

    name: str
    protocol: str
    base_url: str
    api_key_env: tuple[str, ...] = ()
    local: bool = False
    #: the provider id genai-prices knows it by (None: let it guess from the model name)
    prices_id: str | None = None
    #: models offered when the provider comes from an environment variable alone (zero-config)
    default_models: tuple[str, ...] = ()


PRESETS: dict[str, Preset] = {
    p.name: p
    for p in (
        Preset("openai", "openai", "https://api.openai.com/v1", ("OPENAI_API_KEY",), prices_id="openai", default_models=("gpt-4o-mini", "gpt-4.1-mini", "gpt-4o")),
        Preset("anthropic", "anthropic", "https://api.anthropic.com", ("ANTHROPIC_API_KEY",), prices_id="anthropic", default_models=("claude-haiku-4-5", "claude-sonnet-4-5")),
        Preset(
            "gemini", "gemini", "https://generativelanguage.googleapis.com/v1beta",
            ("GEMINI_API_KEY", "GOOGLE_API_KEY"), prices_id="google", default_models=("gemini-2.5-flash", "gemini-2.5-pro"),
        ),
        Preset("openrouter", "openai", "https://openrouter.ai/api/v1", ("OPENROUTER_API_KEY",), prices_id="openrouter", default_models=("openai/gpt-4o-mini", "anthropic/claude-sonnet-4.5")),
        Preset("groq", "openai", "https://api.groq.com/openai/v1", ("GROQ_API_KEY",), prices_id="groq", default_models=("llama-3.3-70b-versatile", "llama-3.1-8b-instant")),
        Preset("deepseek", "openai", "https://api.deepseek.com/v1", ("DEEPSEEK_API_KEY",), prices_id="deepseek", default_models=("deepseek-chat",)),
        Preset("mistral", "openai", "https://api.mistral.ai/v1", ("MISTRAL_API_KEY",), prices_id="mistral", default_models=("mistral-small-latest", "mistral-large-latest")),
        Preset("together", "openai", "https://api.together.xyz/v1", ("TOGETHER_API_KEY",), prices_id="together", default_models=("meta-llama/Llama-3.3-70B-Instruct-Turbo",)),
        Preset("xai", "openai", "https://api.x.ai/v1", ("XAI_API_KEY",), prices_id="x-ai", default_models=("grok-3-mini",)),
        Preset("glm", "openai", "https://open.bigmodel.cn/api/paas/v4", ("ZHIPUAI_API_KEY", "GLM_API_KEY")),
        Preset("ollama", "openai", "http://127.0.0.1:11434/v1", local=True),
        Preset("llamacpp", "openai", "http://127.0.0.1:8080/v1", local=True),
        Preset("vllm", "openai", "http://127.0.0.1:8000/v1", local=True),
        Preset("lmstudio", "openai", "http://127.0.0.1:1234/v1", local=True),
    )
}

PROTOCOLS = ("openai", "anthropic", "gemini")

#: the environment variables zero-config looks at, in the order providers are added
ENV_PRESETS = ("openai", "anthropic", "gemini", "openrouter", "groq", "deepseek", "mistral", "together", "xai")
#: local servers zero-config looks for on their default loopback ports
LOCAL_PRESETS = ("ollama", "llamacpp", "lmstudio", "vllm")
