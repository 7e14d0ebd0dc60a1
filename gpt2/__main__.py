"""`python -m gpt2`: the same as the `gpt2` command."""

from gpt2.cli import main

raise SystemExit(main())
