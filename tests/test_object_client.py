"""s3:// through obstore with a named profile of ~/.aws and no keys in the environment (boto3's credentials), against the
loopback S3 server; keys in the environment are what every other S3 test uses."""

from __future__ import annotations

import pytest

from segbatch import location
from segbatch.lease import Lease, claim, read_lease


def test_a_profile_in_aws_config_reaches_the_bucket_without_keys_in_the_environment(s3_server, s3_bucket, tmp_path, monkeypatch):
    pytest.importorskip("boto3")
    key_id, secret = "test-key-id-4f7c2a", "test-secret-9e1d5b"
    (tmp_path / ".aws").mkdir()
    (tmp_path / ".aws" / "credentials").write_text(f"[loopback]\naws_access_key_id = {key_id}\naws_secret_access_key = {secret}\n")
    (tmp_path / ".aws" / "config").write_text("[profile loopback]\nregion = us-east-1\n")
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("AWS_PROFILE", "loopback")
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_REGION", "AWS_DEFAULT_REGION"):
        monkeypatch.delenv(name, raising=False)
    store = f"{s3_bucket}/profile.zarr"
    mine = Lease.new()
    claim(store, mine)
    assert read_lease(store).run == mine.run  # the lease's conditional put and its read went through the profile's keys
    assert location.children(store) == ["lease"]
