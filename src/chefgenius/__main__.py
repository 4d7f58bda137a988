"""``python -m chefgenius`` (what ``torchrun -m chefgenius train ...`` runs in each process)."""

from chefgenius.cli import main

main()
