"""The bounds of the exporter's HTTP server (pymemcg.http_server), apart
from the server so that the command line reads its defaults without
importing it (ssl, email, http.client)."""

from __future__ import annotations

from dataclasses import dataclass

from .errors import BadServerLimit

DEFAULT_READ_TIMEOUT = 10.0       # seconds
DEFAULT_WRITE_TIMEOUT = 30.0      # seconds
DEFAULT_MAX_CONNECTIONS = 1000


@dataclass(frozen=True)
class Limits:
    """The server's bounds (what each bounds: pymemcg.http_server): timeouts in seconds
    (> 0), max_connections >= 1."""

    read_timeout: float = DEFAULT_READ_TIMEOUT
    write_timeout: float = DEFAULT_WRITE_TIMEOUT
    max_connections: int = DEFAULT_MAX_CONNECTIONS

    def __post_init__(self) -> None:
        for name in ("read_timeout", "write_timeout"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and 0 < value < float("inf")):
                raise BadServerLimit(f"{name} {value!r}: give a number of seconds > 0")
        if not isinstance(self.max_connections, int) or self.max_connections < 1:
            raise BadServerLimit(f"max_connections {self.max_connections!r}: give a whole "
                                 f"number >= 1")
