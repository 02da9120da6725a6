"""Credentials stay out of the data: a run with keys in its environment and a signed URL as its input writes no key, no
signature and no query string into its store, and says none in its messages (against the loopback S3 server)."""

from __future__ import annotations

import json
import os

from tests.helpers.stores import invoke, run
from tests.helpers.videos import write_video


def test_no_key_or_signature_reaches_the_store_info_or_a_message(ray_address, runner, cli, s3_server, s3_bucket, tiny_model, tmp_path):
    video = write_video(tmp_path / "clip.mp4", 16, gop=8)
    s3_server.put(f"{s3_bucket}/in/clip.mp4", video.read_bytes())
    bucket = s3_bucket.removeprefix("s3://")
    signed = s3_server.client().generate_presigned_url("get_object", Params={"Bucket": bucket, "Key": "in/clip.mp4"}, ExpiresIn=3600)
    fields = dict(field.split("=", 1) for field in signed.split("?", 1)[1].split("&"))
    secrets = [os.environ["AWS_SECRET_ACCESS_KEY"], os.environ["AWS_ACCESS_KEY_ID"], fields["Signature"]]
    assert all(len(s) >= 12 for s in secrets)  # distinctive: no bucket name, time or digest holds one by chance
    out = f"{s3_bucket}/out.zarr"

    r = run(runner, cli, "--input", signed, "--out", out, "--model", tiny_model, "--samples", 1, "--actors", 1, "--address", ray_address)
    assert r.exit_code == 0, r.output
    said = [r.output, invoke(runner, cli, "info", out).output, invoke(runner, cli, "verify", out).output]
    refused = run(runner, cli, "--input", signed, "--out", out, "--model", tiny_model, "--address", ray_address)  # exists: refused
    assert refused.exit_code == 2
    said.append(refused.output)
    audit = invoke(runner, cli, "audit", out, "--report", tmp_path / "bare", "--top", 2, "--min-gap", 0, "--quiet")
    assert audit.exit_code == 0 and "input thumbnails are left out (--source" in audit.output, audit.output  # the signature is not in the store
    said.append(audit.output)
    audit = invoke(runner, cli, "audit", out, "--report", tmp_path / "report", "--top", 2, "--min-gap", 0, "--source", signed, "--quiet")
    assert audit.exit_code == 0 and "warning" not in audit.output, audit.output
    assert json.loads((tmp_path / "report" / "summary.json").read_text())["input_thumbnails"] == "ok"
    moved = invoke(runner, cli, "export", out, "--to", tmp_path / "overlay.mp4", "--quiet")  # the signature is not in the store
    assert moved.exit_code == 2 and "--source" in moved.output, moved.output
    exported = invoke(runner, cli, "export", out, "--to", tmp_path / "overlay.mp4", "--source", signed, "--quiet")
    assert exported.exit_code == 0, exported.output
    said += [audit.output, moved.output, exported.output]
    stored = [s3_server.client().get_object(Bucket=bucket, Key=key)["Body"].read() for key in s3_server.keys(out)]
    written = [p.read_bytes() for p in [*tmp_path.glob("bare/**/*"), *tmp_path.glob("report/**/*"), tmp_path / "overlay.mp4"] if p.is_file()]
    assert any(b"in/clip.mp4" in data for data in written)  # the report names the source, by its location
    assert any(b"in/clip.mp4" in data for data in stored)  # the input is recorded, by its location
    for secret in secrets:
        assert not any(secret.encode() in data for data in stored + written), secret
        assert not any(secret in text for text in said), secret
