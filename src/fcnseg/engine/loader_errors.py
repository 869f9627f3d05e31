"""Errors raised inside DataLoader worker processes, given back to the user as they were.

A :class:`~fcnseg.errors.FcnsegError` raised in a worker (a corrupt JPEG, a mask with bad
labels) crosses the process boundary as PyTorch's ``ExceptionWrapper``: only its type and
its formatted traceback travel, and ``reraise()`` builds ``type(msg)`` with ``msg`` =
``"Caught DataError in DataLoader worker process 2.\\nOriginal Traceback (most recent call
last): ..."`` -- about 25 lines where ``--workers 0`` prints one. The original message is
the last entry of that traceback text, ``"<module>.<QualName>: <message>"``; this module
recovers it, so the user sees the same one line whatever the number of workers.

Use :func:`unwrapped_batches` around a loader (train, validation, eval, bench), or
:func:`unwrap_worker_error` on a caught exception. Torch-free.
"""
from __future__ import annotations

import re
from typing import Iterable, Iterator, TypeVar

from fcnseg.errors import FcnsegError

T = TypeVar("T")

# The first line PyTorch puts in front of the traceback (torch/_utils.py, ExceptionWrapper).
_WRAPPED = re.compile(r"\ACaught \w+ in (DataLoader worker process \d+|pin memory thread[^.\n]*)\.\n")


def unwrap_worker_error(exc: BaseException) -> BaseException:
    """The exception a DataLoader worker raised, rebuilt with its own message; ``exc`` itself
    when it is not a wrapped :class:`FcnsegError` (other errors are bugs: their traceback is
    worth keeping)."""
    if not isinstance(exc, FcnsegError) or not exc.args or not isinstance(exc.args[0], str):
        return exc
    text = exc.args[0]
    if not _WRAPPED.match(text):
        return exc
    cls = type(exc)
    # The last "fcnseg.errors.DataError: " line (chained exceptions come before it).
    for prefix in (f"\n{cls.__module__}.{cls.__qualname__}: ", f"\n{cls.__qualname__}: "):
        at = text.rfind(prefix)
        if at >= 0:
            message = text[at + len(prefix):].strip()
            try:
                return cls(message)
            except TypeError:  # a subclass with another constructor signature: keep PyTorch's
                return exc
    return exc


def unwrapped_batches(loader: Iterable[T]) -> Iterator[T]:
    """Iterate ``loader``; an FcnsegError from a worker is re-raised with its original message.

    On any error the loader's workers are shut down first: they ignore SIGTERM (see
    :func:`fcnseg.engine.sampling.worker_init`), so multiprocessing's exit-time terminate-and-join
    of live (persistent) workers would otherwise wait for them forever.
    """
    it = iter(loader)
    while True:
        try:
            batch = next(it)
        except StopIteration:
            return
        except BaseException as e:
            shut_down_workers(loader, it)
            if not isinstance(e, FcnsegError):
                raise
            original = unwrap_worker_error(e)
            if original is e:
                raise
            raise original from None
        yield batch


def shut_down_workers(loader: object, it: object | None = None) -> None:
    """Stop the worker processes of ``loader``'s iterator ``it`` (default: the one a persistent
    loader keeps); a no-op for other iterables and for loaders without live workers."""
    it = getattr(loader, "_iterator", None) if it is None else it
    shutdown = getattr(it, "_shutdown_workers", None)  # torch's multi-process iterator
    if callable(shutdown):
        shutdown()
    if getattr(loader, "_iterator", None) is it:  # a persistent loader must not reuse it
        loader._iterator = None  # type: ignore[attr-defined]


__all__ = ["shut_down_workers", "unwrap_worker_error", "unwrapped_batches"]
