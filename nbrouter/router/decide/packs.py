"""The weights of `auto`: its factors, the mode packs, and what each virtual `auto...` combo changes.

Below config (which validates `pack` and `weights` against them) and scoring (which applies them).
"""

from __future__ import annotations

from dataclasses import dataclass

#: the factors of an `auto` score, in the order explain() shows them
FACTORS = ("health", "quota", "cost", "latency", "task_fit", "specificity", "stability", "tier", "tier_affinity")

#: mode packs replace the default weights; each row sums to 1 (routing.md section 4)
PACKS: dict[str, dict[str, float]] = {
    "ship-fast": {"quota": 0.15, "health": 0.30, "cost": 0.05, "latency": 0.35, "task_fit": 0.10, "stability": 0.0, "tier": 0.05},
    "cost-saver": {"quota": 0.15, "health": 0.20, "cost": 0.40, "latency": 0.05, "task_fit": 0.10, "stability": 0.05, "tier": 0.05},
    "quality-first": {"quota": 0.10, "health": 0.20, "cost": 0.05, "latency": 0.05, "task_fit": 0.40, "stability": 0.15, "tier": 0.05},
    "offline-friendly": {"quota": 0.40, "health": 0.30, "cost": 0.10, "latency": 0.05, "task_fit": 0.0, "stability": 0.10, "tier": 0.05},
}


@dataclass(frozen=True)
class Variant:
    """What a virtual `auto...` combo changes: its pack, a task to assume, its exploration rate constant."""

    pack: str | None
    task: str | None = None
    explore_rate: str = "auto_explore_rate"  # the name of the Policy constant


VARIANTS: dict[str, Variant] = {
    "auto": Variant(None),
    "auto/coding": Variant("quality-first", task="coding"),
    "auto/fast": Variant("ship-fast"),
    "auto/cheap": Variant("cost-saver"),
    "auto/smart": Variant("quality-first", explore_rate="auto_smart_explore_rate"),
    "auto/offline": Variant("offline-friendly"),
}

#: the names of the virtual combos (reserved: no saved combo may take one)
VIRTUAL_COMBOS = tuple(VARIANTS)
