"""Batch work: one prompt over many items, the dispatcher, the executor port, the result."""
