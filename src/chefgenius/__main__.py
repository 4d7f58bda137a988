"""``python -m chefgenius`` (what ``torchrun -m chefgenius train ...`` runs in each process)."""

from .cli import main

main()
