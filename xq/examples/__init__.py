"""Example apps shipped with xq (the demo uses thumbs)."""
