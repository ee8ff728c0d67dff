"""The fault suite: a burst of changes through the gateway while processes are killed."""
