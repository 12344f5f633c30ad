"""Kafka sensors (workflow requests, documents) and run-status sensors."""
