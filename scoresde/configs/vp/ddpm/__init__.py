"""Configs of score_sde's configs/vp/ddpm/ (see scoresde/configs/README.md)."""
