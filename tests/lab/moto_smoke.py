"""Smoke-check the lab's moto: what dmsguard relies on works, and DMS dates are epoch numbers.

Usage: $DMSGUARD_MOTO_PYTHON tests/lab/moto_smoke.py [MOTO_URL]   (default $DMSGUARD_MOTO_URL)

Run it against a moto started through moto_launcher.py after bumping moto: it fails loudly
when the date patch or one of the calls the project uses stops working. It resets moto's state
(POST /moto-api/reset) before and after.
"""

from __future__ import annotations

import json
import os
import sys
import urllib.request
from datetime import datetime, timedelta, timezone

import boto3
import botocore.exceptions

URL = sys.argv[1] if len(sys.argv) > 1 else os.environ["DMSGUARD_MOTO_URL"]
REGION = os.environ.get("AWS_REGION", "us-east-1")
failures: list[str] = []


def check(name: str, ok: bool, detail: object = "") -> None:
    print(f"{'ok  ' if ok else 'FAIL'} {name}{': ' + str(detail) if detail else ''}")
    if not ok:
        failures.append(name)


def reset() -> None:
    urllib.request.urlopen(urllib.request.Request(f"{URL}/moto-api/reset", method="POST"))


def client(service: str):
    return boto3.client(
        service,
        endpoint_url=URL,
        region_name=REGION,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
        config=botocore.config.Config(retries={"max_attempts": 1}),
    )


raw: dict[str, dict] = {}


def keep_raw(http_response, model, **_):
    """Keep the JSON body as moto sent it (boto3 would parse dates either way)."""
    try:
        raw[model.name] = json.loads(http_response.content)
    except ValueError:
        raw[model.name] = {"unparsed": http_response.content[:200].decode(errors="replace")}


def numeric_dates(obj, keys) -> list[str]:
    """Paths of KEYS entries (at any depth) whose value is neither a number nor null."""
    bad = []

    def walk(value, path):
        if isinstance(value, dict):
            for k, v in value.items():
                if k in keys and v is not None and not isinstance(v, (int, float)):
                    bad.append(f"{path}.{k}={v!r}")
                walk(v, f"{path}.{k}")
        elif isinstance(value, list):
            for i, v in enumerate(value):
                walk(v, f"{path}[{i}]")

    walk(obj, "")
    return bad


DATE_KEYS = {
    "ReplicationTaskCreationDate", "ReplicationTaskStartDate", "FreshStartDate", "StartDate",
    "StopDate", "FullLoadStartDate", "FullLoadFinishDate", "InstanceCreateTime", "FreeUntil",
}


def dms_checks() -> None:
    dms = client("dms")
    dms.meta.events.register("after-call.*", keep_raw)
    inst = dms.create_replication_instance(
        ReplicationInstanceIdentifier="lab-instance", ReplicationInstanceClass="dms.t3.medium"
    )["ReplicationInstance"]
    src = dms.create_endpoint(
        EndpointIdentifier="lab-source", EndpointType="source", EngineName="postgres",
        ServerName="127.0.0.1", Port=5432, DatabaseName="source", Username="u", Password="p",
    )["Endpoint"]
    dst = dms.create_endpoint(
        EndpointIdentifier="lab-target", EndpointType="target", EngineName="redshift",
        ServerName="127.0.0.1", Port=5439, DatabaseName="redshift", Username="u", Password="p",
    )["Endpoint"]
    task = dms.create_replication_task(
        ReplicationTaskIdentifier="lab-task", SourceEndpointArn=src["EndpointArn"],
        TargetEndpointArn=dst["EndpointArn"], ReplicationInstanceArn=inst["ReplicationInstanceArn"],
        MigrationType="cdc", TableMappings=json.dumps({"rules": []}),
    )["ReplicationTask"]
    arn = task["ReplicationTaskArn"]
    check("DMS task ARN ends with the task name", arn.endswith(":task:lab-task"), arn)
    check("DMS CreateReplicationTask status", task["Status"] in ("creating", "ready"), task["Status"])

    dms.start_replication_task(ReplicationTaskArn=arn, StartReplicationTaskType="start-replication")
    status = dms.describe_replication_tasks()["ReplicationTasks"][0]["Status"]
    check("DMS StartReplicationTask start-replication -> running", status == "running", status)
    dms.stop_replication_task(ReplicationTaskArn=arn)
    status = dms.describe_replication_tasks()["ReplicationTasks"][0]["Status"]
    check("DMS StopReplicationTask -> stopped", status == "stopped", status)
    try:
        dms.stop_replication_task(ReplicationTaskArn=arn)
        check("DMS stop of a stopped task is refused", False)
    except botocore.exceptions.ClientError as err:
        code = err.response["Error"]["Code"]
        check("DMS stop of a stopped task is refused", code == "InvalidResourceStateFault", code)
    dms.start_replication_task(ReplicationTaskArn=arn, StartReplicationTaskType="resume-processing")
    tasks = dms.describe_replication_tasks(
        Filters=[{"Name": "replication-task-arn", "Values": [arn]}]
    )["ReplicationTasks"]
    check("DMS StartReplicationTask resume-processing -> running",
          tasks[0]["Status"] == "running", tasks[0]["Status"])
    dms.describe_replication_instances()

    for op in ("DescribeReplicationTasks", "DescribeReplicationInstances",
               "StartReplicationTask", "StopReplicationTask", "CreateReplicationInstance"):
        bad = numeric_dates(raw.get(op, {}), DATE_KEYS)
        check(f"DMS {op}: dates are epoch numbers", op in raw and not bad, bad)
    sample = raw["DescribeReplicationTasks"]["ReplicationTasks"][0]
    print("     sample:", {k: sample.get(k) for k in ("ReplicationTaskCreationDate",
                                                      "ReplicationTaskStartDate")},
          {k: sample["ReplicationTaskStats"].get(k) for k in ("StartDate", "StopDate")})
    try:
        dms.describe_table_statistics(ReplicationTaskArn=arn)
        check("DMS DescribeTableStatistics (informational)", True)
    except botocore.exceptions.ClientError as err:
        print("info DMS DescribeTableStatistics not implemented:",
              err.response["ResponseMetadata"].get("HTTPStatusCode"))


def cloudwatch_checks() -> None:
    cw = client("cloudwatch")
    now = datetime.now(timezone.utc).replace(microsecond=0)
    dims = [{"Name": "ReplicationInstanceIdentifier", "Value": "lab-instance"}]
    cw.put_metric_data(Namespace="AWS/DMS", MetricData=[
        {"MetricName": "FreeableMemory", "Dimensions": dims, "Timestamp": now - timedelta(seconds=s),
         "Value": 2e9 - s, "Unit": "Bytes"} for s in (0, 60, 120)
    ])
    out = cw.get_metric_data(
        MetricDataQueries=[{
            "Id": "mem", "MetricStat": {"Metric": {"Namespace": "AWS/DMS",
                                                   "MetricName": "FreeableMemory",
                                                   "Dimensions": dims},
                                        "Period": 60, "Stat": "Minimum"},
        }],
        StartTime=now - timedelta(minutes=10), EndTime=now + timedelta(minutes=1),
    )["MetricDataResults"][0]
    check("CloudWatch PutMetricData + GetMetricData", len(out["Values"]) >= 1,
          f"{len(out['Values'])} values, newest {out['Timestamps'][:1]}")
    stats = cw.get_metric_statistics(
        Namespace="AWS/DMS", MetricName="FreeableMemory", Dimensions=dims,
        StartTime=now - timedelta(minutes=10), EndTime=now + timedelta(minutes=1),
        Period=60, Statistics=["Minimum"],
    )["Datapoints"]
    check("CloudWatch GetMetricStatistics", len(stats) >= 1, f"{len(stats)} datapoints")


def redshift_checks() -> None:
    rs = client("redshift")
    rs.create_cluster(
        ClusterIdentifier="lab-cluster", NodeType="ra3.xlplus", MasterUsername="admin",
        MasterUserPassword="Password1", ClusterType="single-node",
        PreferredMaintenanceWindow="sun:03:00-sun:03:30",
    )
    cluster = rs.describe_clusters(ClusterIdentifier="lab-cluster")["Clusters"][0]
    window = cluster.get("PreferredMaintenanceWindow")
    check("Redshift DescribeClusters PreferredMaintenanceWindow",
          window == "sun:03:00-sun:03:30", window)


def serverless_checks() -> None:
    """The launcher's Redshift Serverless GetCredentials (moto has none): it needs moto's STS."""
    body = json.dumps({"name": "lab-wg"}).encode()
    urllib.request.urlopen(
        urllib.request.Request(f"{URL}/dmsguard-lab/redshift-serverless/workgroup", data=body, method="POST")
    )
    rss = client("redshift-serverless")
    out = rss.get_credentials(workgroupName="lab-wg", dbName="dev", durationSeconds=1200)
    left = (out["expiration"] - datetime.now(timezone.utc)).total_seconds()
    check("Redshift Serverless GetCredentials (launcher) user and expiration",
          out["dbUser"].startswith("IAM:") and 1100 < left <= 1200, (out["dbUser"], left))
    creds = client("sts").assume_role(
        RoleArn="arn:aws:iam::123456789012:role/lab-role", RoleSessionName="smoke"
    )["Credentials"]
    as_role = boto3.client(
        "redshift-serverless", endpoint_url=URL, region_name=REGION,
        aws_access_key_id=creds["AccessKeyId"], aws_secret_access_key=creds["SecretAccessKey"],
        aws_session_token=creds["SessionToken"],
    )
    user = as_role.get_credentials(workgroupName="lab-wg")["dbUser"]
    check("Redshift Serverless GetCredentials through an assumed role", user == "IAMR:lab-role", user)
    try:
        rss.get_credentials(workgroupName="no-such-wg")
        check("Redshift Serverless GetCredentials of an unknown workgroup is refused", False)
    except botocore.exceptions.ClientError as e:
        code = e.response["Error"]["Code"]
        check("Redshift Serverless GetCredentials of an unknown workgroup is refused",
              code == "ResourceNotFoundException", code)
    urllib.request.urlopen(
        urllib.request.Request(f"{URL}/dmsguard-lab/reset", data=b"{}", method="POST")
    )


if __name__ == "__main__":
    reset()
    try:
        dms_checks()
        cloudwatch_checks()
        redshift_checks()
        serverless_checks()
    finally:
        reset()
    print(f"{'FAILED: ' + ', '.join(failures) if failures else 'all moto checks passed'}")
    sys.exit(1 if failures else 0)
