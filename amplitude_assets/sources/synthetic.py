"""A deterministic synthetic Amplitude project: the default source of the demo and benchmarks.

An hour is a pure function of (seed, project id, hour). It has the shape of real
exports: many users and devices, anonymous devices that later log in (so merges
happen), users on second devices, about 0.5% repeated `uuid` and 0.5% repeated
`$insert_id`, late events, unicode, nested properties that differ per event type,
nulls, all 49 fields and the six extra fields real exports carry (55 keys).

`events` gives the hour's events; `iter_lines` sends them as Amplitude's own export
files hold them (`line`: top-level keys in code-point order, compact), except about 2%
that come in a form the exporter must normalize (`untidy`): a timestamp with `T` or as
epoch milliseconds, an uppercase `uuid`, a number as a string, a null field left out.
Each such line still means the same event, so it normalizes back to its row of `events`.
"""

from __future__ import annotations

import hashlib
import json
import random
import uuid
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone

EPOCH = datetime(2020, 1, 1, tzinfo=timezone.utc)
CHUNK_ROWS = 5_000
UNTIDY_SHARE = 0.02  # of the lines: sent in a form that needs normalizing

CITIES = [
    ("San Francisco", "California", "US", "San Francisco-Oakland-San Jose, CA", 37.7749, -122.4194),
    ("München", "Bavaria", "DE", None, 48.1351, 11.582),
    ("São Paulo", "São Paulo", "BR", None, -23.5505, -46.6333),
    ("東京", "Tokyo", "JP", None, 35.6762, 139.6503),
    ("Zürich", "Zurich", "CH", None, 47.3769, 8.5417),
    ("New York", "New York", "US", "New York, NY", 40.7128, -74.006),
    ("Kraków", "Lesser Poland", "PL", None, 50.0647, 19.945),
    (None, None, None, None, None, None),
]
PLATFORMS = [
    ("iOS", "ios", "17.4", "Apple", "iPhone15,2", "Apple iPhone", "iPhone", "amplitude-ios/8.17.1"),
    ("Android", "android", "14", "Google", "Pixel 8", "Google Pixel 8", "Android", "amplitude-android/1.12.0"),
    ("Web", "Chrome", "124", None, None, "Mac", None, "amplitude-ts/2.7.4"),
    ("Web", "Firefox", "125.0", None, None, "Windows", None, "amplitude-ts/2.7.4"),
]
CARRIERS = ["Verizon", "T-Mobile", "Deutsche Telekom", "NTT docomo", None]
LANGUAGES = ["English", "Deutsch", "Português", "日本語", None]


def _props(rng: random.Random, event_type: str) -> dict:
    """Event properties differ per event type, in keys and in value types."""
    if event_type == "Page Viewed":
        return {"page": rng.choice(["/", "/pricing", "/docs/ünïcode", "/blog?q=a&b=\"c\""]),
                "referrer": rng.choice([None, "https://example.com/", ""])}
    if event_type == "Song Played":
        return {"song_id": rng.randint(1, 10**6), "duration": round(rng.uniform(30, 400), 3),
                "genre": rng.choice(["jazz", "ジャズ", "rock"]), "explicit": rng.random() < 0.2}
    if event_type == "Purchase":
        return {"price": round(rng.uniform(0.5, 300), 2), "currency": rng.choice(["USD", "EUR", "JPY"]),
                "items": [{"sku": f"sku-{rng.randint(1, 99)}", "qty": rng.randint(1, 3)}
                          for _ in range(rng.randint(1, 3))],
                "coupon": None}
    if event_type == "Search":
        # `results` is usually a number but sometimes a string: readers must get each as sent.
        return {"query": rng.choice(["café ☕", "東京 ramen", "tab\there", "line\nbreak", "emoji 🎧"]),
                "results": rng.choice([rng.randint(0, 50), "many"])}
    if event_type == "Sign Up":
        return {"method": rng.choice(["google", "email", "apple"]), "referral": {"code": None, "depth": 0}}
    return {}


EVENT_TYPES = ["Page Viewed", "Song Played", "Purchase", "Search", "Sign Up", "session_start", "session_end"]


def _fmt(ts: datetime) -> str:
    return ts.strftime("%Y-%m-%d %H:%M:%S.%f")


def _ms(ts: datetime) -> datetime:
    """Client clocks count milliseconds: real `event_time` and `client_*_time` end in `000`."""
    return ts.replace(microsecond=ts.microsecond // 1000 * 1000)


def line(row: dict) -> str:
    """A row as Amplitude's export files hold it: top-level keys in code-point order, compact.

    Only the top level is sorted: nested objects keep the order they were sent in."""
    return json.dumps(dict(sorted(row.items())), ensure_ascii=False, separators=(",", ":"))


TIMESTAMPS = ("client_event_time", "client_upload_time", "event_time", "processed_time",
              "server_received_time", "server_upload_time", "user_creation_time")
MILLISECOND_TIMESTAMPS = ("client_event_time", "client_upload_time", "event_time")
NUMBERS = ("$schema", "amplitude_id", "app", "event_id", "location_lat", "session_id")


def _tidy_timestamp(value) -> bool:
    return isinstance(value, str) and len(value) == 26 and value[10] == " "


def _t_separator(row: dict, rng: random.Random, keep) -> bool:
    names = [n for n in TIMESTAMPS if n not in keep and _tidy_timestamp(row.get(n))]
    if not names:
        return False
    name = rng.choice(names)
    row[name] = row[name].replace(" ", "T") + rng.choice(["", "Z", "+00:00"])
    return True


def _epoch_ms(row: dict, rng: random.Random, keep) -> bool:
    names = [n for n in MILLISECOND_TIMESTAMPS if n not in keep and _tidy_timestamp(row.get(n))]
    if not names:
        return False
    name = rng.choice(names)
    ts = datetime.strptime(row[name], "%Y-%m-%d %H:%M:%S.%f").replace(tzinfo=timezone.utc)
    row[name] = round(ts.timestamp() * 1000)
    return True


def _uppercase_uuid(row: dict, rng: random.Random, keep) -> bool:
    if "uuid" in keep or not isinstance(row.get("uuid"), str):
        return False
    row["uuid"] = row["uuid"].upper()
    return True


def _number_as_string(row: dict, rng: random.Random, keep) -> bool:
    names = [n for n in NUMBERS if n not in keep and isinstance(row.get(n), (int, float))]
    if not names:
        return False
    name = rng.choice(names)
    row[name] = str(row[name])
    return True


def _null_left_out(row: dict, rng: random.Random, keep) -> bool:
    names = [n for n, v in row.items() if v is None and n not in keep]
    if not names:
        return False
    for name in rng.sample(names, min(len(names), rng.randint(1, 3))):
        del row[name]
    return True


UNTIDY = (_t_separator, _epoch_ms, _uppercase_uuid, _number_as_string, _null_left_out)


def untidy(row: dict, rng: random.Random, keep: frozenset[str] = frozenset()) -> dict:
    """The same event in a form the exporter must normalize: one or two of a `T` or zoned
    timestamp, epoch milliseconds, an uppercase `uuid`, a number as a string, a null left
    out. Fields in `keep` are left alone."""
    out = dict(row)
    wanted = rng.choice((1, 1, 2))
    for change in rng.sample(UNTIDY, len(UNTIDY)):
        wanted -= change(out, rng, keep)
        if not wanted:
            break
    return out


class SyntheticSource:
    name = "synthetic"

    def __init__(self, project_id: str, events_per_hour: int = 2000, seed: int = 0):
        self.project_id = int(project_id)
        self.events_per_hour = events_per_hour
        self.seed = seed

    def _rng(self, hour: datetime, stream: str = "") -> random.Random:
        key = f"{self.seed}:{self.project_id}:{hour:%Y-%m-%dT%H}{stream}".encode()
        return random.Random(int.from_bytes(hashlib.sha256(key).digest()[:8], "big"))

    def events(self, hour: datetime) -> list[dict]:
        """The hour's events, in upload order, duplicates included."""
        rng = self._rng(hour)
        rows: list[dict] = []
        for i in range(self.events_per_hour):
            row = self._event(rng, hour, i)
            rows.append(row)
            # ~0.5% of rows are re-sent (same uuid); ~0.5% repeat an $insert_id on its device.
            roll = rng.random()
            if roll < 0.005:
                rows.append(dict(row))
            elif roll < 0.010:
                rows.append({**row, "uuid": str(uuid.UUID(int=rng.getrandbits(128), version=4))})
        return rows

    def _who(self, rng: random.Random, hour: datetime, i: int) -> tuple:
        """Who sends the i-th event and when: (upload, fresh, device, install, user_id, amplitude_id)."""
        n = self.events_per_hour
        hour_index = int((hour - EPOCH).total_seconds() // 3600)
        users = max(20, n // 5)
        devices = users * 2
        base_id = self.project_id * 10**6
        upload = hour + timedelta(microseconds=int((i + rng.random()) * 3.6e9 / n))
        fresh = rng.random() < 0.05
        # Fresh devices are new anonymous installs of this hour; known devices belong
        # to a user (two devices each) and log in at an hour of their own.
        device = (hour_index * 10_000 + i) if fresh else rng.randrange(devices)
        owner = (device * 7919) % users
        logged_in = (not fresh and (hour_index + device) % 6 >= 2) or (fresh and rng.random() < 0.3)
        # A known device slot is reinstalled once a day: a new device_id with a new anonymous
        # amplitude_id, so anonymous installs keep logging in (and merging) hour after hour.
        install = (hour_index + device) // 24
        anonymous_id = base_id * 10 + device if fresh else base_id * 100 + install * devices + device
        user_original = base_id + owner
        if logged_in:
            user_id = f"user-{owner}@example.com" if owner % 3 else f"ユーザー{owner}"
            amplitude_id = anonymous_id if rng.random() < 0.1 else user_original
        else:
            user_id = None if rng.random() < 0.9 else ""
            amplitude_id = anonymous_id
        return upload, fresh, device, install, user_id, amplitude_id

    def _event(self, rng: random.Random, hour: datetime, i: int) -> dict:
        """The hour's i-th event (before duplicates), drawing from `rng` in a fixed order."""
        upload, fresh, device, install, user_id, amplitude_id = self._who(rng, hour, i)
        hour_index = int((hour - EPOCH).total_seconds() // 3600)
        late = rng.random() < 0.02
        lag = timedelta(hours=rng.randint(1, 72)) if late else timedelta(seconds=rng.uniform(0.05, 30))
        event_time = _ms(upload - lag)
        city, region, country, dma, lat, lng = rng.choice(CITIES)
        platform, os_name, os_version, brand, model, family, device_type, library = rng.choice(PLATFORMS)
        event_type = rng.choice(EVENT_TYPES)
        device_id = f"{uuid.UUID(int=rng.getrandbits(128)) if fresh else f'device-{device:08d}-{install}'}"
        row = {
            "server_received_time": _fmt(upload - timedelta(milliseconds=rng.randint(1, 900))),
            "app": self.project_id,
            "device_carrier": rng.choice(CARRIERS),
            "$schema": 12,
            "city": city,
            "user_id": user_id,
            "uuid": str(uuid.UUID(int=rng.getrandbits(128), version=4)),
            "event_time": _fmt(event_time),
            "platform": platform,
            "os_version": os_version,
            "amplitude_id": amplitude_id,
            "processed_time": _fmt(upload + timedelta(seconds=rng.uniform(0.1, 5))),
            "user_creation_time": _fmt(EPOCH + timedelta(hours=(device * 13) % max(hour_index, 1))),
            "version_name": rng.choice(["3.2.1", "3.3.0", None]),
            "ip_address": f"203.0.113.{rng.randint(1, 254)}",
            "paying": rng.choice([True, False, None]),
            "dma": dma,
            "group_properties": {"company": {"plan": "enterprise"}} if rng.random() < 0.1 else {},
            "user_properties": {"cohort": rng.choice(["a", "b"]), "age": rng.randint(18, 80),
                                "initial_utm_source": rng.choice(["google", None]),
                                "initial_referrer": "EMPTY", "initial_utm_campaign": "EMPTY",
                                "initial_referring_domain": "EMPTY"},
            "client_upload_time": _fmt(_ms(upload - timedelta(milliseconds=rng.randint(900, 2000)))),
            "$insert_id": str(uuid.UUID(int=rng.getrandbits(128))),
            "event_type": event_type,
            "library": library,
            "amplitude_attribution_ids": None,
            "device_type": device_type,
            "device_manufacturer": brand,
            "start_version": "3.0.0",
            "location_lng": lng,
            "server_upload_time": _fmt(upload),
            "event_id": rng.randint(1, 10**6),
            "location_lat": lat,
            "os_name": os_name,
            "amplitude_event_type": None,
            "device_brand": brand,
            "groups": {"company": ["acme"]} if rng.random() < 0.1 else {},
            "event_properties": _props(rng, event_type),
            "data": ({"path": "/2/httpapi", "group_first_event": {}, "group_ids": {}} if rng.random() < 0.5
                     else {"group_first_event": {}, "group_ids": {}}),
            "device_id": device_id,
            "language": rng.choice(LANGUAGES),
            "device_model": model,
            "country": country,
            "region": region,
            "is_attribution_event": False,
            "adid": None,
            "session_id": int(event_time.timestamp() * 1000) - rng.randint(0, 600_000),
            "device_family": family,
            "sample_rate": None,
            "idfa": None,
            "client_event_time": _fmt(event_time),
            "$insert_key": f"{rng.getrandbits(64):016x}",
            "data_type": "event",
            "global_user_properties": {},
            "partner_id": None,
            "source_id": None,
        }
        row["plan"] = {"branch": "main", "source": "web", "version": "7"} if rng.random() < 0.1 else {}
        return row

    def iter_lines(self, hour: datetime) -> Iterator[bytes]:
        """The hour as Amplitude's export files hold it, with ~2% of lines untidy."""
        rows = self.events(hour)
        rng = self._rng(hour, "lines")  # its own stream: `events` stays as it was
        for start in range(0, len(rows), CHUNK_ROWS):
            chunk = rows[start : start + CHUNK_ROWS]
            yield "".join(
                line(untidy(r, rng) if rng.random() < UNTIDY_SHARE else r) + "\n" for r in chunk
            ).encode()
