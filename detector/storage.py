"""One filesystem layer for the lake, local folder or ``s3://``.

Everything that touches the lake goes through here so that the AWS credential chain
(``AWS_PROFILE``, environment, IRSA) and ``AWS_ENDPOINT_URL`` are honoured the same way by
s3fs, boto3 and polars. Writes are atomic: a temporary name then a rename locally, a single
PUT on S3 (S3 objects appear whole or not at all).
"""

from __future__ import annotations

import fnmatch
import functools
import os
import re
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from detector.errors import EXIT_USAGE, RuntimeFailure
from detector.userfiles import remove_stale_temps, replace_atomically

if TYPE_CHECKING:
    import fsspec


class StorageError(RuntimeFailure):
    """A lake location cannot be read or written (missing credentials, no such bucket...)."""


class MissingBucket(StorageError):
    """The lake's S3 bucket does not exist: a configuration error, reported at once."""

    exit_code = EXIT_USAGE


class MissingLake(StorageError):
    """A command that reads the lake was given a local folder that does not exist."""

    exit_code = EXIT_USAGE


@functools.lru_cache(maxsize=64)
def _bucket_checked(bucket: str, endpoint: str | None, setting: str) -> bool:
    import boto3
    from botocore.config import Config
    from botocore.exceptions import BotoCoreError, ClientError

    # No retries: a missing bucket is an answer, not a transient failure.
    client = boto3.client(
        "s3", endpoint_url=endpoint, config=Config(retries={"max_attempts": 1, "mode": "standard"})
    )
    try:
        client.head_bucket(Bucket=bucket)
    except ClientError as exc:
        code = str(exc.response.get("Error", {}).get("Code"))
        if code in ("404", "NoSuchBucket", "NotFound"):
            raise MissingBucket(
                f"S3 bucket {bucket!r} does not exist (create it, or fix {setting})"
            ) from None
        # 403 and the like: we may still be allowed to use our prefix; let the real
        # request say what is wrong.
    except BotoCoreError:
        pass
    return True


def require_bucket(uri: str, setting: str = "--lake / lake in detect.toml") -> None:
    """Raise :class:`MissingBucket` (exit 2) when ``uri`` is on S3 and its bucket is absent;
    the message names ``setting``, where the user gave it."""
    if is_s3(uri):
        _bucket_checked(uri.split("://", 1)[1].split("/", 1)[0], endpoint_url(), setting)


def is_s3(uri: str) -> bool:
    return uri.startswith("s3://") or uri.startswith("s3a://")


#: What S3 accepts as a bucket in a request (botocore's own check, which would otherwise
#: fail deep in a listing), or an access point ARN.
_BUCKET = re.compile(r"[a-zA-Z0-9.\-_]{1,255}|arn:.+")
#: A temporary file :meth:`Location.put_atomic` writes beside its target.
_BESIDE_TEMP = re.compile(r"\.tmp-[0-9a-f]{32}")


def s3_uri_problem(uri: str) -> str | None:
    """Why an ``s3://`` URI cannot name a bucket (none given, or not a bucket name), said
    for an error line; None when it can, or when ``uri`` is not on S3. ``S3://`` is
    refused rather than taken for a local folder named ``S3:``; ``s3://`` alone would
    list all of S3."""
    scheme, sep, rest = uri.partition("://")
    if not sep:
        return None
    if scheme.lower() not in ("s3", "s3a"):
        # `file:///x` was taken as a local folder named `file:` (found by review)
        return f"{uri!r}: give a local path or s3://bucket/prefix ({scheme}:// is not read)"
    if scheme not in ("s3", "s3a"):
        return f"{uri!r}: write the scheme in lower case ({scheme.lower()}://)"
    bucket = rest.split("/", 1)[0]
    if not bucket:
        return f"{uri!r} names no bucket: s3://bucket/prefix"
    if not _BUCKET.fullmatch(bucket):
        return f"{bucket!r} is not an S3 bucket name (letters, digits, '.', '-', '_')"
    return None


def endpoint_url() -> str | None:
    """The S3/CloudWatch endpoint override (moto, LocalStack, VPC endpoints)."""
    return os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or None


@functools.lru_cache(maxsize=4)
def _s3fs(endpoint: str | None) -> Any:
    import s3fs

    client_kwargs: dict[str, Any] = {}
    if endpoint:
        client_kwargs["endpoint_url"] = endpoint
    # use_listings_cache=False: the lake is written by other processes too (exporters,
    # cron runs); a stale listing would make dedup miss files.
    return s3fs.S3FileSystem(client_kwargs=client_kwargs, use_listings_cache=False)


def filesystem(uri: str) -> fsspec.AbstractFileSystem:
    """The fsspec filesystem for a path or URI (fsspec imported here: 0.12 s, which a
    command checking a lake URI before it reads anything need not pay)."""
    if is_s3(uri):
        return _s3fs(endpoint_url())
    import fsspec

    return fsspec.filesystem("file")


def strip_protocol(uri: str) -> str:
    """Path as fsspec methods want it (``bucket/key`` for S3, absolute path locally)."""
    if is_s3(uri):
        return uri.split("://", 1)[1]
    return os.path.abspath(uri)


def join(*parts: str) -> str:
    """Join URI parts with ``/`` (also on local paths: the lake layout is URI-shaped)."""
    head, *rest = parts
    return "/".join([head.rstrip("/"), *(p.strip("/") for p in rest if p)])


def full_uri(uri: str, path: str) -> str:
    """Turn an fsspec path (``bucket/key``) back into a URI like the one given."""
    return f"s3://{path}" if is_s3(uri) else path


def polars_storage_options(uri: str) -> dict[str, str] | None:
    """Credentials and endpoint for polars' native cloud reader, from the boto3 chain."""
    if not is_s3(uri):
        return None
    import boto3

    session = boto3.Session()
    creds = session.get_credentials()
    if creds is None:
        raise StorageError(
            "no AWS credentials found (set AWS_PROFILE, AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY "
            "or run with an IAM role)"
        )
    frozen = creds.get_frozen_credentials()
    opts = {
        "aws_access_key_id": frozen.access_key,
        "aws_secret_access_key": frozen.secret_key,
        "aws_region": session.region_name or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1",
    }
    if frozen.token:
        opts["aws_session_token"] = frozen.token
    if endpoint := endpoint_url():
        opts["aws_endpoint_url"] = endpoint
        if endpoint.startswith("http://"):
            opts["aws_allow_http"] = "true"
    return opts


@dataclass(frozen=True)
class Location:
    """A lake root resolved once: the filesystem plus the root path in fsspec form."""

    uri: str
    fs: fsspec.AbstractFileSystem
    root: str

    @classmethod
    def of(cls, uri: str) -> Location:
        uri = uri.rstrip("/") if len(uri) > 1 else uri
        return cls(uri=uri, fs=filesystem(uri), root=strip_protocol(uri))

    @property
    def is_s3(self) -> bool:
        return is_s3(self.uri)

    def path(self, *parts: str) -> str:
        return join(self.root, *parts)

    def uri_of(self, path: str) -> str:
        return full_uri(self.uri, path)

    def put_atomic(self, path: str, data: bytes, *, temp_dir: str | None = None) -> None:
        """Write ``data`` so readers see the whole object or nothing.

        Locally: written to a temporary file in ``temp_dir`` (default: beside ``path``, as
        ``.tmp-*``, which :meth:`glob` skips), flushed to disk, renamed over ``path``. A
        failure removes the temporary file, and a write that runs out of space names
        ``path``. Beside ``path``, temporary files a killed writer left are removed once
        an hour old (a model folder, dead letters, a Security Lake folder). The lake keeps
        its temporary files out of the table folders (:func:`detector.lake.table.put_atomic`).
        """
        if self.is_s3:
            self.fs.pipe_file(path, data)
            return
        directory = os.path.dirname(path)
        os.makedirs(directory, exist_ok=True)
        if temp_dir is not None:
            os.makedirs(temp_dir, exist_ok=True)
        else:
            remove_stale_temps(directory, _BESIDE_TEMP)
        tmp = os.path.join(temp_dir or directory, f".tmp-{uuid.uuid4().hex}")
        replace_atomically(path, data, tmp)

    def glob(self, *parts: str) -> list[str]:
        """Paths under the root whose each level below it matches a shell pattern of
        ``parts`` (``"date=*", "*.parquet"``); temp files never match.

        The root is listed, never matched: a folder named ``models-[ab]`` is that folder,
        not a pattern that also finds ``models-a`` (whose model files a training into the
        other then pruned). One listing per folder level, as :mod:`detector.lake.table`
        lists the lake's own folders.
        """
        level = [self.root]
        for part in parts:
            found = []
            for folder in level:
                try:
                    names = self.fs.ls(folder, detail=False)
                except (FileNotFoundError, NotADirectoryError):
                    continue
                found += [
                    p
                    for p in names
                    if p.rstrip("/") != folder.rstrip("/")  # a file lists itself
                    and fnmatch.fnmatchcase(p.rstrip("/").rsplit("/", 1)[-1], part)
                ]
            level = found
        return sorted(p for p in level if "/.tmp-" not in p)

    def exists(self, path: str) -> bool:
        return self.fs.exists(path)
