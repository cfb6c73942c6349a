"""`make bench`: run every tests/bench/bench_*.py, print one table, write the rows as JSON.

A benchmark generates its own inputs (random models with real-size shapes) under the cache folder and reuses them.

    python -m tests.bench --out out/bench.json [--only convert,quant]
"""

from __future__ import annotations

import argparse
import importlib
import json
import platform
import sys
import time
import traceback
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
ROOT = BENCH_DIR.parent.parent


def _format_row(row: dict) -> str:
    value = row.get("value")
    shown = f"{value:,.3f}" if isinstance(value, float) else str(value)
    verdict = {True: "ok", False: "MISS", None: ""}[row.get("ok")]
    return (f"{row.get('bench', ''):<10} {row.get('metric', ''):<44} {shown:>14} {row.get('unit', ''):<8} "
            f"{row.get('target') or '':<22} {verdict}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.bench")
    parser.add_argument("--out", default="out/bench.json")
    parser.add_argument("--only", default="", help="comma-separated bench names (e.g. convert,quant)")
    parser.add_argument("--cache", default=str(ROOT / ".cache" / "bench"))
    args = parser.parse_args(argv)

    wanted = {name.strip() for name in args.only.split(",") if name.strip()}
    cache = Path(args.cache)
    cache.mkdir(parents=True, exist_ok=True)
    rows: list[dict] = []
    failures = []
    for path in sorted(BENCH_DIR.glob("bench_*.py")):
        name = path.stem.removeprefix("bench_")
        if wanted and name not in wanted:
            continue
        print(f"== bench {name}", flush=True)
        started = time.perf_counter()
        try:
            module = importlib.import_module(f"tests.bench.{path.stem}")
            produced = module.run(cache)
        except Exception as exc:  # one broken bench must not hide the others' figures
            traceback.print_exc()
            failures.append(name)
            produced = [{"bench": name, "metric": "error", "value": str(exc)[:120], "unit": "", "target": None,
                         "ok": False}]
        for row in produced:
            row.setdefault("bench", name)
        rows.extend(produced)
        print(f"   ({time.perf_counter() - started:.1f} s)", flush=True)

    print()
    print(f"{'bench':<10} {'metric':<44} {'value':>14} {'unit':<8} {'target':<22} verdict")
    print("-" * 110)
    for row in rows:
        print(_format_row(row))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    document = {"machine": {"python": sys.version.split()[0], "platform": platform.platform()}, "rows": rows}
    out.write_text(json.dumps(document, indent=2))
    print(f"\nwrote {out}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
