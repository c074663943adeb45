"""`make demo`'s partitions and the sensor's catch-up window: turning the sensor on fills every hour shown."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from amplitude_assets.partitions import hourly_partitions
from amplitude_assets.sensors import due_hours
from amplitude_assets.settings import Settings
from scripts import demo

NOW = datetime(2026, 11, 30, 12, 25, tzinfo=timezone.utc)


@pytest.fixture
def demo_dir(tmp_path, monkeypatch):
    monkeypatch.setattr(demo, "DEMO", tmp_path / ".demo")
    return tmp_path / ".demo"


def sensor_window(env: dict[str, str], settings_env, now: datetime) -> tuple[list[str], list[str]]:
    """(the closed, exportable partition keys the UI shows, the hours the sensor looks at)."""
    settings_env(**{name: value for name, value in env.items() if name.startswith("AMPLITUDE_")})
    settings = Settings.from_env()
    partitions = hourly_partitions(settings)
    ready = now - timedelta(minutes=settings.export_delay_minutes)
    shown = [k for k in partitions.get_partition_keys(current_time=now)
             if partitions.time_window_for_partition_key(k).end <= ready]
    return shown, due_hours(settings, partitions, now)


def test_a_new_demo_starts_its_partitions_inside_the_sensor_window(demo_dir, settings_env):
    env = demo.demo_env(NOW)
    assert env["AMPLITUDE_START"] == "2026-11-28-12:00"
    shown, due = sensor_window(env, settings_env, NOW)
    assert shown[0] == "2026-11-28-12:00" and shown[-1] == "2026-11-30-11:00"
    assert due == shown


def test_the_window_grows_with_an_old_demo(demo_dir, settings_env):
    demo_dir.mkdir()
    (demo_dir / "demo.env").write_text("AMPLITUDE_START=2026-11-27-00:00\n")  # 3 days back at midnight
    env = demo.demo_env(NOW)
    assert env["AMPLITUDE_START"] == "2026-11-27-00:00"
    assert env["AMPLITUDE_CATCH_UP_HOURS"] == "85"
    shown, due = sensor_window(env, settings_env, NOW)
    assert len(shown) == 84 and due == shown
    # A week later, still all of them.
    later = NOW + timedelta(days=7)
    shown, due = sensor_window(demo.demo_env(later), settings_env, later)
    assert len(shown) == 84 + 7 * 24 and due == shown
