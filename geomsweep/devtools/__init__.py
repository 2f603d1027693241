"""Developer and analysis tools, outside the runtime: python -m geomsweep.devtools <command> (bench, bench-gpu,
ui-check, report, rollup)."""
