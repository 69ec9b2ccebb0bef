"""An example workspace tool: agents do not know what day it is, so they can ask.

Workspace tools are plain functions with type hints, registered with ``@tool``; a parameter
annotated ``ToolContext`` receives the call's context and is hidden from the model.
"""

from __future__ import annotations

from datetime import UTC, datetime
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from harness.errors import ToolError
from harness.tools import ToolContext, tool


@tool
def current_time(ctx: ToolContext, timezone: str | None = None) -> str:
    """The current date and time, with the weekday and the ISO week number.

    Args:
        timezone: An IANA time zone such as Europe/Paris; default: the workspace's time zone.
    """
    name = timezone or ctx.settings.timezone
    try:
        zone = ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ToolError(f"unknown time zone {name!r}; use an IANA name like Europe/Paris") from None
    now = datetime.now(UTC).astimezone(zone)
    week = now.isocalendar().week
    return f"{now:%Y-%m-%d %H:%M} {now:%A}, ISO week {week}, time zone {name}"
