"""The Jupyter and IPython side of nbrouter: the `%%llm` magics, how answers are displayed, the
session's cost ledger, and (imported on demand) the two widgets: builder.py and board.py. No HTTP and no
routing here: every call goes through Router methods.
"""
