#!/usr/bin/env python3
"""Uploads one file to an S3-compatible store with a SigV4-signed, path-style PUT (creating the
bucket first when needed). Standard library only, so scripts need neither boto3 nor aws-cli.

    s3_put.py ENDPOINT ACCESS_KEY SECRET_KEY BUCKET KEY FILE [REGION]
"""

import datetime
import hashlib
import hmac
import sys
import urllib.error
import urllib.parse
import urllib.request


def _sign(key: bytes, msg: str) -> bytes:
    return hmac.new(key, msg.encode(), hashlib.sha256).digest()


def signed_request(method, endpoint, ak, sk, region, path, body=b""):
    url = urllib.parse.urlsplit(endpoint)
    now = datetime.datetime.now(datetime.timezone.utc)
    amz_date, day = now.strftime("%Y%m%dT%H%M%SZ"), now.strftime("%Y%m%d")
    payload_hash = hashlib.sha256(body).hexdigest()
    canonical_path = urllib.parse.quote(path, safe="/-_.~")
    headers = {"host": url.netloc, "x-amz-content-sha256": payload_hash, "x-amz-date": amz_date}
    signed = ";".join(sorted(headers))
    canonical = "\n".join(
        [method, canonical_path, "", *(f"{k}:{headers[k]}" for k in sorted(headers)), "", signed, payload_hash]
    )
    scope = f"{day}/{region}/s3/aws4_request"
    to_sign = "\n".join(["AWS4-HMAC-SHA256", amz_date, scope, hashlib.sha256(canonical.encode()).hexdigest()])
    key = _sign(_sign(_sign(_sign(("AWS4" + sk).encode(), day), region), "s3"), "aws4_request")
    signature = hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()
    headers["authorization"] = f"AWS4-HMAC-SHA256 Credential={ak}/{scope}, SignedHeaders={signed}, Signature={signature}"
    req = urllib.request.Request(f"{endpoint.rstrip('/')}{canonical_path}", data=body, method=method, headers=headers)
    return urllib.request.urlopen(req, timeout=30)


def main(argv):
    if len(argv) not in (7, 8):
        sys.exit(__doc__)
    endpoint, ak, sk, bucket, key, path = argv[1:7]
    region = argv[7] if len(argv) == 8 else "us-east-1"
    try:
        signed_request("PUT", endpoint, ak, sk, region, f"/{bucket}")
    except urllib.error.HTTPError as e:
        if e.code != 409:  # BucketAlreadyOwnedByYou / BucketAlreadyExists
            sys.exit(f"s3_put: create bucket {bucket}: HTTP {e.code}: {e.read().decode(errors='replace')}")
    with open(path, "rb") as f:
        body = f.read()
    try:
        signed_request("PUT", endpoint, ak, sk, region, f"/{bucket}/{key}", body)
    except urllib.error.HTTPError as e:
        sys.exit(f"s3_put: put s3://{bucket}/{key}: HTTP {e.code}: {e.read().decode(errors='replace')}")
    print(f"s3_put: uploaded {path} to s3://{bucket}/{key} ({len(body)} bytes)")


if __name__ == "__main__":
    main(sys.argv)
