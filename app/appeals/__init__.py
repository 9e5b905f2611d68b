"""Appeals (申诉): filed by a citizen backend for a person, decided by operators, two for a colour change."""
