"""Removing secrets (API keys, bearer tokens, `key=` query parameters) from any text we show or store.

Two nets: the exact value of every key nbrouter read (`remember_secret`), whatever its shape, and the
shapes of well-known keys and credential syntax. Text from a provider is scrubbed first and cut after
(`excerpt`): cutting first can leave the start of a key that no longer matches either net.
"""

from __future__ import annotations

import re
import threading

_PATTERNS = [
    # bearer tokens and x-api-key style header values
    (re.compile(r"(?i)(bearer\s+)[A-Za-z0-9._~+/=-]{6,}"), r"\1[redacted]"),
    (re.compile(r"(?i)((?:x-api-key|x-goog-api-key|api[_-]?key|authorization)[\"']?\s*[:=]\s*[\"']?)[^\s\"',;&]{6,}"), r"\1[redacted]"),
    (re.compile(r"(?i)([?&]key=)[^&\s\"']+"), r"\1[redacted]"),
    # well-known key shapes: sk-..., sk-ant-..., sk-or-..., AIza..., gsk_..., xai-..., hf_..., pplx-..., nvapi-..., r8_...
    (re.compile(r"\b(sk-(?:ant-|or-|proj-)?[A-Za-z0-9_-]{8,}|AIza[0-9A-Za-z_-]{20,}|gsk_[A-Za-z0-9]{10,}|xai-[A-Za-z0-9]{10,}"
                r"|hf_[A-Za-z0-9]{20,}|pplx-[A-Za-z0-9]{20,}|nvapi-[A-Za-z0-9_-]{20,}|r8_[A-Za-z0-9]{20,})"), "[redacted]"),
]

# a cheap first look: text without any of these cannot match a pattern above (most text a provider sends)
# (substring tests: a regex alternation costs several times more on the short ids scrubbed per answer)
_MARKERS = ("key", "auth", "bearer", "sk-", "aiza", "gsk_", "xai-", "hf_", "pplx-", "nvapi-", "r8_")

#: how much of a long text is scrubbed before an excerpt is cut from it. It is far longer than any key,
#: so a key split by the window's end starts well past the excerpt (even after the replacements before
#: it shortened the text), and the cost of scrubbing stays bounded whatever the provider sent.
SCRUB_WINDOW = 65536
#: the shortest value `remember_secret` keeps (shorter ones would redact ordinary words)
MIN_SECRET_CHARS = 4

# longest first, so that a key containing another is removed whole; a tuple swapped in one assignment, so
# that `scrub` on one thread never iterates a set that `remember_secret` grows on another
_known: tuple[str, ...] = ()
#: every value ever passed to remember_secret (what `_known` was built from)
_seen: set[str] = set()
_lock = threading.Lock()


def remember_secret(value: str | None) -> None:
    """Register a key value so that `scrub` removes it wherever it appears, whatever its shape.

    Args:
        value: the key as read (from the environment or a config file). Its whitespace-stripped form is
            remembered too, since that is what goes on the wire.
    """
    global _known
    if not value or value in _seen:  # the common case, once per request: one set lookup
        return
    with _lock:
        _seen.add(value)
        candidates = {v for v in (value, value.strip()) if len(v) >= MIN_SECRET_CHARS}
        _known = tuple(sorted(set(_known) | candidates, key=len, reverse=True))


def scrub(text: str | None) -> str:
    """The text with every known key and every key-shaped token replaced by `[redacted]`."""
    if not text:
        return text or ""
    for secret in _known:
        if secret in text:
            text = text.replace(secret, "[redacted]")
    low = text.lower()
    if not any(marker in low for marker in _MARKERS):
        return text
    for pattern, repl in _PATTERNS:
        text = pattern.sub(repl, text)
    return text


#: the shortest run of a known key's characters `scrub_pieces` removes
MIN_PIECE_CHARS = 8


def scrub_pieces(text: str | None) -> str:
    """`scrub`, and also every run of MIN_PIECE_CHARS or more characters of a known key (a key cut by
    someone else's excerpt): for text kept where others read it (the shared state's hold reasons)."""
    text = scrub(text)
    covered = [False] * len(text)
    hit = False
    for secret in _known:
        for start in range(len(secret) - MIN_PIECE_CHARS + 1):
            piece = secret[start:start + MIN_PIECE_CHARS]
            at = text.find(piece)
            while at >= 0:
                covered[at:at + MIN_PIECE_CHARS] = [True] * MIN_PIECE_CHARS
                hit = True
                at = text.find(piece, at + 1)
    if not hit:
        return text
    out, i = [], 0
    while i < len(text):
        if covered[i]:
            while i < len(text) and covered[i]:
                i += 1
            out.append("[redacted]")  # one marker for each run, however many pieces it joined
        else:
            out.append(text[i])
            i += 1
    return "".join(out)


def excerpt(text: str | None, limit: int) -> str:
    """At most `limit` characters from the start of `text`, secrets removed before the cut.

    Args:
        text: any text a provider sent (an error body, a malformed answer, a stream event).
        limit: the longest excerpt to keep, in characters.
    """
    if not text:
        return ""
    return scrub(text[: limit + SCRUB_WINDOW])[:limit]
