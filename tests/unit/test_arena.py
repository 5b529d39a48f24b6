"""The arena's vote store (SQLite, WAL), its statistics, the login throttle and the profile's checks."""

from __future__ import annotations

import csv
import io
import multiprocessing as mp
import random
import sqlite3
from pathlib import Path

import pytest

from core.arena import BASE, ArenaError, Round, VoteStore, pick_round, stats_rows, wilson_interval
from core.auth import LoginThrottle, refusal
from core.config import AppConfig, ConfigError, DemoProfile

VOTERS, VOTES_EACH = 8, 50


def _voter(args: tuple[str, int, int, int]) -> list[int]:
    """One voter process: ``count`` votes on a fixed pair, each its own transaction; returns the vote ids."""
    path, voter, start, count = args
    store = VoteStore(Path(path))
    rng = random.Random(voter)
    ids = []
    for _ in range(count):
        rnd = Round(BASE, "tuned") if rng.random() < 0.5 else Round("tuned", BASE)
        ids.append(store.record(rnd, rng.choice(["a", "b", "tie", "both_bad"]), profile=f"voter{voter}"))
    return ids


def _run_voters(path: Path, half: int) -> list[int]:
    ctx = mp.get_context("spawn")  # real processes: SQLite's file locking is what is under test
    with ctx.Pool(VOTERS) as pool:
        return [i for ids in pool.map(_voter, [(str(path), v, 0, half) for v in range(VOTERS)]) for i in ids]


def test_eight_concurrent_voters_lose_nothing_across_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "arena.sqlite"
    VoteStore(path)  # the "server" creates the database
    first = _run_voters(path, VOTES_EACH // 2)
    # Restart: a new store object over the same file, as a new server process would open it.
    store = VoteStore(path)
    assert store.count() == VOTERS * VOTES_EACH // 2
    second = _run_voters(path, VOTES_EACH - VOTES_EACH // 2)
    ids = first + second
    assert len(ids) == len(set(ids)) == VOTERS * VOTES_EACH
    assert VoteStore(path).count() == VOTERS * VOTES_EACH
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        per_voter = dict(db.execute("SELECT profile, COUNT(*) FROM votes GROUP BY profile").fetchall())
    assert per_voter == {f"voter{v}": VOTES_EACH for v in range(VOTERS)}
    (pair,) = store.stats()
    assert pair.votes == VOTERS * VOTES_EACH
    assert pair.first_wins + pair.second_wins + pair.ties + pair.both_bad == pair.votes


def test_stats_count_the_winner_whichever_side_it_was_shown_on(tmp_path: Path) -> None:
    store = VoteStore(tmp_path / "a.sqlite")
    store.record(Round(BASE, "tuned"), "b")  # tuned wins, shown as B
    store.record(Round("tuned", BASE), "a")  # tuned wins, shown as A
    store.record(Round("tuned", BASE), "b")  # base wins
    store.record(Round("tuned", BASE), "tie")
    store.record(Round("x", "y"), "both_bad")
    stats = {(p.first, p.second): p for p in store.stats()}
    p = stats[(BASE, "tuned")]
    assert (p.votes, p.first_wins, p.second_wins, p.ties, p.both_bad) == (4, 1, 2, 1, 0)
    assert p.first_win_rate == pytest.approx(1 / 3)
    low, high = p.first_ci95
    assert 0 < low < 1 / 3 < high < 1
    rows = stats_rows(store.stats())
    assert rows[0][0] == "base model vs tuned" and rows[0][6] == "33%"
    table = list(csv.DictReader(io.StringIO(store.to_csv())))
    assert [r["winner"] for r in table] == ["tuned", "tuned", BASE, "tie", "both_bad"]
    assert all(r["prompt"] == "" for r in table)  # no prompt given, none kept


def test_wilson_interval_matches_known_values() -> None:
    low, high = wilson_interval(8, 10)
    assert low == pytest.approx(0.4902, abs=1e-3) and high == pytest.approx(0.9433, abs=1e-3)
    assert wilson_interval(0, 0) is None
    low, high = wilson_interval(0, 5)
    assert low == 0.0 and 0.4 < high < 0.5


def test_bad_votes_and_rounds_are_refused_in_words(tmp_path: Path) -> None:
    store = VoteStore(tmp_path / "a.sqlite")
    with pytest.raises(ArenaError, match="Unknown vote 'c'"):
        store.record(Round("x", "y"), "c")
    with pytest.raises(ArenaError, match="needs two models"):
        pick_round([BASE])
    seen = {pick_round([BASE, "t"], random.Random(s)) for s in range(20)}
    assert seen == {Round(BASE, "t"), Round("t", BASE)}  # both orders happen


def test_retention_deletes_old_votes(tmp_path: Path) -> None:
    store = VoteStore(tmp_path / "a.sqlite", retention_days=7)
    store.record(Round("x", "y"), "a")
    assert store.prune(now=10**10) == 1 and store.count() == 0


def test_login_throttle_grows_then_locks_out_and_success_resets() -> None:
    now = [0.0]
    t = LoginThrottle(max_failures=5, window_s=300, base_delay_s=1.0, clock=lambda: now[0])
    assert t.wait_s("ip") == 0
    t.record("ip", ok=False)
    assert t.wait_s("ip") == pytest.approx(1.0)
    now[0] += 1.0
    t.record("ip", ok=False)
    assert t.wait_s("ip") == pytest.approx(2.0)  # doubled
    assert t.wait_s("other") == 0  # per client
    for _ in range(3):
        now[0] += 10
        t.record("ip", ok=False)
    assert t.wait_s("ip") == pytest.approx(300 - 31)  # locked until the oldest failure leaves the window
    now[0] += 300
    assert t.wait_s("ip") < 300 - 31
    t.record("ip", ok=True)
    assert t.wait_s("ip") == 0


def test_refusal_names_the_builder_role() -> None:
    err = refusal("delete")
    assert "Only the demo's builder can delete adapters: sign in as builder" in str(err)
    assert err.role_hint == "builder"


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"accent_color": "blue"}, "accent_color='blue' must look like #1f6feb"),
        ({"default_adapter": "x"}, "default_adapter='x' is not in audience_adapters"),
        ({"tabs": ["finetune"]}, "not audience tabs"),
        ({"tabs": ["classify"]}, "at least two classify_labels"),
        ({"retention_days": 0}, "retention_days=0 must be a whole number"),
        ({"classify_method": "magic"}, "classify_method='magic'"),
        ({"audience_adapters": [""]}, "audience_adapters must be a list of non-empty strings"),
    ],
)
def test_profile_checks_say_what_is_wrong(kwargs: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        DemoProfile(**kwargs)


def test_profile_round_trips_through_the_home_and_names_bad_files(demoforge_home: Path, tmp_path: Path) -> None:
    p = DemoProfile(title="Acme", audience_adapters=["t"], default_adapter="t", store_prompts=True)
    path = p.save("acme demo")
    assert path.name == "acme-demo.yaml"
    assert DemoProfile.load("acme-demo") == p
    assert "keeps the prompt" in p.notice
    # No arena shown (switched off, or no adapter to set against the base): the notice does not speak of votes.
    for quiet in (DemoProfile(title="Acme", arena=False, audience_adapters=["t"], default_adapter="t"), DemoProfile()):
        assert not quiet.arena_shown and quiet.notice == "Conversations are not stored."
    bad = tmp_path / "bad.yaml"
    bad.write_text("title: X\naccent_colour: '#ffffff'\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="unknown keys \\['accent_colour'\\]"):
        DemoProfile.load(bad)
    bad.write_text("title: X\nlogo: missing.png\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="logo 'missing.png' not found"):
        DemoProfile.load(bad)


def test_builder_password_must_differ_from_the_audience_one() -> None:
    with pytest.raises(ConfigError, match="must differ"):
        AppConfig(auth=("a", "b"), builder_auth=("a", "b"))
