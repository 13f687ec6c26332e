"""The full rescore job: read aggregates → score every customer → write the run.

Used by `python -m bot score`, the demo, the benchmarks and (later) the scheduler.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone

import pandas as pd
from sqlalchemy import Engine

from bot.config import Config
from scoring import TIERS, score_customers
from scoring.features import build_features, window_starts
from storage import scores as store
from storage import windows as window_totals

# A run still "running" after this long belongs to a process that died.
STALE_RUN_AFTER = timedelta(hours=6)


class NothingToScore(Exception):
    """The database holds no customers yet."""


@dataclass(frozen=True)
class Timings:
    read: float
    score: float
    write: float
    total: float  # the whole job, from recording the run as started to its commit


def summarise_tiers(features: pd.DataFrame, scored: pd.DataFrame) -> dict:
    """Customers and 12-month revenue per tier, with shares: the run's summary."""
    revenue = features["revenue_12m"]
    total_customers = len(scored)
    total_revenue = float(revenue.sum())
    tiers = {}
    for tier in TIERS:
        members = scored["tier"] == tier
        tier_revenue = float(revenue[members].sum())
        tiers[tier] = {
            "customers": int(members.sum()),
            "customer_share": round(int(members.sum()) / total_customers, 4) if total_customers else 0.0,
            "revenue_12m": round(tier_revenue, 2),
            "revenue_share": round(tier_revenue / total_revenue, 4) if total_revenue else 0.0,
        }
    models = {}
    for model in ("rfm", "sabc", "pyramid", "lifecycle", "churn", "intent"):
        if f"{model}_label" in scored:
            counts = scored[f"{model}_label"].value_counts()
            models[model] = {str(label): int(count) for label, count in counts.items()}
    return {"customers": total_customers, "revenue_12m": round(total_revenue, 2), "tiers": tiers, "models": models}


def _playbook(config: Config, history_run_id: int, features: pd.DataFrame, scored: pd.DataFrame,
              customers: pd.DataFrame, now: datetime | None, deferred: dict | None = None):
    """The run's tier-change messages, tasks and churn alerts, written in its transaction
    (storage.scores.AfterChanges): tasks and alerts are worked out in a thread while the
    run records its tier changes."""
    from notifications.playbook import PlaybookSettings, start_playbook

    settings = PlaybookSettings.from_config(config)
    previous_tier = customers.set_index("customer_id")["tier"]

    def start(connection):
        return start_playbook(connection, settings, history_run_id=history_run_id, features=features, scored=scored,
                              previous_tier=previous_tier, now=now or datetime.now(timezone.utc), deferred=deferred,
                              background=True)

    return start


def full_rescore(engine: Engine, config: Config, as_of: date, now: datetime | None = None, backtest: bool = False
                 ) -> tuple[store.RunOutcome, Timings]:
    """Score every customer as of `as_of` and record the run, with its pushes (see
    notifications.playbook). Raises NothingToScore.

    `backtest`: the scores as if on that day, recorded as a run of kind "backtest" for
    export and nothing else: no hysteresis (every tier is the raw one, so the same day,
    data and config give the same result), no tier history, no customer's tier changed,
    nothing pushed, and lists and incremental rescores go on reading the last full run."""
    import time

    entered = time.perf_counter()
    store.abandon_stale_runs(engine, STALE_RUN_AFTER)
    run_id = store.start_run(engine, as_of, config.scoring_hash(), kind="backtest" if backtest else "full")
    try:
        started = time.perf_counter()
        read_at = datetime.now(timezone.utc)
        # The whole-month totals are kept by the import; only the first run of a month builds them.
        month = window_starts(as_of)["m0"]
        if not backtest:  # a back-test keeps nothing: its month's totals are computed when not kept
            window_totals.ensure_month(engine, month)
        with store.consistent_read(engine, columnar=True) as connection:
            inputs = store.load_inputs(connection, as_of, _intent_rules(config))
        customers, intent_counts = inputs.customers, inputs.intent_counts
        if customers.empty:
            raise NothingToScore("no customers to score: import data first (python -m bot import DIR)")
        read_done = time.perf_counter()
        features = build_features(customers, inputs.aggregates, as_of, inputs.activity)
        del inputs
        previous = None if backtest else customers.set_index("customer_id")[["tier", "pending_tier", "pending_runs"]]
        # Reasons stay compact arrays until the writer builds them a chunk at a time.
        deferred: dict = {}
        scored = score_customers(features, config.scoring, as_of, previous=previous, intent_counts=intent_counts,
                                 deferred=deferred)
        # Off the frame before anything else touches it: pandas copies attrs on every operation.
        reference = scored.attrs.pop("reference", None)
        scored.attrs.clear()
        summary = summarise_tiers(features, scored)
        summary["as_of"] = as_of.isoformat()
        summary["coded_labels"] = config.scoring.coded_labels()
        score_done = time.perf_counter()
        outcome = store.write_run(engine, run_id, scored, features["revenue_12m"], summary,
                                  config.retention.score_runs, reference.to_json() if reference else None,
                                  after_changes=None if backtest else _playbook(
                                      config, run_id, features, scored, customers, now, deferred),
                                  read_at=read_at, deferred=deferred, previous=previous, backtest=backtest)
        finished = time.perf_counter()
    except BaseException as exc:
        store.fail_run(engine, run_id, f"{exc.__class__.__name__}: {exc}")
        raise
    return outcome, Timings(read_done - started, score_done - read_done, finished - score_done, finished - entered)


def _intent_rules(config: Config) -> list:
    return config.scoring.intent.rules if config.scoring.intent.enabled else []


# Past this many touched customers an import asks for a full rescore instead.
INCREMENTAL_LIMIT = 5_000


def incremental_rescore(engine: Engine, config: Config, customer_ids: list[str], as_of: date,
                        now: datetime | None = None) -> store.RunOutcome | None:
    """Rescore only these customers, against the population of the last full run; their
    rows in that run's snapshot are replaced and tier changes recorded. None when there
    is no full run to compare against yet (run `score` first)."""
    from scoring.reference import PopulationReference

    with engine.connect() as connection:
        full = store.latest_run(connection)
    if full is None or not full.reference or not customer_ids:
        return None
    reference = PopulationReference.from_json(full.reference)
    run_id = store.start_run(engine, as_of, config.scoring_hash(), kind="incremental")
    try:
        read_at = datetime.now(timezone.utc)
        with store.consistent_read(engine) as connection:
            inputs = store.load_inputs(connection, as_of, _intent_rules(config), customer_ids)
        customers, intent_counts = inputs.customers, inputs.intent_counts
        if customers.empty:
            store.fail_run(engine, run_id, "none of the customers exist")
            return None
        features = build_features(customers, inputs.aggregates, as_of, inputs.activity)
        previous = customers.set_index("customer_id")[["tier", "pending_tier", "pending_runs"]]
        deferred: dict = {}
        scored = score_customers(features, config.scoring, as_of, previous=previous, intent_counts=intent_counts,
                                 reference=reference, deferred=deferred)
        scored.attrs.clear()
        return store.write_incremental(engine, full.id, run_id, scored, features["revenue_12m"],
                                       after_changes=_playbook(config, run_id, features, scored, customers, now,
                                                               deferred),
                                       deferred=deferred, previous=previous, read_at=read_at,
                                       coded_labels=(full.summary or {}).get("coded_labels"))
    except BaseException as exc:
        store.fail_run(engine, run_id, f"{exc.__class__.__name__}: {exc}")
        raise


def rescore_pending(engine: Engine, config: Config, as_of: date, now: datetime | None = None
                    ) -> store.RunOutcome | None:
    """The incremental rescores an import or the REST API committed data for but did not
    get to write (the process stopped in between): the oldest INCREMENTAL_LIMIT of them.
    None when there are none, or no full run to compare against yet (it will take them)."""
    from sqlalchemy import select

    from storage.models import RescorePending

    with engine.connect() as connection:
        waiting = list(connection.execute(select(RescorePending.customer_id).order_by(RescorePending.queued_at)
                                          .limit(INCREMENTAL_LIMIT)).scalars())
    if not waiting:
        return None
    return incremental_rescore(engine, config, waiting, as_of, now)
