"""Configs of score_sde's configs/vp/ (see scoresde/configs/README.md)."""
