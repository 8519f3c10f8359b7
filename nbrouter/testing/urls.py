"""The simulator's base URL per protocol, one place for the in-process simulator and its process form.

Standard library only: a test's worker processes import `process.py`, which must stay cheap.
"""

from __future__ import annotations


class ProviderURLs:
    """The base URLs a client of the simulator is pointed at, from its root `url`."""

    @property
    def url(self) -> str:
        """`http://127.0.0.1:PORT`: the simulator gives it."""
        raise NotImplementedError

    @property
    def openai_url(self) -> str:
        """The OpenAI-compatible base URL (clients POST `{base}/chat/completions`)."""
        return self.url + "/v1"

    @property
    def anthropic_url(self) -> str:
        """The Anthropic base URL (clients POST `{base}/v1/messages`)."""
        return self.url

    @property
    def gemini_url(self) -> str:
        """The Gemini base URL (clients POST `{base}/models/{model}:generateContent`)."""
        return self.url + "/v1beta"

    @property
    def openrouter_url(self) -> str:
        """The OpenRouter base URL: OpenAI's format plus `usage.cost`, generation ids and the `models` fallback.

        With a `models` array the call walks it in order, each model taking its own scripted behaviour:
        an HTTP error (a `Failure`, or a `Raw` with status >= 400) moves on to the next model; anything
        else (a success, Empty, ContentFilter, or a transport fault) answers, with `model` set to the
        serving model. If every model fails, the last failure answers. One request is recorded.
        """
        return self.url + "/openrouter/v1"
