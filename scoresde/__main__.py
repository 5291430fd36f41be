from scoresde.cli import main

main()
