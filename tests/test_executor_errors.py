"""A data or storage failure inside an executor reaches the build's user as one line.

Spark wraps an executor's exception in a Py4J error whose text holds the Python traceback;
`dolmino.build.cli.executor_failure` finds the failure's own line in it. The exceptions
are raised in a real Python worker, so the text is the one Spark writes (classes named by
their module: `dolmino.s3.S3PathError`, botocore's generated `botocore.errorfactory.NoSuchKey`).
"""

from __future__ import annotations

import pytest

from dolmino.build.cli import executor_failure


@pytest.mark.parametrize("kind, line", [
    ("object", "S3PathError: s3://b/data/web/a.jsonl.zst: no such object"),
    ("bucket", "NoSuchBucket: s3://b: bucket does not exist"),
    ("delete", "S3DeleteError: could not delete 1 object(s), e.g. s3://b/out/report.json: AccessDenied"),
    ("denied", "ClientError: An error occurred (AccessDenied) when calling the GetObject operation: Access Denied"),
    ("no-such-key", "NoSuchKey: An error occurred (NoSuchKey) when calling the GetObject operation: The specified "
                    "key does not exist."),
    ("build", "BuildError: web/a.jsonl.zst: changed since it was tagged; run `dolmino tag`"),
    ("changed", "InputChangedError: web/a.jsonl: line 3 is not the document tagged there"),
    ("bug", None),
])
def test_an_executor_failure_is_one_line(spark, kind, line):
    def _raise(kind: str):  # nested: cloudpickle ships it by value (workers cannot import tests/)
        from botocore.exceptions import ClientError

        from dolmino import s3
        from dolmino.errors import BuildError, InputChangedError

        if kind == "object":
            raise s3.S3PathError("s3://b/data/web/a.jsonl.zst: no such object")
        if kind == "bucket":
            raise s3.NoSuchBucket("b")
        if kind == "delete":
            raise s3.S3DeleteError("could not delete 1 object(s), e.g. s3://b/out/report.json: AccessDenied")
        if kind == "denied":
            raise ClientError({"Error": {"Code": "AccessDenied", "Message": "Access Denied"}}, "GetObject")
        if kind == "no-such-key":
            import boto3

            client = boto3.session.Session().client("s3", region_name="us-east-1", endpoint_url="http://127.0.0.1:9")
            raise client.exceptions.NoSuchKey({"Error": {"Code": "NoSuchKey", "Message": "The specified key does not "
                                                         "exist."}}, "GetObject")
        if kind == "build":
            raise BuildError("web/a.jsonl.zst: changed since it was tagged; run `dolmino tag`")
        if kind == "changed":
            raise InputChangedError("web/a.jsonl: line 3 is not the document tagged there")
        raise RuntimeError("a bug, not the data's fault")

    with pytest.raises(Exception) as info:
        spark.sparkContext.parallelize([kind], 1).map(_raise).collect()
    assert executor_failure(info.value) == (None if line is None else f"in an executor: {line}")
