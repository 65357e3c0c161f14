"""Findings: the typed record, its builder, the stroke parts, priority rules and the JSON schema."""
