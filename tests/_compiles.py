"""Counting XLA compilations, for the tests that say something compiles nothing."""

import contextlib

import jax


@contextlib.contextmanager
def counting_compilations():
    """Inside the block, the list it yields gets one entry per XLA compilation."""
    compiles = []

    def listen(name, seconds, **kwargs):
        if name.endswith("backend_compile_duration"):
            compiles.append(name)

    jax.monitoring.register_event_duration_secs_listener(listen)
    try:
        yield compiles
    finally:
        jax.monitoring.unregister_event_duration_listener(listen)
