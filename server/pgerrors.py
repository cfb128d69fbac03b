"""PostgreSQL errors as one line a person can act on (unreachable, refused login, missing database, rights)."""

from __future__ import annotations

import psycopg

HINTS = (  # (text libpq or the server says, what to do), first match wins
    ("password authentication failed", "wrong user or password"),
    ("no password supplied", "the server wants a password; put it in the URL, PGPASSWORD or ~/.pgpass"),
    ("pg_hba.conf", "the server does not let this user connect from here (pg_hba.conf)"),
    ("does not exist", "create it first (createdb, or CREATE DATABASE/ROLE) or fix the URL"),
    ("connection refused", "cannot reach the PostgreSQL server (is it running, on that host and port?)"),
    ("could not translate host name", "cannot reach the PostgreSQL server (unknown host name)"),
    ("failed to resolve host", "cannot reach the PostgreSQL server (unknown host name or bad port)"),
    ("timeout expired", "cannot reach the PostgreSQL server (connection timed out)"),
    ("no such file or directory", "cannot reach the PostgreSQL server (no socket there; is it running?)"),
    ("permission denied", "the user lacks a right fedrecon needs (to create tables in its schema, or to write)"),
    ("read-only", "the database is read-only (a standby?); the server needs to write it"),
    ("disk full", "the database server's disk is full"),
)


def explain(error: psycopg.Error) -> str:
    """A psycopg error as one line: what to do, then libpq's own words (without their line breaks)."""
    text = " ".join(str(error).split())
    lowered = text.lower()
    for needle, hint in HINTS:
        if needle in lowered:
            return f"{hint} ({text})"
    return text
