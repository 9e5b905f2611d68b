"""Family members (代查 / 亲友码): relations between two people, and the look-ups made through them."""
