"""Reasons built a chunk at a time (scoring.deferred, what a full run does) equal the
reasons built for every customer at once, document for document."""

from __future__ import annotations

from datetime import date

import numpy as np
import pandas as pd
import pytest

from scoring.deferred import plain_documents
from scoring.features import build_features
from scoring.generator import generate_company
from scoring.pipeline import ScoringParams, score_customers
from storage import scores as store
from storage.importer import run_import

AS_OF = date(2026, 11, 20)


def materialise(frame, deferred, positions):
    """`frame.iloc[positions]` with the deferred columns built for those rows."""
    part = frame.iloc[positions]
    return part.assign(**{column: pd.Series(values.rows(positions), index=part.index, dtype=object)
                          for column, values in deferred.items()})
def documents(scored) -> dict[str, list[dict]]:
    """A snapshot's labels, scores and reasons per row, as plain dicts."""
    return {name: plain_documents(frame) for name, frame in store.snapshot_frames(scored).items()}


RULE = {"name": "big", "when": "ltv > 100000", "then": {"set_label": {"value_matrix": "star"}, "add_tags": ["大"]}}


@pytest.fixture
def features_and_counts(engine, tmp_path):
    folder = tmp_path / "co"
    generate_company(folder, customers=400, seed=11, as_of=AS_OF, orders_per_customer=12, activities_per_customer=30)
    run_import(engine, [folder])
    rules = ScoringParams().intent.rules
    with store.consistent_read(engine) as connection:
        customers = store.load_customers(connection)
        aggregates = store.load_aggregates(connection, AS_OF)
        activity = store.load_activity(connection, AS_OF)
        counts = store.load_intent_counts(connection, AS_OF, rules)
    return build_features(customers, aggregates, AS_OF, activity), counts


@pytest.mark.parametrize("rules", [[], [RULE]])
def test_deferred_reasons_equal_eager_reasons(features_and_counts, rules):
    features, counts = features_and_counts
    params = ScoringParams.model_validate({"rules": {"rules": rules}})
    eager = score_customers(features, params, AS_OF, intent_counts=counts)
    deferred: dict = {}
    lazy = score_customers(features, params, AS_OF, intent_counts=counts, deferred=deferred)
    eager.attrs.clear()
    lazy.attrs.clear()
    assert sorted(deferred) == sorted(["reasons", "rfm_reasons", "sabc_reasons", "pyramid_reasons",
                                       "churn_reasons", "lifecycle_reasons"])
    assert not set(deferred) & set(lazy.columns)
    assert list(lazy.index) == list(eager.index)
    whole = documents(eager)
    for start in range(0, len(eager), 37):
        part = documents(materialise(lazy, deferred, slice(start, start + 37)))
        for document in whole:
            assert part[document] == whole[document][start:start + 37]
    positions = np.random.default_rng(3).permutation(len(eager))[:50]
    for column, values in deferred.items():
        assert values.rows(positions) == [eager[column].iat[p] for p in positions]


@pytest.mark.parametrize("chunk", [7, 100_000])
def test_a_run_written_in_chunks_stores_the_same_rows(engine, features_and_counts, monkeypatch, chunk):
    """Several chunks: the next chunk is built in a helper thread while one is inserted.
    Read back, every customer's labels, scores and reasons are the eager run's, as plain
    JSON values; the churn score is a column too."""
    import orjson
    from sqlalchemy import select

    from storage.models import ScoreReasonChunk, ScoreSnapshot

    monkeypatch.setattr(store, "SNAPSHOT_CHUNK", chunk)
    features, counts = features_and_counts
    params = ScoringParams()
    eager = score_customers(features, params, AS_OF, intent_counts=counts)
    eager.attrs.clear()
    deferred: dict = {}
    lazy = score_customers(features, params, AS_OF, intent_counts=counts, deferred=deferred)
    lazy.attrs.clear()
    run_id = store.start_run(engine, AS_OF, "test")
    store.write_run(engine, run_id, lazy, features["revenue_12m"], {"customers": len(lazy)}, 3, deferred=deferred)
    expected = documents(eager)
    with engine.connect() as connection:
        table = ScoreSnapshot.__table__
        rows = connection.execute(select(table).where(table.c.run_id == run_id)).all()
        chunks = connection.execute(select(ScoreReasonChunk.customers).where(
            ScoreReasonChunk.run_id == run_id).order_by(ScoreReasonChunk.chunk)).scalars().all()
        stored = {row.customer_id: row for row in rows}
        reader = store.StoredSnapshot().fetch(connection, run_id, [(row.customer_id, None, row.reasons_chunk)
                                                                   for row in rows])
        every_reasons = reader.of([(row.customer_id, row.reasons, row.reasons_chunk) for row in rows])
        read_back = {document: dict(zip(stored, reader.documents(
            [(row.customer_id, getattr(row, document), row.reasons_chunk) for row in rows], document)))
            for document in ("labels", "scores")}
    assert chunks == [min(chunk, len(eager) - start) for start in range(0, len(eager), chunk)]
    reasons_of = {row.customer_id: reasons for row, reasons in zip(rows, every_reasons)}
    assert len(stored) == len(eager)
    for position, customer_id in enumerate(eager.index):
        row = stored[customer_id]
        assert row.tier == eager["tier"].iat[position]
        assert row.churn_score == pytest.approx(eager["churn_score"].iat[position])
        for document in ("labels", "scores"):
            assert orjson.loads(orjson.dumps(read_back[document][customer_id])) == expected[document][position]
        assert reasons_of[customer_id] == expected["reasons"][position]
        assert list(reasons_of[customer_id]) == list(expected["reasons"][position])


def test_stored_chunks_build_the_reasons_the_run_would_have(features_and_counts):
    """A run stores the inputs of its reasons (encode_chunk), not the reasons: read back,
    they must explain every customer exactly as the run did."""
    from scoring.deferred import decode_chunk, encode_chunk

    features, counts = features_and_counts
    params = ScoringParams()
    eager = score_customers(features, params, AS_OF, intent_counts=counts)
    eager.attrs.clear()
    deferred: dict = {}
    score_customers(features, params, AS_OF, intent_counts=counts, deferred=deferred)
    positions = np.random.default_rng(5).permutation(len(eager))[:120]
    ids = list(eager.index[positions])
    stored_ids, columns = decode_chunk(encode_chunk(deferred, positions, ids))
    assert stored_ids == ids
    assert sorted(columns) == sorted(deferred)
    for column, values in columns.items():
        assert values.all() == [eager.at[customer_id, column] for customer_id in ids], column
    # A few rows of a stored chunk, as the customer command asks for them.
    some = np.array([3, 0, 77])
    for column, values in columns.items():
        assert values.rows(some) == [eager.at[ids[p], column] for p in some], column


def kept(value):
    """A value as a chunk must give it back: missing as None (NaN or None), a float with its sign."""
    if value is None or (isinstance(value, float) and value != value):
        return None
    return (value, bool(np.signbit(value))) if isinstance(value, float) else value


def test_a_chunk_stores_repeated_inputs_once_and_gives_them_back_bit_for_bit():
    """The models pass one measure to several explanations: a chunk keeps one copy of it,
    and each explanation gets its values back exactly (NaN, -0.0 and missing text too)."""
    import pyarrow as pa

    from scoring.deferred import Deferred, decode_chunk, encode_chunk

    measure = np.array([1.5, np.nan, 0.0, -2.0] * 25)
    signed = measure.copy()
    signed[2::4] = -0.0  # equal to `measure` under ==, not bit for bit: must stay its own
    text = np.array(["星", None, "b", "c"] * 25, dtype=object)
    # Floats beside missing values go to Arrow with nulls, where it would take -0.0 for 0.0;
    # the one difference lies where a quick look at the first, middle and last values misses it.
    gappy = np.array([0.0, None, 1.5, 2.0] * 25, dtype=object)
    gappy_signed = gappy.copy()
    gappy[10], gappy_signed[10] = 0.0, -0.0
    frame = pd.DataFrame({"measure": measure, "again": measure.copy(), "signed": signed,
                          "text": text, "text_again": text.copy(), "gappy": gappy, "gappy_signed": gappy_signed})
    columns = {"first": Deferred("documents", frame, len(frame)),
               "second": Deferred("documents", frame[["again", "signed"]], len(frame))}
    ids = [f"C{i:03d}" for i in range(len(frame))]
    payload = encode_chunk(columns, slice(None), ids)

    stored = pa.ipc.open_stream(payload).read_all()
    # Customer ids, the measure, the signed zeros, the text, and both gappy columns.
    assert stored.num_columns == 1 + 5
    stored_ids, read = decode_chunk(payload)
    assert stored_ids == ids
    for column, inputs in (("first", frame), ("second", frame[["again", "signed"]])):
        back = read[column].inputs
        assert list(back.columns) == list(inputs.columns)
        for name in inputs.columns:
            if inputs[name].dtype.kind == "f":
                assert back[name].to_numpy().tobytes() == inputs[name].to_numpy().tobytes(), (column, name)
            else:
                assert list(map(kept, back[name])) == list(map(kept, inputs[name])), (column, name)
    assert read["first"].all() == columns["first"].all()


def test_a_builder_must_be_registered():
    from scoring.deferred import Deferred

    with pytest.raises(KeyError, match="no reasons builder named 'nope'"):
        Deferred("nope", {}, 0)


def test_stored_documents_hold_what_json_would():
    """Labels and scores come back from a chunk as JSON values: no NaN, NA or numpy left."""
    import orjson

    frame = pd.DataFrame({"count": pd.array([1, None], dtype="Int64"), "tags": [np.array(["大", "b"]), []],
                          "score": [1.5, np.nan], "flag": pd.array([True, None], dtype="boolean"),
                          "label": ["star", None], "runs": np.array([3, 4])})
    documents = plain_documents(frame)
    assert documents == [{"count": 1, "tags": ["大", "b"], "score": 1.5, "flag": True, "label": "star", "runs": 3},
                         {"count": None, "tags": [], "score": None, "flag": None, "label": None, "runs": 4}]
    assert orjson.loads(orjson.dumps(documents)) == documents  # plain: no numpy option needed
