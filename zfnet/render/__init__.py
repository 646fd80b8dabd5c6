"""Rendering of analysis results: PNG figures (`figures`) and the static web atlas (`web`)."""
