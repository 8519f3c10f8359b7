"""Deciding one call: the decider and its skip checks, combos, strategies, auto scoring, pricing, the budget, token estimates."""
