"""Merged Amplitude IDs: the identity rule, and the state it carries from hour to hour.

`derive_merges(identities, state, scope)` is pure. It takes one hour's identity columns
(the deduplicated events before any filter, in source order) and the state after the hour
before, and returns the hour's merged-ID rows and the state after this hour.
`encode_state` / `decode_state` give the state's stored form: a full snapshot, or a delta
on the state of the hour before (the asset stores a snapshot once a day).

The rule, applied to events in order of `server_upload_time`, then source order
(A = amplitude_id, U = user_id, D = device_id):

    no U:   if A not in identified: anonymous[D] = A
    with U: O = original.setdefault(U, A)
            X = anonymous.get(D); if X and X != O and X not in identified | merged:
                emit (X -> O); merged.add(X)
            if A != O and A not in merged: emit (A -> O); merged.add(A)
            identified |= {O, A}

It is evaluated with polars expressions, not an event loop. What makes that exact:
- `O` depends only on the first `A` seen with `U` (or the carried `original[U]`);
- `original[U]` is always in `identified`, so `A` is identified before event `i` exactly
  when an earlier event with a user_id carried it (or it was identified before the hour);
- so `anonymous[D]` before event `i` is the last earlier qualifying update on `D`, an
  as-of join;
- `merged` only decides which candidate emission of an ID comes first: every step-2 or
  step-3 condition except "not in merged" is independent of it, so an ID is emitted at
  its first candidate (in event order, step 2 before step 3) unless it was merged before.

Events with a null `amplitude_id` carry no identity and are skipped. A null `device_id`
takes no part in step 2 and sets no `anonymous` entry. A null `event_time` gives a
`merge_time` equal to `merge_server_time`.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import polars as pl

from amplitude_assets.schema import MERGED_ID_FIELDS

ID = pl.Int64
STATE_KINDS = ("original", "identified", "anonymous", "merged")
STATE_SCHEMA = {"kind": pl.String, "key": pl.String, "amplitude_id": ID}
ROW_SCHEMA = {name: ID for name in MERGED_ID_FIELDS}


@dataclass(frozen=True)
class IdentityState:
    """What the rule remembers after an hour; every frame sorted, so equal states are equal frames.

    - original:   user_id, amplitude_id: the first amplitude_id seen with each user_id;
    - identified: amplitude_id: every ID ever seen on an event with a user_id;
    - anonymous:  device_id, amplitude_id: the last anonymous ID of each device. Entries
      whose ID is identified or merged can never merge again, so they are dropped: the
      state then holds only live anonymous devices, with the same results;
    - merged:     amplitude_id: the IDs already merged away.
    """

    original: pl.DataFrame
    identified: pl.DataFrame
    anonymous: pl.DataFrame
    merged: pl.DataFrame

    @staticmethod
    def empty() -> IdentityState:
        return IdentityState(
            original=pl.DataFrame(schema={"user_id": pl.String, "amplitude_id": ID}),
            identified=pl.DataFrame(schema={"amplitude_id": ID}),
            anonymous=pl.DataFrame(schema={"device_id": pl.String, "amplitude_id": ID}),
            merged=pl.DataFrame(schema={"amplitude_id": ID}),
        )

    def sizes(self) -> dict[str, int]:
        return {kind: getattr(self, kind).height for kind in STATE_KINDS}

    def to_frame(self) -> pl.DataFrame:
        """The whole state as one long frame (`kind`, `key`, `amplitude_id`), in a canonical order."""
        return pl.concat(
            [
                _long("original", self.original, "user_id"),
                _long("identified", self.identified, None),
                _long("anonymous", self.anonymous, "device_id"),
                _long("merged", self.merged, None),
            ]
        )

    @staticmethod
    def from_frame(frame: pl.DataFrame) -> IdentityState:
        return IdentityState.empty().apply(frame)

    def apply(self, changes: pl.DataFrame) -> IdentityState:
        """This state with the rows of a long frame added; `anonymous_removed` rows drop a device."""
        changes = changes.cast(STATE_SCHEMA)

        def of(kind: str, key: str | None) -> pl.DataFrame:
            rows = changes.filter(pl.col("kind") == kind)
            return rows.select(pl.col("key").alias(key), "amplitude_id") if key else rows.select("amplitude_id")

        anonymous = of("anonymous", "device_id")
        gone = pl.concat([of("anonymous_removed", "device_id").select("device_id"), anonymous.select("device_id")])
        return IdentityState(
            original=pl.concat([self.original, of("original", "user_id")]).sort("user_id"),
            identified=pl.concat([self.identified, of("identified", None)]).sort("amplitude_id"),
            anonymous=pl.concat([self.anonymous.join(gone, on="device_id", how="anti"), anonymous]).sort("device_id"),
            merged=pl.concat([self.merged, of("merged", None)]).sort("amplitude_id"),
        )

    def delta_from(self, before: IdentityState) -> pl.DataFrame:
        """The long frame that turns `before` into this state (`before.apply(delta) == self`).

        `original`, `identified` and `merged` only grow; `anonymous` entries are replaced
        (a device's newer anonymous ID) or removed (an ID that can no longer merge).
        """
        anonymous_removed = before.anonymous.join(self.anonymous, on="device_id", how="anti").select(
            "device_id", pl.lit(None, ID).alias("amplitude_id")
        )
        return pl.concat(
            [
                _long("original", self.original.join(before.original, on="user_id", how="anti"), "user_id"),
                _long("identified", self.identified.join(before.identified, on="amplitude_id", how="anti"), None),
                _long("anonymous", self.anonymous.join(before.anonymous, on=["device_id", "amplitude_id"], how="anti"), "device_id"),
                _long("anonymous_removed", anonymous_removed, "device_id"),
                _long("merged", self.merged.join(before.merged, on="amplitude_id", how="anti"), None),
            ]
        )


@dataclass(frozen=True)
class StoredState:
    """An identity state as stored: its blob, and the md5 of its bytes (the chain's digest)."""

    name: str
    md5: str


@dataclass(frozen=True)
class MergedHour:
    """One hour of merged IDs as the `merged_ids` asset derives it, for its IO manager to write.

    `merges` is the hour's table (`MERGED_ID_FIELDS`, in emission order). `state` is the
    identity state after the hour in its stored form, Parquet of a snapshot or of a delta on
    the state before (`encode_state`), with its md5; the IO manager writes it just before
    the hour's marker, and the next hour starts from it. `started_from` is the stored state
    the hour was derived from, None where the identity history starts.
    """

    hour: datetime
    merges: pl.DataFrame
    identity_rows: int
    state: bytes
    state_md5: str
    state_stored_as: str  # "snapshot" or "delta"
    state_sizes: dict[str, int]
    started_from: StoredState | None
    timings: dict[str, float]  # read_seconds, derive_seconds

    @property
    def history_starts(self) -> bool:
        return self.started_from is None


def _long(kind: str, frame: pl.DataFrame, key: str | None) -> pl.DataFrame:
    return frame.select(
        pl.lit(kind).alias("kind"),
        (pl.col(key) if key else pl.lit(None, pl.String)).alias("key"),
        "amplitude_id",
    ).cast(STATE_SCHEMA)


# -- the state as stored: a snapshot, or a delta on the state of the hour before ------------
SNAPSHOT, DELTA = "snapshot", "delta"


def encode_state(state: IdentityState, before: IdentityState | None) -> pl.DataFrame:
    """The frame stored for an hour: a header row (`snapshot` or `delta`), then its rows.

    With `before` None it is a full snapshot; otherwise only the changes since `before`.
    """
    header = pl.DataFrame({"kind": [SNAPSHOT if before is None else DELTA], "key": [None], "amplitude_id": [None]})
    body = state.to_frame() if before is None else state.delta_from(before)
    return pl.concat([header.cast(STATE_SCHEMA), body])


def stored_kind(frame: pl.DataFrame) -> str:
    """`snapshot` or `delta`, from a stored frame's header row."""
    kind = frame["kind"][0] if frame.height else None
    if kind not in (SNAPSHOT, DELTA):
        raise ValueError(f"not an identity state frame (header {kind!r})")
    return kind


def decode_state(frames: list[pl.DataFrame]) -> IdentityState:
    """The state from stored frames, oldest first: a snapshot, then the deltas after it."""
    if not frames or stored_kind(frames[0]) != SNAPSHOT:
        raise ValueError("an identity state chain starts with a snapshot")
    state = IdentityState.empty()
    for frame in frames:
        state = state.apply(frame.slice(1))
    return state


def _epoch_ms(column: str) -> pl.Expr:
    """Epoch milliseconds, fractions dropped (floored)."""
    return pl.col(column).dt.epoch("us").floordiv(1000)


def derive_merges(identities: pl.DataFrame, state: IdentityState, scope: int) -> tuple[pl.DataFrame, IdentityState]:
    """The hour's merged-ID rows (MERGED_ID_FIELDS, all Int64) and the state after the hour.

    `identities` has the columns user_id, device_id, amplitude_id, event_time and
    server_upload_time, in source order. Rows are ordered by merge_server_time, then by
    the order in which the rule emits them.
    """
    events = _hour_events(identities)
    first_seen, known = _with_originals(events.filter(pl.col("user_id").is_not_null()), state)
    identified_at = _identified_at(known, state)
    updates = _anonymous_updates(events, identified_at)
    candidates = pl.concat([_step2(known, updates, identified_at, state), _step3(known)])
    rows = _merged_rows(candidates, state, scope)
    return rows, _next_state(state, known, first_seen, updates, rows)


def _hour_events(identities: pl.DataFrame) -> pl.DataFrame:
    """The hour's events with an amplitude_id, typed, in hour order, numbered by `seq`."""
    return (
        identities.select(
            pl.col("user_id").cast(pl.String),
            pl.col("device_id").cast(pl.String),
            pl.col("amplitude_id").cast(ID),
            pl.col("event_time").cast(pl.Datetime("us")),
            pl.col("server_upload_time").cast(pl.Datetime("us")),
        )
        .with_row_index("source_order")
        .filter(pl.col("amplitude_id").is_not_null())
        # Hour order: server_upload_time, then source order (a stable sort keeps it).
        .sort("server_upload_time", "source_order", nulls_last=True)
        .with_row_index("seq")
        .with_columns(pl.col("seq").cast(ID))
        .drop("source_order")
    )


def _with_originals(known: pl.DataFrame, state: IdentityState) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Step 1: O = original.setdefault(U, A). Returns each new user's first ID, and the
    events with a user_id with their `original`."""
    first_seen = known.group_by("user_id", maintain_order=True).agg(pl.col("amplitude_id").first())
    known = (
        known.join(state.original.rename({"amplitude_id": "carried_original"}), on="user_id", how="left")
        .join(first_seen.rename({"amplitude_id": "first_original"}), on="user_id", how="left")
        .with_columns(pl.coalesce("carried_original", "first_original").alias("original"))
        .drop("carried_original", "first_original")
        .sort("seq")
    )
    return first_seen, known


def _identified_at(known: pl.DataFrame, state: IdentityState) -> pl.DataFrame:
    """When each ID became identified: -1 before the hour, else its first event with a user_id."""
    return (
        pl.concat(
            [
                state.identified.select("amplitude_id", pl.lit(-1, ID).alias("identified_at")),
                known.select("amplitude_id", pl.col("seq").alias("identified_at")),
            ]
        )
        .group_by("amplitude_id")
        .agg(pl.col("identified_at").min())
    )


def _anonymous_updates(events: pl.DataFrame, identified_at: pl.DataFrame) -> pl.DataFrame:
    """anonymous[D] = A for events with no user_id whose A is not identified at that moment."""
    return (
        events.filter(pl.col("user_id").is_null() & pl.col("device_id").is_not_null())
        .join(identified_at, on="amplitude_id", how="left")
        .filter(pl.col("identified_at").is_null() | (pl.col("identified_at") > pl.col("seq")))
        .select("seq", "device_id", pl.col("amplitude_id").alias("anonymous"))
        .sort("seq")
    )



def _step2(known: pl.DataFrame, updates: pl.DataFrame, identified_at: pl.DataFrame, state: IdentityState) -> pl.DataFrame:
    """Step 2: X = anonymous.get(D) just before each event with a user_id (an as-of join)."""
    with_device = known.filter(pl.col("device_id").is_not_null())
    return (
        with_device.join_asof(updates, on="seq", by="device_id", strategy="backward", check_sortedness=False)
        .join(state.anonymous.rename({"amplitude_id": "carried_anonymous"}), on="device_id", how="left")
        .with_columns(pl.coalesce("anonymous", "carried_anonymous").alias("x"))
        .join(identified_at.rename({"amplitude_id": "x", "identified_at": "x_identified_at"}), on="x", how="left")
        .filter(
            pl.col("x").is_not_null()
            & (pl.col("x") != pl.col("original"))
            # identified is updated in step 4, so the event's own A is not identified yet.
            & (pl.col("x_identified_at").is_null() | (pl.col("x_identified_at") >= pl.col("seq")))
        )
        .select("seq", pl.lit(2, ID).alias("step"), pl.col("x").alias("amplitude_id"), "original",
                "event_time", "server_upload_time")
    )


def _step3(known: pl.DataFrame) -> pl.DataFrame:
    """Step 3: the event's own A, when it is not the user's original."""
    return known.filter(pl.col("amplitude_id") != pl.col("original")).select(
        "seq", pl.lit(3, ID).alias("step"), "amplitude_id", "original", "event_time", "server_upload_time"
    )


def _merged_rows(candidates: pl.DataFrame, state: IdentityState, scope: int) -> pl.DataFrame:
    """"Not in merged": each ID is merged away at its first candidate, unless it already was."""
    emitted = (
        candidates.join(state.merged, on="amplitude_id", how="anti")
        .sort("seq", "step")
        .unique("amplitude_id", keep="first", maintain_order=True)
    )
    return (
        emitted.with_columns(
            pl.lit(scope, ID).alias("scope"),
            pl.coalesce(_epoch_ms("event_time"), _epoch_ms("server_upload_time")).alias("merge_time"),
            _epoch_ms("server_upload_time").alias("merge_server_time"),
            pl.col("original").alias("merged_amplitude_id"),
        )
        .sort("merge_server_time", "seq", "step", maintain_order=True)
        .select(MERGED_ID_FIELDS)
        .cast(ROW_SCHEMA)
    )


def _next_state(state: IdentityState, known: pl.DataFrame, first_seen: pl.DataFrame,
                updates: pl.DataFrame, rows: pl.DataFrame) -> IdentityState:
    """Step 4: the state after the hour."""
    identified = pl.concat([state.identified, known.select("amplitude_id")]).unique().sort("amplitude_id")
    merged = pl.concat([state.merged, rows.select("amplitude_id")]).unique().sort("amplitude_id")
    original = pl.concat(
        [state.original, first_seen.join(state.original, on="user_id", how="anti")]
    ).sort("user_id")
    last_anonymous = updates.group_by("device_id").agg(pl.col("anonymous").sort_by("seq").last().alias("amplitude_id"))
    dead = pl.concat([identified, merged])
    anonymous = (
        pl.concat([state.anonymous.join(last_anonymous, on="device_id", how="anti"), last_anonymous])
        .join(dead, on="amplitude_id", how="anti")
        .sort("device_id")
    )
    return IdentityState(original=original, identified=identified, anonymous=anonymous, merged=merged)
