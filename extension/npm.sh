#!/usr/bin/env bash
# What the Python build runs for npm (pyproject.toml, [tool.hatch.build.hooks.jupyter-builder]): the
# builder always asks for `npm install`, which may rewrite package-lock.json; `npm ci` installs exactly
# what the lockfile says and never writes it, so an install leaves the checkout clean.
if ! command -v npm > /dev/null; then
    echo "nbrouter: npm (Node.js 20) was not found, so the JupyterLab extension was NOT built;" \
         "everything else works. Install Node.js 20 and npm, then run the pip install again." >&2
    exit 1
fi
if [ "${1:-}" = "install" ]; then
    shift
    exec npm ci --no-audit --no-fund "$@"
fi
exec npm "$@"
