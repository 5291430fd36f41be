from scoresde.cli import run

run()
