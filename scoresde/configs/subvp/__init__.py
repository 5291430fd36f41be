"""Configs of score_sde's configs/subvp/ (see scoresde/configs/README.md)."""
