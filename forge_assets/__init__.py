"""Forge: fine-tunes a code model on your repositories and serves it.

Importing the package makes the process's umask at least 077 (forge_assets.private): every entry point of Forge
(the `forge` CLI, the Dagster code location and run workers, step subprocesses, the endpoint supervisor, the model
server) imports it before it writes anything, and every child it spawns (git, llama.cpp, the server) inherits it.
"""

from forge_assets.private import private_umask as _private_umask

_private_umask()
