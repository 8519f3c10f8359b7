"""pytest fixtures: `provider_simulator`, a running ProviderSimulator for one test."""
