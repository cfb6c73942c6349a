"""One small click command per module; edgeft/cli.py imports them on demand."""
