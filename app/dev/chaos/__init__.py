"""The fault suite (`make chaos`): a healthcode of its own, a bounded load, and one fault at a time."""
