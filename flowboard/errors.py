"""Flowboard's exceptions: every error the project raises on purpose, in one tree.

FlowboardError
 ├── ConfigError            bad flag / environment value / key file: stop at start-up
 ├── MalformedMessage       a feed message we cannot use: counted and skipped
 ├── ProtocolError          a client frame that is not a valid v2 (or v1) command
 ├── DecodeError            a server frame that does not follow docs/protocol.md (our decoder)
 ├── DeflateOfferError      a permessage-deflate offer RFC 7692 says to decline
 ├── BadRequest             an HTTP request parameter the API cannot use: answered with 400
 ├── StoreError             the database refused or is unreachable
 │    └── TradesRejected    it refused the rows themselves: retrying them cannot help
 ├── RestUnavailable        Kalshi's REST API kept failing or refused a request
 ├── StreamFormatError      a Redis stream entry or snapshot this version cannot read
 └── ChildDumpError         the forked child that serialises a snapshot failed

Anything else escaping a handler is a bug, and is reported as one (a 500, a traceback), never
dressed up as the client's mistake.
"""


class FlowboardError(Exception):
    """Root of every error Flowboard raises on purpose."""


class ConfigError(FlowboardError):
    """The configuration cannot work; the message says what to fix."""


class MalformedMessage(FlowboardError):
    """A feed message that is not a usable trade; the message says what was expected and what came."""


class ProtocolError(FlowboardError):
    """A client sent something that is not a valid command."""


class DecodeError(FlowboardError):
    """A frame that does not follow docs/protocol.md."""


class DeflateOfferError(FlowboardError):
    """A permessage-deflate offer that RFC 7692 says to decline; the message says what was wrong."""


class BadRequest(FlowboardError):
    """An HTTP request's parameter is not what the API takes; the message says what it expected
    and what came, in words a client's author can act on (never a Python internal)."""


class StoreError(FlowboardError):
    """The trade store failed."""


class TradesRejected(StoreError):
    """The database refused the rows themselves (a constraint, a value out of range): unlike an
    outage, retrying the same trades cannot help."""


class RestUnavailable(FlowboardError):
    """Kalshi's REST API kept failing (not 429: those are waited out), or refused a request."""

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status  # the HTTP status of a refusal (4xx), None after repeated failures


class StreamFormatError(FlowboardError):
    """A stream entry or snapshot that this version cannot read; the message says what came."""


class ChildDumpError(FlowboardError):
    """The child that serialised the state failed; the message says how it ended."""
