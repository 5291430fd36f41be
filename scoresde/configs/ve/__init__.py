"""Configs of score_sde's configs/ve/ (see scoresde/configs/README.md)."""
