"""The rollout, off the request path: span ingest, the analyzer, the judge and its
confidence sequences, the controller (its pure step `next_action`), the state store,
`RolloutControl` and the webhook.

May import: `router.metrics`, `canarycast`, the registry. Never `router.traffic`."""
