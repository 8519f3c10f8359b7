"""Zero-config, for a Router without a config file: the providers whose key variables are set, and the
local servers listening on their default ports (`providers/discovery.py` probes them).

The key variables are looked at again at most once per `env_recheck_s`, so a key set during the session
(`os.environ[...] = ...` in a cell) is used at once; the ports are probed again once the last probe is
`local_probe_refresh_s` old. With a config file, the file is all there is and nothing here runs.
"""

from __future__ import annotations

from ..._core import Clock
from ...providers.discovery import find_local_servers
from .loading import environment_providers, local_provider
from ..decide.decider import Decider
from ..model import Config


class Discovery:
    """What zero-config has found of a Router's providers, and when it looks again."""

    def __init__(self, config: Config, decider: Decider, clock: Clock) -> None:
        self._decider = decider
        self._clock = clock
        self.done = False
        #: when the local ports were last probed (monotonic), None before the first probe
        self.probed_at: float | None = None
        self._env_checked_at = float("-inf")
        self.reset(config)

    def reset(self, config: Config) -> None:
        """A config was (re)loaded: from the environment, probe the local ports before the next call."""
        self.done = config.source != "environment"

    def due(self, config: Config) -> bool:
        """Add the providers of key variables set since the last look, when it is time to look; True when
        the local ports are to be probed (first, or again)."""
        if config.source == "environment":
            self._notice_environment(config)
        return not self.done

    async def probe(self, config: Config) -> None:
        """Probe the local ports: the first time, or again (past the probe cache) when probed before."""
        await self.discover(config, refresh=self.probed_at is not None)

    async def discover(self, config: Config, *, refresh: bool = False) -> None:
        """Add the local servers listening to `config` (from the environment only); `refresh`: probe again."""
        if config.source != "environment" or (self.done and not refresh):
            return
        for server in await find_local_servers(refresh=refresh):
            if server.preset not in config.providers:
                config.providers[server.preset] = local_provider(server.preset, server.base_url, server.models)
        self._decider.forget()
        self.done = True
        self.probed_at = self._clock.monotonic()

    def _notice_environment(self, config: Config) -> None:
        now = self._clock.monotonic()
        if now - self._env_checked_at < config.policy.env_recheck_s:
            return
        self._env_checked_at = now
        found = environment_providers()
        added = [name for name in found if name not in config.providers]
        for name in added:
            config.providers[name] = found[name]
        if added:
            self._decider.forget()
        if self.probed_at is not None and now - self.probed_at >= config.policy.local_probe_refresh_s:
            self.done = False
