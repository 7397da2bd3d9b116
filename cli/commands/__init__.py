"""The command line's command groups, one module each (`cli.main` composes them).

The CLI is the composition root: these modules may import anything of canarycast, server/
and router/, but only inside the command that needs it, so that `canarycast --help` and
the client commands start without torch, pandas or the rollout (a base install has none
of the server extra; see `cli.main.NEEDS_SERVER_EXTRA`)."""
