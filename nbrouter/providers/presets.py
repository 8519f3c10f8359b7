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


PRESETS: dict[str, Preset] = {
    p.name: p
    for p in (
        Preset("openai", "openai", "https://api.openai.com/v1", ("OPENAI_API_KEY",), prices_id="openai"),
        Preset("anthropic", "anthropic", "https://api.anthropic.com", ("ANTHROPIC_API_KEY",), prices_id="anthropic"),
        Preset(
            "gemini", "gemini", "https://generativelanguage.googleapis.com/v1beta",
            ("GEMINI_API_KEY", "GOOGLE_API_KEY"), prices_id="google",
        ),
        Preset("openrouter", "openai", "https://openrouter.ai/api/v1", ("OPENROUTER_API_KEY",), prices_id="openrouter"),
        Preset("groq", "openai", "https://api.groq.com/openai/v1", ("GROQ_API_KEY",), prices_id="groq"),
        Preset("deepseek", "openai", "https://api.deepseek.com/v1", ("DEEPSEEK_API_KEY",), prices_id="deepseek"),
        Preset("mistral", "openai", "https://api.mistral.ai/v1", ("MISTRAL_API_KEY",), prices_id="mistral"),
        Preset("together", "openai", "https://api.together.xyz/v1", ("TOGETHER_API_KEY",), prices_id="together"),
        Preset("xai", "openai", "https://api.x.ai/v1", ("XAI_API_KEY",), prices_id="x-ai"),
        Preset("glm", "openai", "https://open.bigmodel.cn/api/paas/v4", ("ZHIPUAI_API_KEY", "GLM_API_KEY")),
        Preset("ollama", "openai", "http://127.0.0.1:11434/v1", local=True),
        Preset("llamacpp", "openai", "http://127.0.0.1:8080/v1", local=True),
        Preset("vllm", "openai", "http://127.0.0.1:8000/v1", local=True),
        Preset("lmstudio", "openai", "http://127.0.0.1:1234/v1", local=True),
    )
}

PROTOCOLS = ("openai", "anthropic", "gemini")
