"""Start moto in server mode with DMS dates as epoch seconds and an AWS-like control plane.

Usage: python moto_launcher.py -H 127.0.0.1 -p PORT   (arguments go to moto.server.main)

moto 5.x serialises DMS replication task and instance dates as ISO-8601 strings, but DMS is an
awsJson1_1 service whose timestamps are epoch seconds: the Rust aws-sdk-databasemigration then
fails to deserialise DescribeReplicationTasks / DescribeReplicationInstances. This launcher wraps
the two to_dict methods so every date field becomes a number, then runs the normal moto server.
Checked against moto 5.2.5 (see tests/lab/requirements.txt).

moto changes a task's status at once and never fails or throttles; AWS does all of that. The
launcher also makes the lab's control plane behave as the API reference says (see
tests/lab/README.md, "Control plane"), driven by a lab-only HTTP endpoint under /dmsguard-lab/:

- StopReplicationTask puts a running task in `stopping`; it reaches `stopped` after
  `stop_seconds` (API_StopReplicationTask, API_ReplicationTask "Status":
  https://docs.aws.amazon.com/dms/latest/APIReference/API_ReplicationTask.html).
- StartReplicationTask puts the task in `starting`; it reaches `running` after `start_seconds`.
  A start of a task that is not stopped, failed or ready (or moto's `creating`) answers
  InvalidResourceStateFault, as does a stop of a task that is not running.
- A task can fail now or at the end of its next stop: status `failed`, with `StopReason`
  (documented values such as "Stop Reason FATAL_ERROR") and `LastFailureMessage`.
- Operations (DescribeReplicationTasks, GetMetricData, …) can throttle for a number of calls
  and/or seconds: HTTP 400 ThrottlingException "Rate exceeded" (DMS Common Errors:
  https://docs.aws.amazon.com/dms/latest/APIReference/CommonErrors.html).
- Redshift clusters report NextMaintenanceWindowStartTime (by default the next start of their
  PreferredMaintenanceWindow) and DeferredMaintenanceWindows (API_Cluster:
  https://docs.aws.amazon.com/redshift/latest/APIReference/API_Cluster.html).

- Redshift Serverless GetCredentials, which moto does not serve: for a workgroup the lab
  endpoint created, a database user named after the calling identity (`IAM:<user>`, or
  `IAMR:<role>` for an assumed role, as drivers observe; the API reference does not spell the
  form out), a random temporary password and its expiration `durationSeconds` (900-3600,
  default 900) from now; an unknown workgroup answers ResourceNotFoundException, a duration out
  of range ValidationException
  (https://docs.aws.amazon.com/redshift-serverless/latest/APIReference/API_GetCredentials.html).
  Every answer is kept, so a test can read what was handed out.

Defaults keep moto's instant behaviour: stop_seconds = start_seconds = 0 unless set with the
endpoint or the DMSGUARD_LAB_DMS_STOP_SECONDS / DMSGUARD_LAB_DMS_START_SECONDS variables.
"""

from __future__ import annotations

import functools
import io
import json
import os
import sys
import threading
import time
import urllib.parse
from datetime import datetime, timedelta, timezone
from typing import Any, Callable

import moto.server
import secrets
from moto.core.models import DEFAULT_ACCOUNT_ID
from moto.dms import models as dms_models
from moto.dms.exceptions import InvalidResourceStateFault
from moto.moto_server.werkzeug_app import DomainDispatcherApplication
from moto.redshift import models as redshift_models
from moto.server import main as moto_main
from moto.sts import models as sts_models

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


# ---------------------------------------------------------------------------------------------
# Control plane: state the lab endpoint sets.


class Control:
    """What the lab endpoint configured; every field is guarded by LOCK."""

    def __init__(self) -> None:
        self.stop_seconds = float(os.environ.get("DMSGUARD_LAB_DMS_STOP_SECONDS", "0") or 0)
        self.start_seconds = float(os.environ.get("DMSGUARD_LAB_DMS_START_SECONDS", "0") or 0)
        # task identifier -> {"stop_reason", "message"}: fail at the end of the next stop.
        self.fail_on_stop: dict[str, dict[str, str]] = {}
        # operation -> {"calls": remaining or None, "until": monotonic deadline or None, "code"}
        self.throttles: dict[str, dict[str, Any]] = {}
        # operation -> number of calls answered with a throttling error
        self.throttled: dict[str, int] = {}
        # cluster identifier -> {"next_start": datetime | None (None: none pending), "deferred": [...]}
        self.maintenance: dict[str, dict[str, Any]] = {}
        # Redshift Serverless workgroup names GetCredentials answers for.
        self.workgroups: set[str] = set()
        # Every GetCredentials answer, oldest first (workgroup, dbName, dbUser, dbPassword, ...).
        self.serverless_credentials: list[dict[str, Any]] = []

    def snapshot(self) -> dict[str, Any]:
        return {
            "stop_seconds": self.stop_seconds,
            "start_seconds": self.start_seconds,
            "fail_on_stop": dict(self.fail_on_stop),
            "throttles": {
                op: {
                    "calls": t["calls"],
                    "seconds_left": None
                    if t["until"] is None
                    else max(0.0, t["until"] - time.monotonic()),
                    "code": t["code"],
                }
                for op, t in self.throttles.items()
            },
            "throttled": dict(self.throttled),
        }


CONTROL = Control()
LOCK = threading.RLock()
#: Statuses from which StartReplicationTask is accepted ("creating": moto never moves a new task
#: to "ready"; AWS's tasks are "ready" once created).
STARTABLE = frozenset({"ready", "stopped", "failed", "creating"})


def tick(task: Any) -> None:
    """Completes TASK's pending transition (stopping -> stopped/failed, starting -> running)
    once its time has come."""
    with LOCK:
        pending = getattr(task, "dmsguard_pending", None)
        if pending is None or time.monotonic() < pending["due"]:
            return
        task.dmsguard_pending = None
        task.status = pending["status"]
        if "stop_reason" in pending:
            task.dmsguard_stop_reason = pending["stop_reason"]
        if pending.get("message") is not None:
            task.dmsguard_failure_message = pending["message"]


def fail_now(task: Any, stop_reason: str, message: str) -> None:
    with LOCK:
        task.dmsguard_pending = None
        task.status = "failed"
        task.dmsguard_stop_reason = stop_reason
        task.dmsguard_failure_message = message
        task.stop_date = dms_models.utcnow()


def task_stop(self: Any) -> Any:
    with LOCK:
        tick(self)
        if self.status != "running":
            raise InvalidResourceStateFault(
                f"Replication task {self.id} is {self.status}, not running"
            )
        failure = CONTROL.fail_on_stop.pop(self.id, None)
        final: dict[str, Any] = {"status": "stopped", "stop_reason": None, "message": None}
        if failure is not None:
            final = {
                "status": "failed",
                "stop_reason": failure["stop_reason"],
                "message": failure["message"],
            }
        self.stop_date = dms_models.utcnow()
        self.dmsguard_stop_reason = None
        if CONTROL.stop_seconds > 0:
            self.status = "stopping"
            self.dmsguard_pending = dict(final, due=time.monotonic() + CONTROL.stop_seconds)
        else:
            self.dmsguard_pending = dict(final, due=0.0)
            tick(self)
        return self


def task_start(self: Any) -> Any:
    with LOCK:
        tick(self)
        if self.status not in STARTABLE:
            raise InvalidResourceStateFault(
                f"Replication task {self.id} is {self.status}; it can start only when stopped, failed or ready"
            )
        self.start_date = dms_models.utcnow()
        self.dmsguard_stop_reason = None
        if CONTROL.start_seconds > 0:
            self.status = "starting"
            self.dmsguard_pending = {
                "status": "running",
                "due": time.monotonic() + CONTROL.start_seconds,
            }
        else:
            self.dmsguard_pending = None
            self.status = "running"
        return self


def with_control_fields(to_dict: Callable[..., dict]) -> Callable[..., dict]:
    """Ticks the task first, then adds StopReason and LastFailureMessage when set."""

    @functools.wraps(to_dict)
    def wrapper(self: Any, *args: Any, **kwargs: Any) -> dict:
        tick(self)
        out = to_dict(self, *args, **kwargs)
        reason = getattr(self, "dmsguard_stop_reason", None)
        message = getattr(self, "dmsguard_failure_message", None)
        if reason:
            out["StopReason"] = reason
        if message:
            out["LastFailureMessage"] = message
        return out

    return wrapper


def with_tick_all(describe: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(describe)
    def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
        for task in list(self.replication_tasks.values()):
            tick(task)
        return describe(self, *args, **kwargs)

    return wrapper


# ---------------------------------------------------------------------------------------------
# Redshift maintenance schedule.

DAYS = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"]


def next_window_start(window: str, now: datetime) -> datetime | None:
    """The next start of a `ddd:hh24:mi-ddd:hh24:mi` window (UTC) after NOW; None if unparsable."""
    try:
        start = window.split("-")[0].lower()
        day, hh, mi = start.split(":")
        start_minute = DAYS.index(day) * 1440 + int(hh) * 60 + int(mi)
    except (ValueError, IndexError):
        return None
    monday = (now - timedelta(days=now.weekday())).replace(
        hour=0, minute=0, second=0, microsecond=0
    )
    candidate = monday + timedelta(minutes=start_minute)
    if candidate <= now:
        candidate += timedelta(days=7)
    return candidate


def cluster_next_start(self: Any) -> datetime | None:
    with LOCK:
        override = CONTROL.maintenance.get(self.cluster_identifier)
    if override is not None:
        return override["next_start"]
    return next_window_start(
        self.preferred_maintenance_window or "", datetime.now(timezone.utc).replace(tzinfo=None)
    )


def cluster_deferred(self: Any) -> list[dict[str, Any]]:
    with LOCK:
        override = CONTROL.maintenance.get(self.cluster_identifier)
    if override is None:
        return []
    return [
        {
            "DeferMaintenanceIdentifier": d["id"],
            "DeferMaintenanceStartTime": d["start"],
            "DeferMaintenanceEndTime": d["end"],
        }
        for d in override["deferred"]
    ]


# ---------------------------------------------------------------------------------------------
# Redshift Serverless GetCredentials (awsJson1_1, target RedshiftServerless.GetCredentials).

SERVERLESS_TARGET = "RedshiftServerless.GetCredentials"


def access_key_of(environ: dict[str, Any]) -> str:
    """The access key id in a SigV4 Authorization header ("" when there is none)."""
    auth = environ.get("HTTP_AUTHORIZATION", "")
    marker = "Credential="
    if marker not in auth:
        return ""
    return auth.split(marker, 1)[1].split("/", 1)[0]


def serverless_db_user(access_key: str) -> str:
    """IAMR:<role> for credentials of an assumed role, else IAM:<user> of the caller."""
    for backends in sts_models.sts_backends.values():
        for backend in backends.values():
            role = backend.get_assumed_role_from_access_key(access_key)
            if role is not None:
                # arn:aws:sts::ACCOUNT:assumed-role/ROLE/SESSION
                return "IAMR:" + role.arn.split(":assumed-role/", 1)[1].split("/", 1)[0]
    backend = sts_models.sts_backends[DEFAULT_ACCOUNT_ID]["aws"]
    _, arn, _ = backend.get_caller_identity(access_key, "us-east-1")
    return "IAM:" + arn.rsplit("/", 1)[-1]


def serverless_get_credentials(environ: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    length = int(environ.get("CONTENT_LENGTH") or 0)
    raw = environ["wsgi.input"].read(length) if length else b""
    request = json.loads(raw) if raw.strip() else {}
    workgroup = request.get("workgroupName")
    duration = request.get("durationSeconds", 900)
    if not workgroup and not request.get("customDomainName"):
        return 400, {
            "__type": "ValidationException",
            "message": "Either workgroupName or customDomainName must be provided",
        }
    if not isinstance(duration, int) or not 900 <= duration <= 3600:
        return 400, {
            "__type": "ValidationException",
            "message": f"durationSeconds {duration} is not between 900 and 3600",
        }
    with LOCK:
        if workgroup not in CONTROL.workgroups:
            return 400, {
                "__type": "ResourceNotFoundException",
                "message": f"Workgroup {workgroup} not found.",
                "resourceName": workgroup,
            }
        now = time.time()
        answer = {
            "dbUser": serverless_db_user(access_key_of(environ)),
            "dbPassword": secrets.token_urlsafe(24),
            "expiration": now + duration,
            "nextRefreshTime": now + duration,
        }
        CONTROL.serverless_credentials.append(
            dict(answer, workgroupName=workgroup, dbName=request.get("dbName"))
        )
    return 200, answer


def json_response(status: int, answer: Any, content_type: str, start_response: Any) -> list[bytes]:
    body = json.dumps(answer, default=str).encode()
    start_response(
        f"{status} {'OK' if status == 200 else 'Error'}",
        [("Content-Type", content_type), ("Content-Length", str(len(body)))],
    )
    return [body]


# ---------------------------------------------------------------------------------------------
# The lab endpoint and throttling, in front of moto's WSGI application.

PREFIX = "/dmsguard-lab/"


def parse_time(value: Any) -> datetime | None:
    """ISO-8601 or epoch seconds -> naive UTC datetime (moto's convention); None passes."""
    if value is None:
        return None
    if isinstance(value, (int, float)):
        return datetime.fromtimestamp(value, timezone.utc).replace(tzinfo=None)
    parsed = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    if parsed.tzinfo is not None:
        parsed = parsed.astimezone(timezone.utc).replace(tzinfo=None)
    return parsed


def find_task(identifier: str) -> Any:
    for backends in dms_models.dms_backends.values():
        for backend in backends.values():
            for task in backend.replication_tasks.values():
                if task.id == identifier:
                    return task
    return None


def operation_of(environ: dict[str, Any]) -> str | None:
    """The API operation of a request: X-Amz-Target (JSON protocols) or Action (query)."""
    target = environ.get("HTTP_X_AMZ_TARGET")
    if target:
        return target.rsplit(".", 1)[-1]
    if environ.get("REQUEST_METHOD") != "POST":
        return None
    length = int(environ.get("CONTENT_LENGTH") or 0)
    body = environ["wsgi.input"].read(length) if length else b""
    environ["wsgi.input"] = io.BytesIO(body)
    if b"Action=" not in body:
        return None
    action = urllib.parse.parse_qs(body.decode("utf-8", "replace")).get("Action")
    return action[0] if action else None


def throttled(operation: str | None) -> str | None:
    """The error code to answer OPERATION with if it is throttled now (and counts the call)."""
    if operation is None:
        return None
    with LOCK:
        t = CONTROL.throttles.get(operation)
        if t is None:
            return None
        expired = t["until"] is not None and time.monotonic() >= t["until"]
        used_up = t["calls"] is not None and t["calls"] <= 0
        if expired or used_up:
            del CONTROL.throttles[operation]
            return None
        if t["calls"] is not None:
            t["calls"] -= 1
        CONTROL.throttled[operation] = CONTROL.throttled.get(operation, 0) + 1
        return t["code"]


def throttling_response(environ: dict[str, Any], code: str, start_response: Any) -> list[bytes]:
    if environ.get("HTTP_X_AMZ_TARGET"):
        body = json.dumps({"__type": code, "message": "Rate exceeded"}).encode()
        content_type = "application/x-amz-json-1.1"
    else:
        body = (
            "<ErrorResponse><Error><Type>Sender</Type>"
            f"<Code>{code}</Code><Message>Rate exceeded</Message></Error>"
            "<RequestId>dmsguard-lab-throttle</RequestId></ErrorResponse>"
        ).encode()
        content_type = "text/xml"
    start_response(
        "400 Bad Request",
        [("Content-Type", content_type), ("Content-Length", str(len(body)))],
    )
    return [body]


def control(environ: dict[str, Any]) -> tuple[int, Any]:
    """Handles one /dmsguard-lab/ request; returns (HTTP status, JSON answer)."""
    path = environ.get("PATH_INFO", "")[len(PREFIX) :].strip("/")
    method = environ.get("REQUEST_METHOD", "GET")
    length = int(environ.get("CONTENT_LENGTH") or 0)
    raw = environ["wsgi.input"].read(length) if length else b""
    body = json.loads(raw) if raw.strip() else {}
    with LOCK:
        if path == "state" and method == "GET":
            tasks = {}
            for backends in dms_models.dms_backends.values():
                for backend in backends.values():
                    for task in backend.replication_tasks.values():
                        tick(task)
                        tasks[task.id] = task.status
            return 200, dict(CONTROL.snapshot(), tasks=tasks)
        if path == "dms/timing" and method == "POST":
            if "stop_seconds" in body:
                CONTROL.stop_seconds = float(body["stop_seconds"])
            if "start_seconds" in body:
                CONTROL.start_seconds = float(body["start_seconds"])
            return 200, CONTROL.snapshot()
        if path == "dms/fail" and method == "POST":
            task_id = body["task"]
            reason = body.get("stop_reason", "Stop Reason FATAL_ERROR")
            message = body.get("message", "Task failed (dmsguard lab)")
            if body.get("when", "now") == "on_stop":
                CONTROL.fail_on_stop[task_id] = {"stop_reason": reason, "message": message}
                return 200, CONTROL.snapshot()
            task = find_task(task_id)
            if task is None:
                return 404, {"error": f"no task {task_id}"}
            fail_now(task, reason, message)
            return 200, {"task": task_id, "status": task.status}
        if path == "throttle" and method == "POST":
            seconds = body.get("seconds")
            for op in body["operations"]:
                CONTROL.throttles[op] = {
                    "calls": body.get("calls"),
                    "until": None if seconds is None else time.monotonic() + float(seconds),
                    "code": body.get("code", "ThrottlingException"),
                }
            return 200, CONTROL.snapshot()
        if path == "redshift/maintenance" and method == "POST":
            CONTROL.maintenance[body["cluster"]] = {
                "next_start": parse_time(body.get("next_start")),
                "deferred": [
                    {"id": d["id"], "start": parse_time(d["start"]), "end": parse_time(d["end"])}
                    for d in body.get("deferred", [])
                ],
            }
            return 200, {"cluster": body["cluster"]}
        if path == "redshift-serverless/workgroup" and method == "POST":
            CONTROL.workgroups.add(body["name"])
            return 200, {"workgroups": sorted(CONTROL.workgroups)}
        if path == "redshift-serverless/credentials" and method == "GET":
            return 200, {"credentials": list(CONTROL.serverless_credentials)}
        if path == "reset" and method == "POST":
            CONTROL.__init__()  # type: ignore[misc]
            return 200, CONTROL.snapshot()
    return 404, {"error": f"unknown lab control {method} {path}"}


class LabApplication(DomainDispatcherApplication):
    """moto's application with the lab endpoint and throttling in front."""

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Any:
        if environ.get("PATH_INFO", "").startswith(PREFIX):
            try:
                status, answer = control(environ)
            except (KeyError, ValueError, TypeError) as e:
                status, answer = 400, {"error": f"{type(e).__name__}: {e}"}
            body = json.dumps(answer, default=str).encode()
            start_response(
                f"{status} {'OK' if status == 200 else 'Error'}",
                [("Content-Type", "application/json"), ("Content-Length", str(len(body)))],
            )
            return [body]
        code = throttled(operation_of(environ))
        if code is not None:
            return throttling_response(environ, code, start_response)
        if environ.get("HTTP_X_AMZ_TARGET") == SERVERLESS_TARGET:
            status, answer = serverless_get_credentials(environ)
            return json_response(status, answer, "application/x-amz-json-1.1", start_response)
        return super().__call__(environ, start_response)


def patch() -> None:
    task_cls = dms_models.FakeReplicationTask
    if not getattr(task_cls.to_dict, "dmsguard_patched", False):
        task_cls.to_dict = with_epoch_dates(with_control_fields(task_cls.to_dict))
        task_cls.stop = task_stop
        task_cls.start = task_start
        backend_cls = dms_models.DatabaseMigrationServiceBackend
        backend_cls.describe_replication_tasks = with_tick_all(
            backend_cls.describe_replication_tasks
        )
    instance_cls = dms_models.FakeReplicationInstance
    if not getattr(instance_cls.to_dict, "dmsguard_patched", False):
        instance_cls.to_dict = with_epoch_dates(instance_cls.to_dict)
    cluster_cls = redshift_models.Cluster
    cluster_cls.next_maintenance_window_start_time = property(cluster_next_start)
    cluster_cls.deferred_maintenance_windows = property(cluster_deferred)
    moto.server.DomainDispatcherApplication = LabApplication  # type: ignore[misc]


if __name__ == "__main__":
    patch()
    moto_main(sys.argv[1:])
