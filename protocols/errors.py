"""Errors raised for bad latent messages: one family, rooted at ``ProtocolError``.

Every problem with an input (bytes off the wire, or fields given to ``LatentMessage``)
raises a subclass of ``ProtocolError`` whose message says what was wrong.
"""

from __future__ import annotations

__all__ = [
    "ChecksumMismatch",
    "FingerprintMismatch",
    "InvalidPayload",
    "LimitExceeded",
    "MalformedMessage",
    "ProtocolError",
    "SignatureError",
    "UnsupportedKind",
    "UnsupportedVersion",
]


class ProtocolError(ValueError):
    """Base class: this input is not a valid latent message."""


class MalformedMessage(ProtocolError):
    """Bytes or fields that do not follow the format (bad magic, truncation, wrong types, ...)."""


class UnsupportedVersion(ProtocolError):
    """The message's major format version is not one this reader understands."""


class ChecksumMismatch(ProtocolError):
    """The payload's SHA-256 does not match the checksum in the header."""


class SignatureError(ProtocolError):
    """The HMAC-SHA256 signature is missing when required, or does not verify."""


class LimitExceeded(ProtocolError):
    """A declared or actual size is above the reader's ``Limits``."""


class FingerprintMismatch(ProtocolError):
    """The message was produced by a different compression head than expected."""


class InvalidPayload(ProtocolError):
    """The payload decodes to forbidden values (NaN/Inf, int8 -128, invalid UTF-8)."""


class UnsupportedKind(ProtocolError):
    """A valid message of a kind this reader does not take (its ``link.Description`` lists the kinds it reads)."""
