"""The run engine: store (SQLite), scheduler, stage functions, artifacts, progress.

- :mod:`gen3deval.engine.store`: the SQLite store of a run folder (the only proof a stage finished).
- :mod:`gen3deval.engine.artifacts`: content-addressed files ``RUN_DIR/artifacts/ab/<sha256>.ext``.
- :mod:`gen3deval.engine.pipeline`: the one definition of the stages of a (case, system, attempt) pipeline:
  order, inputs, when each applies (read by the runner, its progress totals and the results).
- :mod:`gen3deval.engine.stages`: pure stage functions (values in, values out).
- :mod:`gen3deval.engine.runner`: :class:`~gen3deval.engine.runner.Engine` plans, skips finished stages,
  runs the rest in worker processes and commits results; :mod:`gen3deval.engine.workers` its lock and
  worker processes.
- :mod:`gen3deval.engine.build`: a run from a spec, checked before any work (``preflight``).
- :mod:`gen3deval.engine.results`: result rows and run metadata from a store (the report contract).
- :mod:`gen3deval.engine.progress`: live rich bars or plain log lines.
"""
