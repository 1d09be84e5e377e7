"""On PostgreSQL the flusher's rollups go through COPY and one INSERT ... SELECT (records._copy_rollups), not
the ORM: the same rows as the ORM path (test_records.py), a minute already stored kept as is, a deleted
node's minutes dropped, empty values NULL. Run in a process of its own on a fresh, migrated database."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

SCRIPT = r"""
import json
import django
django.setup()
from django.db import connection
from fleet.inventory.models import Node
from fleet.telemetry import records
from fleet.telemetry.models import GpuRollup

assert connection.vendor == "postgresql"
a, b = Node.objects.create(name="a", hostname="a.lan"), Node.objects.create(name="b", hostname="b.lan")
minute = 1_800_000_000 - 1_800_000_000 % 60
rows = [{"node_id": a.pk, "gpu_index": 0, "gpu_uuid": "GPU-a0", "minute": minute, "samples": 60, "util_min": 1.5,
         "util_avg": 50.25, "util_max": 99.0, "mem_used_max": 2**40, "mem_total": 80 * 2**30, "energy_j": 12.5},
        {"node_id": b.pk, "gpu_index": 1, "gpu_uuid": "GPU-b1", "minute": minute, "samples": 3},
        {"node_id": 999_999, "gpu_index": 0, "gpu_uuid": "GPU-gone", "minute": minute, "samples": 1}]
first = records.write_rollups(rows)
changed = dict(rows[0], samples=1, util_avg=0.0)  # a catch-up overlap: the stored minute stays
again = records.write_rollups([changed, dict(rows[0], minute=minute + 60, samples=7)])
stored = [{**row, "minute": row["minute"].timestamp(), "node": "a" if row["node_id"] == a.pk else "b"}
          for row in GpuRollup.objects.order_by("node_id", "minute").values()]
print(json.dumps({"first": first, "again": again, "stored": stored, "minute": minute}))
"""


def test_rollups_on_postgresql_are_copied_in_bulk(services, tmp_path):
    import psycopg

    name = f"fleet_rollups_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(services["postgres"], autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DATABASE_URL", "REDIS_URL", "FLEET_"))}
    env.update(DATABASE_URL=services["postgres"].rsplit("/", 1)[0] + f"/{name}",
               DJANGO_SETTINGS_MODULE="fleet.settings", FLEET_VAR_DIR=str(tmp_path),
               FLEET_SECRET_KEY="rollups-test-secret-key-0123456789abcdef")
    try:
        migrate = subprocess.run([sys.executable, "manage.py", "migrate", "--noinput"], cwd=ROOT, env=env,
                                 capture_output=True, text=True, timeout=240)
        assert migrate.returncode == 0, migrate.stdout + migrate.stderr
        run = subprocess.run([sys.executable, "-c", SCRIPT], cwd=ROOT, env=env, capture_output=True, text=True,
                             timeout=120)
        assert run.returncode == 0, run.stdout + run.stderr
    finally:
        with psycopg.connect(services["postgres"], autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    result = json.loads(run.stdout.strip().splitlines()[-1])
    assert result["first"] == 2  # the deleted node's minute dropped, not the batch
    assert result["again"] == 1  # only the new minute; the overlap kept the stored row
    minute = result["minute"]
    by_key = {(row["node"], row["minute"]): row for row in result["stored"]}
    assert set(by_key) == {("a", minute), ("a", minute + 60), ("b", minute)}
    kept = by_key[("a", minute)]
    assert (kept["samples"], kept["util_min"], kept["util_avg"], kept["util_max"]) == (60, 1.5, 50.25, 99.0)
    assert (kept["mem_used_max"], kept["mem_total"], kept["energy_j"]) == (2**40, 80 * 2**30, 12.5)
    assert kept["gpu_index"] == 0 and kept["gpu_uuid"] == "GPU-a0"
    empty = by_key[("b", minute)]
    assert empty["samples"] == 3 and empty["gpu_index"] == 1
    assert all(empty[k] is None for k in ("util_avg", "mem_used_min", "mem_total", "temp_max", "power_avg", "energy_j"))
    assert by_key[("a", minute + 60)]["samples"] == 7
