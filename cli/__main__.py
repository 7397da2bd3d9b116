"""`python -m cli`: the same as the `canarycast` command."""

from cli.main import main

if __name__ == "__main__":
    raise SystemExit(main())
