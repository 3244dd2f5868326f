"""``python -m signwatch.stack up|down|status|env`` (for CI and shells without the `signwatch` script)."""

from .cli import main

main()
