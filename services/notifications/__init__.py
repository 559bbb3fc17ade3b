"""Notifications domain: templated email and SMS on user and order events, delivery tracking."""
