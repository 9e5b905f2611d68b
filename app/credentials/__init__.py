"""Standard credentials for travel beyond the region: SMART Health Cards, signed by keys of their own."""
