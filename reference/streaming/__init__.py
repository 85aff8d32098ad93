"""Streaming task coordinator: Django models whose ``process()`` runs on asyncio
and whose events are fanned out to every client over Server-Sent Events."""
