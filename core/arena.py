"""The blind A/B arena's core: pick an anonymous pair, keep votes in SQLite, and score each pair.

Votes live in ``arena.sqlite`` in the DemoForge home, in WAL mode: readers never block the writer, each vote is
one short ``BEGIN IMMEDIATE`` transaction (concurrent voters queue on SQLite's lock, with a busy timeout, instead of
failing), and a committed vote survives a crash or restart.
"""

from __future__ import annotations

import csv
import io
import math
import random
import sqlite3
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from core import store
from core.errors import DemoForgeError

Verdict = Literal["a", "b", "tie", "both_bad"]
VERDICTS: dict[str, str] = {"a": "A is better", "b": "B is better", "tie": "Tie", "both_bad": "Both are bad"}
BASE = "base model"
"""The name the arena gives the chat base without an adapter."""
CSV_COLUMNS = ["id", "time_utc", "model_a", "model_b", "verdict", "winner", "profile", "prompt"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS votes (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    ts REAL NOT NULL,
    model_a TEXT NOT NULL,
    model_b TEXT NOT NULL,
    verdict TEXT NOT NULL CHECK (verdict IN ('a', 'b', 'tie', 'both_bad')),
    profile TEXT NOT NULL DEFAULT '',
    prompt TEXT
);
CREATE INDEX IF NOT EXISTS votes_ts ON votes (ts);
"""


class ArenaError(DemoForgeError, ValueError):
    """An arena request that cannot be served (a bad verdict, no pair to compare); the message says why."""


@dataclass(frozen=True)
class Round:
    """One blind round: which model answers as A and which as B (the visitor sees neither name until voting)."""

    model_a: str
    model_b: str


def pick_round(models: Sequence[str], rng: random.Random | None = None) -> Round:
    """Two different models from ``models`` (the base's name and adapter names), in random order.

    Raises:
        ArenaError: fewer than two models.
    """
    names = list(dict.fromkeys(models))
    if len(names) < 2:
        raise ArenaError("The arena needs two models to compare: add an adapter to the profile's audience_adapters.")
    a, b = (rng or random.SystemRandom()).sample(names, 2)
    return Round(a, b)


@dataclass(frozen=True)
class PairStats:
    """Votes on one pair of models (named in sorted order, whichever side they were shown on)."""

    first: str
    second: str
    votes: int
    first_wins: int
    second_wins: int
    ties: int
    both_bad: int

    @property
    def decisive(self) -> int:
        """Votes that chose a side."""
        return self.first_wins + self.second_wins

    @property
    def first_win_rate(self) -> float | None:
        """Share of decisive votes that ``first`` won; None before any."""
        return self.first_wins / self.decisive if self.decisive else None

    @property
    def first_ci95(self) -> tuple[float, float] | None:
        """95% Wilson score interval of ``first_win_rate``."""
        return wilson_interval(self.first_wins, self.decisive)


def wilson_interval(successes: int, n: int, z: float = 1.959963984540054) -> tuple[float, float] | None:
    """Wilson score interval for a binomial proportion (good at small n and near 0 or 1, unlike p +- z*se)."""
    if n <= 0:
        return None
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


class VoteStore:
    """Arena votes in SQLite (WAL). One connection per call: safe from any thread or process.

    Args:
        path: the database file; default ``arena.sqlite`` in the DemoForge home.
        retention_days: votes older than this are deleted on open and on every vote; None keeps them.
    """

    def __init__(self, path: Path | None = None, retention_days: int | None = None) -> None:
        self.path = Path(path) if path is not None else store.home() / "arena.sqlite"
        self.retention_days = retention_days
        with self._connect() as db:
            # WAL is a property of the file: set once, every later connection uses it.
            db.execute("PRAGMA journal_mode=WAL")
            db.executescript(_SCHEMA)
        self.prune()

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, timeout=30.0, isolation_level=None)  # autocommit; explicit BEGIN below
        db.execute("PRAGMA busy_timeout=30000")
        db.execute("PRAGMA synchronous=NORMAL")  # in WAL mode: durable across an app crash, fast per vote
        return db

    def prune(self, now: float | None = None) -> int:
        """Delete votes older than the retention period; returns how many went."""
        if not self.retention_days:
            return 0
        cutoff = (now if now is not None else time.time()) - self.retention_days * 86400
        db = self._connect()
        try:
            return db.execute("DELETE FROM votes WHERE ts < ?", (cutoff,)).rowcount
        finally:
            db.close()

    def record(self, rnd: Round, verdict: str, profile: str = "", prompt: str | None = None) -> int:
        """Store one vote; returns its id.

        Raises:
            ArenaError: a verdict other than a, b, tie or both_bad.
        """
        if verdict not in VERDICTS:
            raise ArenaError(f"Unknown vote {verdict!r}: vote one of {', '.join(VERDICTS)}.")
        db = self._connect()
        try:
            db.execute("BEGIN IMMEDIATE")
            cur = db.execute(
                "INSERT INTO votes (ts, model_a, model_b, verdict, profile, prompt) VALUES (?, ?, ?, ?, ?, ?)",
                (time.time(), rnd.model_a, rnd.model_b, verdict, profile, prompt),
            )
            if self.retention_days:
                db.execute("DELETE FROM votes WHERE ts < ?", (time.time() - self.retention_days * 86400,))
            db.execute("COMMIT")
            return int(cur.lastrowid)
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise
        finally:
            db.close()

    def count(self) -> int:
        """Votes stored."""
        db = self._connect()
        try:
            return int(db.execute("SELECT COUNT(*) FROM votes").fetchone()[0])
        finally:
            db.close()

    def stats(self) -> list[PairStats]:
        """Per pair of models (sorted names), the vote counts; most-voted pairs first."""
        db = self._connect()
        try:
            rows = db.execute("SELECT model_a, model_b, verdict, COUNT(*) FROM votes GROUP BY 1, 2, 3").fetchall()
        finally:
            db.close()
        acc: dict[tuple[str, str], list[int]] = {}
        for model_a, model_b, verdict, n in rows:
            first, second = sorted((model_a, model_b))
            c = acc.setdefault((first, second), [0, 0, 0, 0, 0])  # votes, first wins, second wins, ties, both bad
            c[0] += n
            if verdict in ("a", "b"):
                winner = model_a if verdict == "a" else model_b
                c[1 if winner == first else 2] += n
            else:
                c[3 if verdict == "tie" else 4] += n
        out = [PairStats(f, s, *c) for (f, s), c in acc.items()]
        return sorted(out, key=lambda p: (-p.votes, p.first, p.second))

    def to_csv(self) -> str:
        """Every vote as CSV text (one row per vote, oldest first), with the winner's name spelled out."""
        db = self._connect()
        try:
            rows = db.execute("SELECT id, ts, model_a, model_b, verdict, profile, prompt FROM votes ORDER BY id")
            buf = io.StringIO()
            out = csv.writer(buf)
            out.writerow(CSV_COLUMNS)
            for vid, ts, a, b, verdict, profile, prompt in rows:
                winner = a if verdict == "a" else b if verdict == "b" else verdict
                when = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))
                out.writerow([vid, when, a, b, verdict, winner, profile, prompt or ""])
            return buf.getvalue()
        finally:
            db.close()


def stats_rows(stats: Sequence[PairStats]) -> list[list[str | int]]:
    """Table rows for the builder: pair, votes, wins, ties, both bad, win rate and its 95% CI."""
    rows: list[list[str | int]] = []
    for p in stats:
        rate, ci = p.first_win_rate, p.first_ci95
        rows.append(
            [
                f"{p.first} vs {p.second}",
                p.votes,
                p.first_wins,
                p.second_wins,
                p.ties,
                p.both_bad,
                "-" if rate is None else f"{rate:.0%}",
                "-" if ci is None else f"{ci[0]:.0%} - {ci[1]:.0%}",
            ]
        )
    return rows


STATS_HEADERS = ["pair (first vs second)", "votes", "first wins", "second wins", "ties", "both bad"]
STATS_HEADERS += ["first's win rate (decisive votes)", "95% CI (Wilson)"]
