"""The cost and capacity model of LLM serving, and a fleet simulator to check it.

Plain Python and numpy, no Django: the `cost` lab's grader uses it (runner/graders/cost.py),
the lab's notebook carries a copy of it, and the fleet pages can price a fleet with it.

- `catalogue`, `shapes`: the hardware catalogue (catalogue.toml) and model shapes
  (models.toml), every figure with its source, as typed data and as plain JSON;
- `roofline`: one replica's memory, step, decode and prefill times, the compute-bound batch,
  its steady state and capacity;
- `traffic`: workloads, arrivals and request lengths;
- `simulate`, `metrics`: the discrete-event fleet simulator and what it measured;
- `fleet`, `evaluate`, `optimise`: fleet plans and their day, how the lab judges a plan, and
  the grader's own planner;
- `queueing`: M/M/1 and M/M/c in closed form; `dashboard`: a fleet log's cost report;
  `plots`: SVG plots.

docs/labs/cost.md explains the model, where each figure comes from, the simulator's design,
its validation against queueing theory and its speed.
"""
