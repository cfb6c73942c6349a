"""Data files shipped with runtime (general.txt: the default forgetting-probe text)."""
