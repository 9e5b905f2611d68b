"""Self-declarations (申领): people with no agency records declare their recent travel to get a code."""
