"""Place codes (场所码): venues, their signed codes and posters, check-ins, and exposure queries."""
