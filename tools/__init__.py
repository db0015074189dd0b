"""Repository tools that are not stages: `python -m tools.readme_findings`."""
