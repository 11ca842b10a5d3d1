"""Helpers for demos and tests (generated demo datasets); registers nothing."""
