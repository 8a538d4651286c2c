"""Scoring label maps against references: metrics, the report, and folders of files from any tool."""
