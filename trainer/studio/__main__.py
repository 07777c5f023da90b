"""`python -m trainer.studio` is `covergen-studio`."""

from trainer.studio.app import main

main()
