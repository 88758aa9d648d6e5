"""The errors latentcomm raises for inputs it refuses: one root, ``LatentcommError``.

``except LatentcommError`` catches any of them. Each also keeps the built-in base it had before
(``ValueError`` for bad latents and heads, ``RuntimeError`` for delivery), so existing handlers still work.
Bad wire bytes raise the protocol's own family, ``latentcomm.protocols.ProtocolError``: ``protocols/`` depends
only on msgpack and numpy.
"""
from __future__ import annotations

__all__ = ["ConflictingMessageError", "HeadMismatchError", "LatentError", "LatentcommError", "NoReplicaError",
           "OrderingError", "RequestError", "UsageError"]


class LatentcommError(Exception):
    """Root of every error latentcomm raises for an input or a state it refuses."""


class LatentError(LatentcommError, ValueError):
    """A latent that cannot be used here: wrong shape or dtype, non-finite values, or another head/backbone."""


class HeadMismatchError(LatentcommError, ValueError):
    """A head (or latent) used with a backbone or head it was not made for, or a corrupted head file."""


class NoReplicaError(LatentcommError, RuntimeError):
    """A call could not be served: its retries ran out (replicas dead for good) or the pool was shut down."""


class OrderingError(LatentcommError, RuntimeError):
    """A message waited too long for an earlier message of its conversation that never arrived."""


class ConflictingMessageError(LatentcommError, ValueError):
    """A message that reuses the id of an earlier message with other content (a true re-send is the same bytes)."""


class UsageError(LatentcommError, ValueError):
    """A command-line flag or input file a command refuses; ``latentcomm`` reports it in one line."""


class RequestError(LatentcommError, RuntimeError):
    """A ``latentcomm serve`` server refused a request (``status``: the HTTP code; the message: its reason)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(status, message)
        self.status = status
        self.reason = message

    def __str__(self) -> str:
        return f"HTTP {self.status}: {self.reason}"
