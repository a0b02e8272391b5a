"""Which S3 objects earlier runs ingested, so nightly runs read only new ones.

Kept in ``LAKE/_state/ingested-objects/`` as small JSON files, one per flush that finished
objects, each named by time and content digest and written atomically through
:mod:`detector.lake.table`. An object is recorded only after everything read from it
(events *and* quarantined lines) is durable in the lake: a run killed midway records
nothing for the objects it did not finish, and reading them again is harmless (the lake
deduplicates both tables).

An object is known by the SHA-256 of its URI and its ETag; the URI itself is kept for
people with credentials redacted (``exports/?access_token=...`` is a key S3 allows), as
everything the lake keeps. Files written before held the URI alone: they are read as
its digest.
"""

from __future__ import annotations

import hashlib
import time
from datetime import UTC, datetime

import orjson
import polars as pl

from detector.events.redact import redact_text_columns
from detector.lake.events import Lake
from detector.lake.table import list_files, put_atomic, read_bytes

MANIFEST_DIR = "ingested-objects"


def uri_digest(uri: str) -> str:
    return hashlib.sha256(uri.encode("utf-8", "surrogatepass")).hexdigest()


class ObjectManifest:
    """The set of (uri, ETag) pairs ingested into one lake, as (SHA-256 of the uri, ETag)."""

    def __init__(self, lake: Lake) -> None:
        self.lake = lake
        self._dir = lake.state_path(MANIFEST_DIR)
        self._done: set[tuple[str, str]] | None = None

    def done(self) -> set[tuple[str, str]]:
        if self._done is None:
            seen: set[tuple[str, str]] = set()
            for path in list_files(self.lake.loc, self._dir, ".json"):
                for item in orjson.loads(read_bytes(self.lake.loc, path)).get("objects", []):
                    digest = item.get("uri_sha256") or uri_digest(item["uri"])
                    seen.add((digest, item["etag"]))
            self._done = seen
        return self._done

    def __contains__(self, obj: tuple[str, str]) -> bool:
        """Whether the object (uri, ETag) was ingested."""
        uri, etag = obj
        return (uri_digest(uri), etag) in self.done()

    def record(self, objects: list[tuple[str, str]]) -> None:
        """Remember ``objects`` (uri, ETag) as ingested; call only once their rows are
        flushed."""
        if not objects:
            return
        # One pass over the flush's URIs (a run records thousands of objects), not one each.
        uris = pl.DataFrame({"uri": [u for u, _ in objects]}, schema={"uri": pl.String})
        shown = redact_text_columns(uris, ["uri"])[0]["uri"]
        items = [
            {"uri_sha256": uri_digest(u), "uri": r, "etag": e}
            for (u, e), r in zip(objects, shown, strict=True)
        ]
        body = orjson.dumps({"recorded_at": datetime.now(UTC).isoformat(), "objects": items})
        name = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
        digest = hashlib.sha1(body).hexdigest()[:12]
        put_atomic(self.lake.loc, f"{self._dir}/{name}-{digest}.json", body)
        self.done().update((uri_digest(u), e) for u, e in objects)
