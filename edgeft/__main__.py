"""`python -m edgeft …` — also what `torchrun -m edgeft train …` runs."""

from edgeft.cli import main

main()
