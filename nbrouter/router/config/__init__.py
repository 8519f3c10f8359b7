"""Loading and validating the configuration, writing combos back to its file, editing them, zero-config discovery."""
