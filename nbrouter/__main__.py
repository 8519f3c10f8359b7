"""The `nbrouter` command: `nbrouter demo` shows a combo falling back across simulated providers;
`nbrouter simulate` runs the provider simulator in the foreground so you can rehearse your own combos."""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Sequence


def _demo_config(sim_url: str) -> str:
    return f"""\
# Simulated providers: every one of them is the loopback simulator, with scripted failures.
[providers.fastco]
protocol = "openai"
base_url = "{sim_url}/v1"
api_key_env = "DEMO_FASTCO_KEY"

[providers.bigco]
protocol = "openai"
base_url = "{sim_url}/v1"

[[providers.bigco.accounts]]
name = "free"
api_key_env = "DEMO_BIGCO_FREE_KEY"
tier = "free"

[[providers.bigco.accounts]]
name = "work"
api_key_env = "DEMO_BIGCO_WORK_KEY"
tier = "pro"

[providers.slowco]
protocol = "openai"
base_url = "{sim_url}/v1"
api_key_env = "DEMO_SLOWCO_KEY"

[combos.everyday]
targets = ["fastco/gpt-4o-mini", "bigco/gpt-4o", "slowco/gpt-4.1-mini"]
"""


def demo(argv: Sequence[str] = ()) -> int:
    """Start the simulator standing in for three providers and send prompts through one combo."""
    from . import Router
    from .testing import ProviderSimulator, QuotaExceeded, RateLimited, Reply

    parser = argparse.ArgumentParser(prog="nbrouter demo", description=demo.__doc__)
    parser.parse_args(list(argv))
    print("nbrouter demo: these are SIMULATED providers (a loopback server on this machine), no keys, no network.")
    print("  fastco  - a rate-limited first tier (429 with Retry-After)")
    print("  bigco   - two accounts: 'free' is out of quota, 'work' answers")
    print("  slowco  - slow but steady (the last tier)\n")
    os.environ.setdefault("DEMO_FASTCO_KEY", "demo-fastco")
    os.environ.setdefault("DEMO_BIGCO_FREE_KEY", "demo-bigco-free")
    os.environ.setdefault("DEMO_BIGCO_WORK_KEY", "demo-bigco-work")
    os.environ.setdefault("DEMO_SLOWCO_KEY", "demo-slowco")
    with ProviderSimulator() as sim, tempfile.TemporaryDirectory(prefix="nbrouter-demo-") as tmp:
        sim.script([RateLimited(retry_after=20)], key="demo-fastco", model="gpt-4o-mini")
        sim.script([QuotaExceeded()], key="demo-bigco-free", repeat_last=True)
        sim.script([Reply("Paris is the capital of France.", tokens_per_s=400)], key="demo-bigco-work", model="gpt-4o")
        sim.script([Reply(delay_s=0.4)], key="demo-slowco", repeat_last=True)
        config = Path(tmp) / "config.toml"
        config.write_text(_demo_config(sim.url))
        router = Router(config, state_path=Path(tmp) / "state.sqlite3")
        try:
            total = 0.0
            prompts = ["What is the capital of France?", "And of Italy?", "And of Spain?"]
            for i, prompt in enumerate(prompts, 1):
                print(f"--- prompt {i}: {prompt}")
                result = router.complete("everyday", prompt, max_tokens=200)
                print(result.text)
                print(result.footer())
                print(result.attempt_table())
                print()
                total += float(result.cost_usd or 0)
            print(router.status())
            print(f"\nsession total: ${total:.6f}")
        finally:
            router.close()
    return 0


def simulate(argv: Sequence[str] = ()) -> int:
    """Run the provider simulator until Ctrl-C and print its URLs."""
    from .testing import ProviderSimulator

    parser = argparse.ArgumentParser(prog="nbrouter simulate", description=simulate.__doc__)
    parser.parse_args(list(argv))
    with ProviderSimulator() as sim:
        print(f"OpenAI-compatible: {sim.openai_url}\nAnthropic: {sim.anthropic_url}\nGemini: {sim.gemini_url}\nOpenRouter: {sim.openrouter_url}")
        print("Ctrl-C to stop.")
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            pass
    return 0


COMMANDS = {"demo": demo, "simulate": simulate}


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help") or args[0] not in COMMANDS:
        print("usage: nbrouter {demo,simulate} [options]\n")
        for name, fn in COMMANDS.items():
            print(f"  {name:10s} {(fn.__doc__ or '').splitlines()[0]}")
        return 0 if not args or args[0] in ("-h", "--help") else 2
    return COMMANDS[args[0]](args[1:])


if __name__ == "__main__":
    sys.exit(main())
