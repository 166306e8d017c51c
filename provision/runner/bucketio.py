"""Cluster-side S3 client (stdlib only): jobs pull inputs from and push outputs to the customer's bucket.

Usage:  bucketio.py get s3://bucket/key-or-prefix/ DEST_DIR
        bucketio.py put SRC_DIR s3://bucket/prefix/ [--skip MANIFEST]

MANIFEST (written by the runner after staging inputs) maps relative paths to [size, mtime_ns]: files still
matching it are inputs and are not uploaded.

Credentials come from the node itself, in the order the AWS SDKs use: environment variables, the profile
(AWS_PROFILE in AWS_CONFIG_FILE / AWS_SHARED_CREDENTIALS_FILE, with role_arn + external_id assumed through STS
from source_profile or credential_source), then the instance role through IMDSv2. Endpoints: AWS_ENDPOINT_URL_S3,
AWS_ENDPOINT_URL or the profile's endpoint_url (S3-compatible stores), else AWS. Requests are signed with SigV4.
"""

from __future__ import annotations

import configparser
import datetime
import hashlib
import hmac
import json
import os
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# an isolated interpreter leaves the script's directory off sys.path: find the protocol package beside it
sys.path.insert(0, str(Path(__file__).resolve().parent))
from mpicloud.protocol.paths import UnsafePath, safe_join

# multipart part size (S3 minimum 5 MiB); files at least this big are uploaded in parts
PART = max(5, int(os.environ.get("MPICLOUD_S3_PART_MB", "64"))) * 1024 * 1024
CHUNK = 1024 * 1024
IMDS = "http://169.254.169.254"
RETRIES = 4


class S3Error(Exception):
    """A failed S3/STS call, with the service's error code when it sent one."""


@dataclass(frozen=True)
class Creds:
    """An access key, with a session token for temporary credentials."""

    key: str
    secret: str
    token: str | None = None


@dataclass(frozen=True)
class Settings:
    """Where and as whom this node talks to S3."""

    creds: Creds
    region: str
    endpoint: str | None    # None: AWS


# ---------------------------------------------------------------- configuration
def _ini(path: str) -> configparser.RawConfigParser:
    parser = configparser.RawConfigParser()
    parser.read(os.path.expanduser(path), encoding="utf-8")
    return parser


def profile_settings(name: str) -> dict[str, str]:
    """One profile's keys, merged from the config file ([profile X]) and the credentials file ([X])."""
    config = _ini(os.environ.get("AWS_CONFIG_FILE", "~/.aws/config"))
    creds = _ini(os.environ.get("AWS_SHARED_CREDENTIALS_FILE", "~/.aws/credentials"))
    section = "default" if name == "default" else f"profile {name}"
    merged: dict[str, str] = dict(config.items(section)) if config.has_section(section) else {}
    if creds.has_section(name):
        merged.update(creds.items(name))
    return merged


def resolve(env: dict[str, str] | None = None) -> Settings:
    """Credentials, region and endpoint for this process."""
    env = dict(os.environ if env is None else env)
    profile = profile_settings(env.get("AWS_PROFILE") or "default")
    region = env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION") or profile.get("region") or "us-east-1"
    endpoint = env.get("AWS_ENDPOINT_URL_S3") or env.get("AWS_ENDPOINT_URL") or profile.get("endpoint_url")
    if env.get("AWS_ACCESS_KEY_ID") and env.get("AWS_SECRET_ACCESS_KEY"):
        creds = Creds(env["AWS_ACCESS_KEY_ID"], env["AWS_SECRET_ACCESS_KEY"], env.get("AWS_SESSION_TOKEN"))
    else:
        creds = profile_creds(profile, region, endpoint, depth=0)
    return Settings(creds, region, endpoint.rstrip("/") if endpoint else None)


def profile_creds(profile: dict[str, str], region: str, endpoint: str | None, depth: int) -> Creds:
    """Static keys of a profile, or the role it names assumed with its source credentials, or IMDS."""
    if depth > 4:
        raise S3Error("profile chain too deep (source_profile loop?)")
    if profile.get("role_arn"):
        source = profile.get("credential_source")
        if profile.get("source_profile"):
            base = profile_creds(profile_settings(profile["source_profile"]), region, endpoint, depth + 1)
        elif source == "Environment":
            base = Creds(os.environ["AWS_ACCESS_KEY_ID"], os.environ["AWS_SECRET_ACCESS_KEY"],
                         os.environ.get("AWS_SESSION_TOKEN"))
        else:
            base = imds_creds()
        return assume_role(base, profile, region, endpoint)
    if profile.get("aws_access_key_id") and profile.get("aws_secret_access_key"):
        return Creds(profile["aws_access_key_id"], profile["aws_secret_access_key"],
                     profile.get("aws_session_token"))
    return imds_creds()


def imds_creds() -> Creds:
    """The instance role's temporary credentials through IMDSv2 (token first; IMDSv1 is never used)."""
    try:
        token_req = urllib.request.Request(f"{IMDS}/latest/api/token", method="PUT",
                                           headers={"X-aws-ec2-metadata-token-ttl-seconds": "300"})
        with urllib.request.urlopen(token_req, timeout=2) as resp:
            token = resp.read().decode()
        headers = {"X-aws-ec2-metadata-token": token}
        base = f"{IMDS}/latest/meta-data/iam/security-credentials/"
        with urllib.request.urlopen(urllib.request.Request(base, headers=headers), timeout=2) as resp:
            role = resp.read().decode().split()[0]
        with urllib.request.urlopen(urllib.request.Request(base + role, headers=headers), timeout=2) as resp:
            data = json.loads(resp.read())
    except (OSError, ValueError, IndexError) as exc:
        raise S3Error("no AWS credentials: set a profile (mpicloud bucket install) or run on an EC2 instance "
                      f"with a role (IMDS: {exc})") from None
    return Creds(data["AccessKeyId"], data["SecretAccessKey"], data.get("Token"))


def assume_role(base: Creds, profile: dict[str, str], region: str, endpoint: str | None) -> Creds:
    """STS AssumeRole with the profile's role_arn, external_id and role_session_name."""
    params = {"Action": "AssumeRole", "Version": "2011-06-15", "RoleArn": profile["role_arn"],
              "RoleSessionName": profile.get("role_session_name") or "mpicloud"}
    if profile.get("external_id"):
        params["ExternalId"] = profile["external_id"]
    body = urllib.parse.urlencode(params).encode()
    url = os.environ.get("AWS_ENDPOINT_URL_STS") or endpoint or f"https://sts.{region}.amazonaws.com"
    status, data, _ = request(Settings(base, region, None), "POST", url.rstrip("/") + "/", body=body,
                              service="sts", headers={"content-type": "application/x-www-form-urlencoded"})
    if status != 200:
        raise S3Error(f"AssumeRole {profile['role_arn']}: {_error(data, status)}")
    root = ET.fromstring(data)
    found = {el.tag.rsplit("}", 1)[-1]: el.text or "" for el in root.iter()}
    return Creds(found["AccessKeyId"], found["SecretAccessKey"], found.get("SessionToken"))


# ---------------------------------------------------------------- SigV4 requests
def _sign(key: bytes, msg: str) -> bytes:
    return hmac.new(key, msg.encode(), hashlib.sha256).digest()


def signed_headers(settings: Settings, method: str, url: str, body_hash: str, service: str,
                   headers: dict[str, str]) -> dict[str, str]:
    """Headers for one request signed with AWS Signature Version 4."""
    parts = urllib.parse.urlsplit(url)
    now = datetime.datetime.now(datetime.UTC)
    amz_date, day = now.strftime("%Y%m%dT%H%M%SZ"), now.strftime("%Y%m%d")
    out = {k.lower(): v for k, v in headers.items()}
    out.update({"host": parts.netloc, "x-amz-date": amz_date, "x-amz-content-sha256": body_hash})
    if settings.creds.token:
        out["x-amz-security-token"] = settings.creds.token
    query = sorted(urllib.parse.parse_qsl(parts.query, keep_blank_values=True))
    canonical_query = "&".join(f"{urllib.parse.quote(k, safe='-_.~')}={urllib.parse.quote(v, safe='-_.~')}"
                               for k, v in query)
    names = sorted(out)
    canonical = "\n".join([method, urllib.parse.quote(parts.path or "/", safe="/-_.~%"), canonical_query,
                           "".join(f"{n}:{out[n].strip()}\n" for n in names), ";".join(names), body_hash])
    scope = f"{day}/{settings.region}/{service}/aws4_request"
    to_sign = "\n".join(["AWS4-HMAC-SHA256", amz_date, scope, hashlib.sha256(canonical.encode()).hexdigest()])
    key = _sign(_sign(_sign(_sign(f"AWS4{settings.creds.secret}".encode(), day), settings.region), service),
                "aws4_request")
    signature = hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()
    out["authorization"] = (f"AWS4-HMAC-SHA256 Credential={settings.creds.key}/{scope}, "
                            f"SignedHeaders={';'.join(names)}, Signature={signature}")
    return out


def request(settings: Settings, method: str, url: str, *, body: bytes = b"", service: str = "s3",
            headers: dict[str, str] | None = None, sink: Any = None) -> tuple[int, bytes, dict[str, str]]:
    """One signed request, retried on throttling, 5xx and connection errors; streams the body to sink if given."""
    headers = dict(headers or {})
    if method in ("PUT", "POST"):  # urllib would send form-urlencoded, which servers may parse as a form
        headers.setdefault("content-type", "application/octet-stream")
    for attempt in range(RETRIES + 1):
        req = urllib.request.Request(url, data=body if method in ("PUT", "POST") else None, method=method,
                                     headers=signed_headers(settings, method, url,
                                                            hashlib.sha256(body).hexdigest(), service,
                                                            headers))
        try:
            with urllib.request.urlopen(req, timeout=120) as resp:
                if sink is not None:
                    while chunk := resp.read(CHUNK):
                        sink.write(chunk)
                    return resp.status, b"", dict(resp.headers)
                return resp.status, resp.read(), dict(resp.headers)
        except urllib.error.HTTPError as exc:
            data = exc.read()
            if (exc.code < 500 and exc.code != 429) or attempt == RETRIES:
                return exc.code, data, dict(exc.headers)
        except (urllib.error.URLError, OSError) as exc:
            if attempt == RETRIES:
                raise S3Error(f"{method} {url}: {exc}") from None
        if sink is not None:
            sink.seek(0)
            sink.truncate()
        time.sleep(min(8.0, 0.5 * 2 ** attempt))
    raise AssertionError("unreachable")


def _error(data: bytes, status: int) -> str:
    try:
        root = ET.fromstring(data)
        code, message = root.findtext("Code") or root.findtext(".//{*}Code"), root.findtext(".//{*}Message")
        return f"{code or status}: {message or ''}".strip()
    except ET.ParseError:
        return f"HTTP {status}"


def _query(params: dict[str, str]) -> str:
    """A query string percent-encoded as SigV4 canonicalises it (a space is %20, never '+')."""
    return urllib.parse.urlencode(params, quote_via=urllib.parse.quote, safe="-_.~")


def object_url(settings: Settings, bucket: str, key: str, query: str = "") -> str:
    """Virtual-hosted style on AWS (path style is deprecated there), path style on custom endpoints."""
    path = urllib.parse.quote(key, safe="/-_.~")
    if settings.endpoint:
        base = f"{settings.endpoint}/{bucket}/{path}"
    else:
        base = f"https://{bucket}.s3.{settings.region}.amazonaws.com/{path}"
    return base + (f"?{query}" if query else "")


def split_url(url: str) -> tuple[str, str]:
    """s3://bucket/key -> (bucket, key)."""
    if not url.startswith("s3://") or "/" not in url[5:]:
        raise S3Error(f"not an s3://bucket/key URL: {url}")
    bucket, _, key = url[5:].partition("/")
    return bucket, key


# ---------------------------------------------------------------- operations
def list_keys(settings: Settings, bucket: str, prefix: str) -> list[tuple[str, int]]:
    """(key, size) of every object under prefix (ListObjectsV2, paginated)."""
    out: list[tuple[str, int]] = []
    token = ""
    while True:
        query = _query({"list-type": "2", "prefix": prefix, **({"continuation-token": token} if token else {})})
        status, data, _ = request(settings, "GET", object_url(settings, bucket, "", query))
        if status != 200:
            raise S3Error(f"list s3://{bucket}/{prefix}: {_error(data, status)}")
        root = ET.fromstring(data)
        for item in root.iterfind("{*}Contents"):
            out.append((item.findtext("{*}Key") or "", int(item.findtext("{*}Size") or 0)))
        token = root.findtext("{*}NextContinuationToken") or ""
        if (root.findtext("{*}IsTruncated") or "false") != "true" or not token:
            return out


def get_object(settings: Settings, bucket: str, key: str, dest: Path) -> int:
    """Download one object to dest through a .part file; returns its size."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    with open(part, "w+b") as sink:
        status, data, _ = request(settings, "GET", object_url(settings, bucket, key), sink=sink)
        if status != 200:
            sink.seek(0)
            raise S3Error(f"get s3://{bucket}/{key}: {_error(data or sink.read(), status)}")
        size = sink.tell()
    os.replace(part, dest)
    return size


def get(url: str, dest_dir: Path) -> None:
    """An object into dest_dir/<name>, or every object under a prefix ending in '/' into dest_dir/<name>/.

    Every local name comes from the key through the one path rule (mpicloud.protocol.paths), checked for
    all keys before anything is written: a key that would land outside dest_dir refuses the whole get."""
    settings = resolve()
    bucket, key = split_url(url)
    if key and not key.endswith("/"):
        size = get_object(settings, bucket, key, _local(dest_dir, key, key.rsplit("/", 1)[-1]))
        print(f"got s3://{bucket}/{key} ({size} bytes)", flush=True)
        return
    folder = _local(dest_dir, key or bucket, key.rstrip("/").rsplit("/", 1)[-1] or bucket)
    wanted = [(name, name[len(key):]) for name, _ in list_keys(settings, bucket, key)]
    wanted = [(name, relative) for name, relative in wanted if relative and not relative.endswith("/")]
    for name, relative in wanted:  # refuse before the first byte is written
        _local(folder, name, relative)
    for name, relative in wanted:
        get_object(settings, bucket, name, _local(folder, name, relative))
        print(f"got s3://{bucket}/{name}", flush=True)


def _local(folder: Path, key: str, relative: str) -> Path:
    """folder/relative by the path rule, or S3Error naming the key."""
    try:
        return safe_join(folder, relative)
    except UnsafePath as exc:
        raise S3Error(f"refusing object key {key!r}: {exc}") from None


def put_object(settings: Settings, bucket: str, key: str, path: Path) -> None:
    """Upload one file: a single PUT, or a multipart upload (aborted on failure) from PART bytes on."""
    size = path.stat().st_size
    if size < PART:
        status, data, _ = request(settings, "PUT", object_url(settings, bucket, key), body=path.read_bytes())
        if status != 200:
            raise S3Error(f"put s3://{bucket}/{key}: {_error(data, status)}")
        return
    status, data, _ = request(settings, "POST", object_url(settings, bucket, key, "uploads="))
    if status != 200:
        raise S3Error(f"put s3://{bucket}/{key}: {_error(data, status)}")
    upload_id = ET.fromstring(data).findtext("{*}UploadId") or ""
    try:
        etags = _upload_parts(settings, bucket, key, path, upload_id)
        xml = "".join(f"<Part><PartNumber>{n}</PartNumber><ETag>{e}</ETag></Part>" for n, e in etags)
        body = f"<CompleteMultipartUpload>{xml}</CompleteMultipartUpload>".encode()
        query = _query({"uploadId": upload_id})
        status, data, _ = request(settings, "POST", object_url(settings, bucket, key, query), body=body,
                                  headers={"content-type": "application/xml"})
        if status != 200 or b"<Error>" in data:
            raise S3Error(f"complete s3://{bucket}/{key}: {_error(data, status)}")
    except BaseException:
        request(settings, "DELETE", object_url(settings, bucket, key, _query({"uploadId": upload_id})))
        raise


def _upload_parts(settings: Settings, bucket: str, key: str, path: Path, upload_id: str) -> list[tuple[int, str]]:
    etags: list[tuple[int, str]] = []
    with open(path, "rb") as fh:
        number = 1
        while chunk := fh.read(PART):
            query = _query({"partNumber": str(number), "uploadId": upload_id})
            status, data, headers = request(settings, "PUT", object_url(settings, bucket, key, query), body=chunk)
            if status != 200:
                raise S3Error(f"put s3://{bucket}/{key} part {number}: {_error(data, status)}")
            etags.append((number, {k.lower(): v for k, v in headers.items()}.get("etag", "")))
            number += 1
    return etags


def put(src: Path, url: str, skip: dict[str, list[int]] | None = None) -> int:
    """Upload every file under src below the URL's prefix, except unchanged ones listed in skip."""
    settings = resolve()
    bucket, prefix = split_url(url)
    if prefix and not prefix.endswith("/"):
        prefix += "/"
    count = 0
    for path in sorted(p for p in src.rglob("*") if p.is_file() and not p.is_symlink()):
        relative, st = path.relative_to(src).as_posix(), path.stat()
        if skip and skip.get(relative) == [st.st_size, st.st_mtime_ns]:
            continue
        key = prefix + relative
        put_object(settings, bucket, key, path)
        count += 1
        print(f"put s3://{bucket}/{key} ({st.st_size} bytes)", flush=True)
    return count


def main(argv: list[str]) -> int:
    """CLI for the runner and for run scripts."""
    try:
        if len(argv) == 3 and argv[0] == "get":
            get(argv[1], Path(argv[2]))
            return 0
        if len(argv) in (3, 5) and argv[0] == "put":
            skip = json.loads(Path(argv[4]).read_text()) if len(argv) == 5 and argv[3] == "--skip" else None
            print(f"{put(Path(argv[1]), argv[2], skip)} file(s) uploaded to {argv[2]}", flush=True)
            return 0
    except (S3Error, OSError, KeyError, ValueError, ET.ParseError) as exc:
        print(f"bucketio: {exc}", file=sys.stderr)
        return 1
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
