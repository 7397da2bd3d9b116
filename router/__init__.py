"""The router: two parts, one direction, wired by `router.app`.

- `router.traffic`: the request path between clients and model servers (weighted, sticky,
  shadow and dual-run routing, backends and failover, the mirror queue, the weight
  follower). It never imports the rollout and never waits on it.
- `router.rollout`: off the request path, the rollout (span ingest, the analyzer, the
  judge and its confidence sequences, the controller and its pure step, the state store,
  `RolloutControl`, the webhook).

`router.metrics` (both parts' Prometheus metrics) and `router.app` (the process that wires
them) sit beside the two.

May import: `canarycast`, and of `server/` only the torch-free registry and observation
store (`server.lifecycle.registry`, `server.lifecycle.observations`). Never `cli/`; no
torch, scipy or pandas.
"""
