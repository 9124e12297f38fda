"""The S3 test server harness (tests/support/s3server.py) against a real SeaweedFS `weed mini`.

These tests also pin down how SeaweedFS answers what the model store will meet: refusals, missing
buckets and keys, a server that is down and comes back, conditional PUT, ranges and streaming."""
from __future__ import annotations

import hashlib
import io
import os
import threading

import pytest
from botocore import UNSIGNED
from botocore.exceptions import ClientError, EndpointConnectionError

from tests.support import s3server
from tests.support.s3server import HOST, S3Server, S3ServerError

if not s3server.REGISTERED:  # conftest.py has not registered the plugin: use its fixtures from here
    from tests.support.s3server import bucket, s3, s3_client  # noqa: F401


def error(exc_info) -> tuple[str, int]:
    response = exc_info.value.response
    return response["Error"]["Code"], response["ResponseMetadata"]["HTTPStatusCode"]


def test_server_is_up_on_loopback_only(s3):
    assert s3.running and s3.endpoint == f"http://{HOST}:{s3.port}"
    assert s3.ready_seconds is not None and s3.ready_seconds < 15
    listening = s3.listening()
    assert (HOST, s3.port) in listening
    assert {address for address, _ in listening} == {HOST}, listening


def test_put_get_head_with_etag(s3_client, bucket):
    body = b"onnx model bytes \x00\x01\x02"
    md5 = hashlib.md5(body).hexdigest()
    put = s3_client.put_object(Bucket=bucket, Key="models/digits/model.onnx", Body=body,
                               Metadata={"sha256": hashlib.sha256(body).hexdigest()})
    assert put["ETag"] == f'"{md5}"'
    head = s3_client.head_object(Bucket=bucket, Key="models/digits/model.onnx")
    assert head["ETag"] == put["ETag"] and head["ContentLength"] == len(body)
    assert head["Metadata"] == {"sha256": hashlib.sha256(body).hexdigest()}
    got = s3_client.get_object(Bucket=bucket, Key="models/digits/model.onnx")
    assert got["Body"].read() == body and got["ETag"] == put["ETag"]
    listed = s3_client.list_objects_v2(Bucket=bucket, Prefix="models/")["Contents"]
    assert [(o["Key"], o["Size"], o["ETag"]) for o in listed] == [("models/digits/model.onnx", len(body), put["ETag"])]


def test_bucket_fixture_gives_a_new_empty_bucket(s3, s3_client, bucket):
    assert bucket.startswith("test-bucket-fixture-gives-a-new-")
    assert 3 <= len(bucket) <= 63
    assert s3_client.list_objects_v2(Bucket=bucket)["KeyCount"] == 0
    other = s3.new_bucket("Other Name!")
    assert other != bucket and other.startswith("other-name-")
    s3.delete_bucket(other)


def test_wrong_credentials_are_refused(s3, bucket):
    s3.client().put_object(Bucket=bucket, Key="k", Body=b"secret")
    bad_secret = s3.client(secret_key="wrong-secret", retries={"max_attempts": 1})
    unknown_key = s3.client(access_key="nobody", secret_key="wrong-secret", retries={"max_attempts": 1})
    anonymous = s3.client(signature_version=UNSIGNED, retries={"max_attempts": 1})
    for client, code in ((bad_secret, "SignatureDoesNotMatch"), (unknown_key, "InvalidAccessKeyId"),
                         (anonymous, "AccessDenied")):
        with pytest.raises(ClientError) as e:
            client.get_object(Bucket=bucket, Key="k")
        assert error(e) == (code, 403)
        with pytest.raises(ClientError) as e:
            client.list_buckets()
        assert error(e) == (code, 403)
        with pytest.raises(ClientError) as e:  # HEAD has no body: the code is the status
            client.head_object(Bucket=bucket, Key="k")
        assert error(e) == ("403", 403)
    with pytest.raises(ClientError) as e:
        bad_secret.get_object(Bucket=bucket, Key="k")
    assert e.value.response["Error"]["Message"].startswith("The request signature we calculated does not match")


def test_missing_bucket(s3_client):
    name = "onnxfn-no-such-bucket"
    for call in (lambda: s3_client.get_object(Bucket=name, Key="k"),
                 lambda: s3_client.put_object(Bucket=name, Key="k", Body=b"x"),  # no auto-creation
                 lambda: s3_client.list_objects_v2(Bucket=name)):
        with pytest.raises(ClientError) as e:
            call()
        assert error(e) == ("NoSuchBucket", 404)
    with pytest.raises(ClientError) as e:
        s3_client.head_bucket(Bucket=name)
    assert error(e) == ("404", 404)


def test_missing_key(s3_client, bucket):
    with pytest.raises(ClientError) as e:
        s3_client.get_object(Bucket=bucket, Key="nope/model.onnx")
    assert error(e) == ("NoSuchKey", 404)
    assert isinstance(e.value, s3_client.exceptions.NoSuchKey)
    with pytest.raises(ClientError) as e:
        s3_client.head_object(Bucket=bucket, Key="nope/model.onnx")
    assert error(e) == ("404", 404)


def test_down_then_back_keeps_data(s3, bucket):
    client = s3.client()  # retries as a real caller would (3 attempts)
    no_retry = s3.client(retries={"max_attempts": 1})
    client.put_object(Bucket=bucket, Key="bundle/manifest.json", Body=b'{"v": 1}')
    endpoint, pid = s3.endpoint, s3.pid
    try:
        s3.stop()
        assert not s3.running
        with pytest.raises(EndpointConnectionError) as e:
            no_retry.get_object(Bucket=bucket, Key="bundle/manifest.json")
        assert str(e.value).startswith(f'Could not connect to the endpoint URL: "{endpoint}/')
    finally:
        s3.start()
    assert s3.endpoint == endpoint and s3.pid != pid
    # the same client objects work again: same ports, same data folder
    assert no_retry.get_object(Bucket=bucket, Key="bundle/manifest.json")["Body"].read() == b'{"v": 1}'
    client.put_object(Bucket=bucket, Key="after", Body=b"writable")


def test_crash_restart_keeps_what_was_written(s3, bucket):
    client = s3.client()
    client.put_object(Bucket=bucket, Key="just-written", Body=b"x" * 100_000)
    endpoint = s3.endpoint
    try:
        s3.restart(kill=True)  # SIGKILL: no graceful shutdown
    finally:
        if not s3.running:
            s3.start()
    assert s3.endpoint == endpoint
    no_retry = s3.client(retries={"max_attempts": 1})
    assert no_retry.get_object(Bucket=bucket, Key="just-written")["Body"].read() == b"x" * 100_000


def test_put_if_none_match_is_honoured(s3, s3_client, bucket):
    first = s3_client.put_object(Bucket=bucket, Key="once", Body=b"first", IfNoneMatch="*")
    assert first["ResponseMetadata"]["HTTPStatusCode"] == 200
    with pytest.raises(ClientError) as e:
        s3_client.put_object(Bucket=bucket, Key="once", Body=b"second", IfNoneMatch="*")
    assert error(e) == ("PreconditionFailed", 412)
    assert s3_client.get_object(Bucket=bucket, Key="once")["Body"].read() == b"first"
    # and atomically: of 3 writers racing for a new key exactly one wins and its body is stored
    # (SeaweedFS serialises them; a loser may wait about 1 s for the key's lock)
    clients = [s3.client(retries={"max_attempts": 1}) for _ in range(3)]
    barrier, outcome = threading.Barrier(len(clients)), {}

    def put(i):
        barrier.wait()
        try:
            clients[i].put_object(Bucket=bucket, Key="race", Body=b"writer%d" % i, IfNoneMatch="*")
            outcome[i] = "ok"
        except ClientError as exc:
            outcome[i] = exc.response["Error"]["Code"]
    threads = [threading.Thread(target=put, args=(i,)) for i in range(len(clients))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    winners = [i for i, o in outcome.items() if o == "ok"]
    assert len(winners) == 1 and sorted(o for o in outcome.values() if o != "ok") == ["PreconditionFailed"] * 2
    assert s3_client.get_object(Bucket=bucket, Key="race")["Body"].read() == b"writer%d" % winners[0]


def test_ranged_get(s3_client, bucket):
    body = bytes(range(256)) * 40
    s3_client.put_object(Bucket=bucket, Key="r", Body=body)
    part = s3_client.get_object(Bucket=bucket, Key="r", Range="bytes=100-199")
    assert part["ResponseMetadata"]["HTTPStatusCode"] == 206
    assert part["ContentRange"] == f"bytes 100-199/{len(body)}" and part["ContentLength"] == 100
    assert part["Body"].read() == body[100:200]
    assert s3_client.get_object(Bucket=bucket, Key="r", Range="bytes=-16")["Body"].read() == body[-16:]
    with pytest.raises(ClientError) as e:
        s3_client.get_object(Bucket=bucket, Key="r", Range=f"bytes={len(body) + 10}-")
    assert error(e) == ("InvalidRange", 416)


def test_multi_mb_object_streams_in_chunks(s3_client, bucket):
    body = os.urandom(9 * 1024 * 1024 + 123)  # crosses weed's 4 MiB chunks
    put = s3_client.put_object(Bucket=bucket, Key="big.onnx", Body=body)
    assert put["ETag"] == f'"{hashlib.md5(body).hexdigest()}"'
    got = s3_client.get_object(Bucket=bucket, Key="big.onnx")
    assert got["ContentLength"] == len(body)
    digest, sizes = hashlib.sha256(), []
    for chunk in got["Body"].iter_chunks(chunk_size=1024 * 1024):
        digest.update(chunk)
        sizes.append(len(chunk))
    assert digest.digest() == hashlib.sha256(body).digest()
    assert len(sizes) >= 10 and max(sizes) <= 1024 * 1024


def test_multipart_upload_etag_is_not_an_md5(s3_client, bucket):
    from boto3.s3.transfer import TransferConfig
    body = os.urandom(11 * 1024 * 1024)
    mib5 = 5 * 1024 * 1024
    s3_client.upload_fileobj(io.BytesIO(body), bucket, "mp.onnx",
                             Config=TransferConfig(multipart_threshold=mib5, multipart_chunksize=mib5))
    head = s3_client.head_object(Bucket=bucket, Key="mp.onnx")
    assert head["ETag"].endswith('-3"') and head["ContentLength"] == len(body)
    assert s3_client.get_object(Bucket=bucket, Key="mp.onnx")["Body"].read() == body


def test_env_is_enough_for_a_function_process(s3, bucket, monkeypatch):
    s3.client().put_object(Bucket=bucket, Key="m/manifest.json", Body=b'{"name": "digits"}')
    env = s3.env()
    assert env == {
        "AWS_ENDPOINT_URL_S3": s3.endpoint, "AWS_ACCESS_KEY_ID": s3.access_key,
        "AWS_SECRET_ACCESS_KEY": s3.secret_key, "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_REQUEST_CHECKSUM_CALCULATION": "when_required", "AWS_RESPONSE_CHECKSUM_VALIDATION": "when_required",
        "AWS_EC2_METADATA_DISABLED": "true"}
    # what a function process does with nothing but these variables: a plain boto3 client
    import boto3
    for name in [k for k in os.environ if k.startswith("AWS_")]:
        monkeypatch.delenv(name)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    client = boto3.session.Session().client("s3")
    assert client.meta.endpoint_url == s3.endpoint and client.meta.region_name == "us-east-1"
    got = client.get_object(Bucket=bucket, Key="m/manifest.json")
    assert got["Body"].read() == b'{"name": "digits"}'
    assert got["ResponseMetadata"]["HTTPHeaders"]["server"].startswith("SeaweedFS")


def test_start_failure_reports_the_log_tail(tmp_path):
    server = S3Server(base_dir=tmp_path, extra_args=("-no.such.flag=1",), start_timeout=10)
    with pytest.raises(S3ServerError) as e:
        server.start()
    message = str(e.value)
    assert "weed exited with status" in message and "weed log tail" in message
    assert "no.such.flag" in message
    assert not server.running
