"""The `canarycast` command line, on top of everything: `cli.main` builds the parser from
the command groups in `cli.commands` (a module each, shared flag groups in
`cli.commands.flags`); `cli.demo` is the demo beside them.

May import: everything (`router/`, `server/`, `canarycast`), the heavy parts only inside
the command that needs them. Nothing imports it."""
