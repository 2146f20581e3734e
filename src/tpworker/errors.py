"""The base of every error that stops the worker at start with a message the user can act on
(bad variable, impossible parallel plan, model not found, engine refused the configuration).
Kept free of imports so the start-up path can catch these before vLLM is loaded."""


class StartRefused(Exception):
    """The worker cannot start as configured; str(error) says what to change, one line per problem."""
