"""Auth service: accounts, passwords, tokens and the users directory."""
