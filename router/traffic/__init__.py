"""The request path: routing decisions, backends and failover, the mirror queue of
dual-run copies, the `Forecaster` proxy, the weight follower.

May import: `router.metrics`, `canarycast`, the observation store. Never `router.rollout`."""
