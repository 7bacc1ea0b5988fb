"""One router per resource: scoring, tasks, health, metrics."""
