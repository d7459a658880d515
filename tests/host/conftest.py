from __future__ import annotations

from r2moe_testkit.host_fixtures import host, tiny

__all__ = ["host", "tiny"]
