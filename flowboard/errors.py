"""Flowboard's exceptions.

FlowboardError
 ├── ConfigError            bad flag / environment value / key file: stop at start-up
 ├── MalformedMessage       a feed message we cannot use: counted and skipped
 ├── ProtocolError          a client frame that is not a valid v2 command
 ├── BadRequest             an HTTP request parameter the API cannot use: answered with 400
 └── StoreError             the database refused or is unreachable
"""


class FlowboardError(Exception):
    """Root of every error Flowboard raises on purpose."""


class ConfigError(FlowboardError):
    """The configuration cannot work; the message says what to fix."""


class MalformedMessage(FlowboardError):
    """A feed message that is not a usable trade; the message says what was expected and what came."""


class ProtocolError(FlowboardError):
    """A client sent something that is not a valid command."""


class BadRequest(FlowboardError):
    """An HTTP request's parameter is not what the API takes; the message says what it expected
    and what came, in words a client's author can act on (never a Python internal)."""


class StoreError(FlowboardError):
    """The trade store failed."""
