"""Random provider behaviour for chaos runs: the chaos test and `benchmarks/bench_chaos.py` draw from it."""

from __future__ import annotations

import random

from .behaviours import Behaviour, CutStream, Drop, Empty, Hang, Malformed, RateLimited, Raw, Reply, ServerError, Unauthorized

#: bodies on a 200 that no protocol can read
GARBLED = ('{"choices":["x"]}', '{"choices":[{"message":5}]}', "[]", "{", '{"usage":{"prompt_tokens":"abc"}}')


def random_behaviour(rng: random.Random, reply_share: float = 0.5) -> Behaviour:
    """One behaviour: a good reply `reply_share` of the time, else one of the ways a provider misbehaves
    (429s with and without Retry-After, 5xx, a rare 401, hangs, drips, cuts, garbled JSON, empty bodies,
    dropped connections), drawn from `rng`."""
    if rng.random() < reply_share:
        return Reply()
    choices = [
        lambda: RateLimited(retry_after=0.02),
        lambda: RateLimited(),
        lambda: ServerError(rng.choice([500, 502, 503, 504])),
        lambda: Unauthorized() if rng.random() < 0.1 else ServerError(500),
        lambda: Hang(2.0),
        lambda: Reply("drip " * 20, tokens_per_s=4),
        lambda: CutStream(after_chunks=rng.randint(0, 2)),
        lambda: Malformed(),
        lambda: Raw(200, rng.choice(GARBLED)),
        lambda: Empty(),
        lambda: Drop(),
    ]
    return rng.choice(choices)()
