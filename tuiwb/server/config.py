"""``CompanionConfig``: where the companion listens (torch- and fastapi-free; the CLI flags come from it)."""

from __future__ import annotations

from dataclasses import dataclass, field

from tuiwb.configs import flag
from tuiwb.errors import ParamError

LOOPBACK = ("127.0.0.1", "localhost", "::1")


@dataclass
class CompanionConfig:
    """The browser companion's socket."""

    host: str = field(default="127.0.0.1", metadata=flag(metavar="ADDR"))
    """Interface to listen on. Anything but loopback must be asked for, and warns: prefer 127.0.0.1 and
    an ssh -L tunnel."""
    port: int = field(default=8765, metadata=flag(metavar="P"))
    """TCP port of the companion (0 picks a free one)."""

    def __post_init__(self):
        if not isinstance(self.port, int) or not 0 <= self.port <= 65535:
            raise ParamError("port", f"{self.port!r} is not a port number (0-65535)")
        if not self.host or any(c.isspace() for c in self.host):
            raise ParamError("host", f"{self.host!r} is not an address")

    @property
    def loopback(self) -> bool:
        return self.host in LOOPBACK
