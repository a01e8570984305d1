"""Models of crmsync's rules, written apart from its code, that tests check it against."""
