"""Where a request came from, written so an analyst can tell what a client may have forged.

The API server lists ``sourceIPs`` as the ``X-Forwarded-For`` addresses, then ``X-Real-Ip``,
then the address its connection came from, and documents that every address but the last can
be set by the client. ``source_ip`` (the first) is therefore the client's own claim when a
header is present: shown alone, a caller forging ``X-Forwarded-For: 8.8.4.4`` would appear to
come from 8.8.4.4 in every table an analyst reads. The rules judge every address (see
:mod:`detector.rules.iplists`); what people read names the connection's address first.
"""

from __future__ import annotations

import polars as pl

#: Between the connection's address and the addresses the client says it forwards for.
CLAIM = "says it forwards for"
#: Beside an address named alone that came from a header (a rule's reason).
CLAIMED = "claimed by the client in a forwarding header"


def connection_address(*, ips: str = "source_ips", first: str = "source_ip") -> pl.Expr:
    """The address the API server's connection came from: the last of ``sourceIPs``, the
    only one a client cannot set (``first`` where the list is missing)."""
    return pl.coalesce(pl.col(ips).list.drop_nulls().list.last(), pl.col(first))


def shown_source(*, ips: str = "source_ips", first: str = "source_ip") -> pl.Expr:
    """The request's source as people read it: ``10.0.5.5 (says it forwards for 8.8.4.4)``
    when headers named other addresses, else the one address (null when none is known).

    Rows written before ``source_ips`` existed, or read without it, fall back to ``first``.
    """
    addresses = pl.col(ips).list.drop_nulls()  # a null entry said "forwards for )" (review)
    count = addresses.list.len()
    claimed = addresses.list.head(count - 1).list.join(", ")
    return (
        pl.when(count > 1)
        .then(pl.format("{} ({} {})", addresses.list.last(), pl.lit(CLAIM), claimed))
        .otherwise(pl.coalesce(addresses.list.first(), pl.col(first)))
        .alias("source")
    )
