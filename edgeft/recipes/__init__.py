"""Example recipes shipped with edgeft (YAML; each begins with the command that runs it)."""
