"""Start moto in server mode with DMS dates as epoch seconds.

Usage: python moto_launcher.py -H 127.0.0.1 -p PORT   (arguments go to moto.server.main)

moto 5.x serialises DMS replication task and instance dates as ISO-8601 strings, but DMS is an
awsJson1_1 service whose timestamps are epoch seconds: the Rust aws-sdk-databasemigration then
fails to deserialise DescribeReplicationTasks / DescribeReplicationInstances. This launcher wraps
the two to_dict methods so every date field becomes a number, then runs the normal moto server.
Checked against moto 5.2.5 (see tests/lab/requirements.txt).
"""

from __future__ import annotations

import functools
import sys
from datetime import datetime, timezone
from typing import Any, Callable

from moto.dms import models as dms_models
from moto.server import main as moto_main

# Date fields moto puts in FakeReplicationTask.to_dict (top level and ReplicationTaskStats)
# and FakeReplicationInstance.to_dict.
DATE_FIELDS = frozenset(
    {
        # FakeReplicationTask
        "ReplicationTaskCreationDate",
        "ReplicationTaskStartDate",
        # FakeReplicationTask ReplicationTaskStats
        "FreshStartDate",
        "StartDate",
        "StopDate",
        "FullLoadStartDate",
        "FullLoadFinishDate",
        # FakeReplicationInstance
        "InstanceCreateTime",
        "FreeUntil",
    }
)


def to_epoch(value: Any) -> Any:
    """ISO string or datetime -> epoch seconds (float); None and numbers pass through.

    moto's dates are naive UTC (moto.core.utils.utcnow), so a date without a zone is UTC.
    """
    if isinstance(value, str):
        value = datetime.fromisoformat(value.replace("Z", "+00:00"))
    if isinstance(value, datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=timezone.utc)
        return value.timestamp()
    return value


def epoch_dates(value: Any) -> Any:
    """Return VALUE with every DATE_FIELDS entry, at any depth, as epoch seconds."""
    if isinstance(value, dict):
        return {
            key: to_epoch(item) if key in DATE_FIELDS else epoch_dates(item)
            for key, item in value.items()
        }
    if isinstance(value, list):
        return [epoch_dates(item) for item in value]
    return value


def with_epoch_dates(to_dict: Callable[..., dict]) -> Callable[..., dict]:
    @functools.wraps(to_dict)
    def wrapper(self: Any, *args: Any, **kwargs: Any) -> dict:
        return epoch_dates(to_dict(self, *args, **kwargs))

    wrapper.dmsguard_patched = True  # type: ignore[attr-defined]
    return wrapper


def patch() -> None:
    for cls in (dms_models.FakeReplicationTask, dms_models.FakeReplicationInstance):
        if not getattr(cls.to_dict, "dmsguard_patched", False):
            cls.to_dict = with_epoch_dates(cls.to_dict)


if __name__ == "__main__":
    patch()
    moto_main(sys.argv[1:])
