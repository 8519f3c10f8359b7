"""What the router remembers: the backend port and its backends, the store, health (holds, breakers, latency), pacing."""
