"""A real S3-protocol server for the tests (moto's server mode on 127.0.0.1), and the variables that point every client at it.

obstore (stores, leases, videos, checkpoints) reads AWS_ENDPOINT_URL (plain http allowed for an http endpoint); GDAL (rasters
through /vsis3/) reads AWS_S3_ENDPOINT, AWS_HTTPS and AWS_VIRTUAL_HOSTING
(path-style addressing: a bucket name is no host name on 127.0.0.1). Both
take the keys and region from the standard variables.
"""

from __future__ import annotations

import itertools
import socket
import subprocess
import sys
import time
from typing import Any


def free_port() -> int:
    """A port nothing listens on now (the kernel's choice for port 0)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def environment(port: int) -> dict[str, str]:
    """The variables that send obstore, botocore and GDAL to the server at `port`, with its (any) keys."""
    return {
        "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}",
        "AWS_ACCESS_KEY_ID": "test-key-id-4f7c2a",
        "AWS_SECRET_ACCESS_KEY": "test-secret-9e1d5b",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_REGION": "us-east-1",
        "AWS_S3_ENDPOINT": f"127.0.0.1:{port}",
        "AWS_HTTPS": "NO",
        "AWS_VIRTUAL_HOSTING": "FALSE",
    }


class S3Server:
    """moto's S3-compatible server in a process of its own; `bucket()` makes a new, empty bucket per call.

    Not a thread of the test process: the driver runs in-process (CliRunner),
    and GDAL reading /vsis3/ there may hold the GIL while it waits for the
    server's answer, which a thread of the same process could never give.
    """

    def __init__(self) -> None:
        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self._numbers = itertools.count()
        self._process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 60) -> None:
        """Start the server and return once it accepts connections."""
        cmd = [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)]
        self._process = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # a line per request
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self._process.poll() is None:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"moto's S3 server did not start on port {self.port}")

    def stop(self) -> None:
        if self._process is not None:
            self._process.terminate()
            self._process.wait(timeout=30)
            self._process = None

    def client(self) -> Any:
        """A boto3 S3 client of the server (outside segbatch's own fsspec caches)."""
        import boto3

        env = environment(self.port)
        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"],
            region_name="us-east-1",
        )

    def bucket(self) -> str:
        """A new bucket (a valid DNS name, as S3 requires): its s3:// URL."""
        name = f"segbatch-test-{next(self._numbers)}"
        self.client().create_bucket(Bucket=name)
        return f"s3://{name}"

    def put(self, url: str, data: bytes) -> None:
        bucket, key = url.removeprefix("s3://").split("/", 1)
        self.client().put_object(Bucket=bucket, Key=key, Body=data)

    def keys(self, url: str) -> list[str]:
        """Every object key under the prefix `url` (s3://bucket/prefix), sorted."""
        bucket, prefix = url.removeprefix("s3://").split("/", 1)
        pages = self.client().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix.rstrip("/") + "/")
        return sorted(o["Key"] for page in pages for o in page.get("Contents", []))

    def delete(self, url: str) -> None:
        bucket, key = url.removeprefix("s3://").split("/", 1)
        self.client().delete_object(Bucket=bucket, Key=key)
