"""The agent daemon: module host, event bus, responder."""
