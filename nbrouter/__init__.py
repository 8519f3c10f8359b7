"""nbrouter: LLM routing for Jupyter and IPython."""
__version__ = "0.1.0"
