"""`auto` scoring: multi-factor scores over the pool, mode packs, exploration (routing.md section 4)."""

from __future__ import annotations

#: mode packs replace the default weights; each row sums to 1 (routing.md section 4)
PACKS: dict[str, dict[str, float]] = {
    "ship-fast": {"quota": 0.15, "health": 0.30, "cost": 0.05, "latency": 0.35, "task_fit": 0.10, "stability": 0.0, "tier": 0.05},
    "cost-saver": {"quota": 0.15, "health": 0.20, "cost": 0.40, "latency": 0.05, "task_fit": 0.10, "stability": 0.05, "tier": 0.05},
    "quality-first": {"quota": 0.10, "health": 0.20, "cost": 0.05, "latency": 0.05, "task_fit": 0.40, "stability": 0.15, "tier": 0.05},
    "offline-friendly": {"quota": 0.40, "health": 0.30, "cost": 0.10, "latency": 0.05, "task_fit": 0.0, "stability": 0.10, "tier": 0.05},
}
